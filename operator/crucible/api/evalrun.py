"""EvalRun: benchmark models on a multiple-choice set, optionally with RAG and a judge."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from crucible.api.base import ApiModel, api_config, cel, defaulted
from crucible.api.common import (
    DNS_LABEL,
    MAX_LIST,
    MAX_NAME,
    MAX_TEXT,
    MAX_URI,
    MODEL_URI,
    MODEL_URI_HELP,
    DataSource,
    ModelRef,
    Resources,
    RunStatus,
    SecretKeyRef,
)


class Endpoint(ApiModel):
    """An OpenAI-compatible server that is already running (e.g. a hosted baseline)."""

    url: str = Field(
        description="Base URL of the OpenAI-compatible API, e.g. https://api.openai.com/v1.",
        min_length=1,
        max_length=MAX_URI,
        pattern=r"^https?://\S+$",
    )
    model: str = Field(
        description="Model name the server expects, e.g. gpt-4o-mini.",
        min_length=1,
        max_length=MAX_NAME,
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding the API key; left out, no key is sent."
    )


EXACTLY_ONE_TARGET = cel(
    "[has(self.uri), has(self.modelRef), has(self.endpoint)].filter(x, x).size() == 1",
    "set exactly one of uri (a model to serve with vLLM: "
    f"{MODEL_URI_HELP}), modelRef (a ModelMerge or FineTuneJob to serve) or endpoint "
    "(an OpenAI-compatible server that is already running)",
    reason="FieldValueInvalid",
)


class EvalTarget(ApiModel):
    """A model to query: served by the operator from a model source, or an endpoint."""

    model_config = api_config(EXACTLY_ONE_TARGET)

    uri: str | None = Field(
        default=None,
        description=f"A stored model the operator serves with vLLM: {MODEL_URI_HELP}.",
        max_length=MAX_URI,
        pattern=MODEL_URI,
    )
    model_ref: ModelRef | None = Field(
        default=None,
        description="A ModelMerge or FineTuneJob whose output the operator serves with vLLM "
        "(a LoRA adapter is served on its base model).",
    )
    endpoint: Endpoint | None = Field(
        default=None, description="An OpenAI-compatible server that is already running."
    )


class EvalModel(EvalTarget):
    """A model under test."""

    model_config = api_config(EXACTLY_ONE_TARGET)

    name: str = Field(
        description="Name of the model in results, metrics and Deployment names.",
        min_length=1,
        max_length=40,
        pattern=DNS_LABEL,
    )


class Judge(EvalTarget):
    """LLM-as-judge pairwise comparison, ranked with a Bradley-Terry model."""

    model_config = api_config(EXACTLY_ONE_TARGET)

    bootstrap_samples: int = Field(
        default=1000,
        ge=0,
        le=100000,
        description="Bootstrap resamples for the ratings' confidence intervals.",
    )
    prompt: str | None = Field(
        default=None,
        description="Judge instructions; the default asks which answer is better, or a tie.",
        max_length=MAX_TEXT,
    )


class Rag(ApiModel):
    """Retrieval-augmented generation from a RagIndex."""

    index_name: str = Field(
        description="Name of a RagIndex in this namespace; the run waits until it is indexed.",
        min_length=1,
        max_length=MAX_NAME,
    )
    top_k: int = Field(default=3, ge=1, le=100, description="Chunks retrieved per question.")
    compare_without_rag: bool = Field(
        default=True,
        description="Also evaluate every model without retrieved context, to measure RAG's effect.",
    )


class ServingDtype(StrEnum):
    AUTO = "auto"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    FLOAT32 = "float32"


class Serving(ApiModel):
    """How the operator serves model sources with vLLM during the run."""

    max_model_len: int = Field(
        default=4096, ge=128, le=1048576, description="vLLM --max-model-len."
    )
    dtype: ServingDtype = Field(default=ServingDtype.AUTO, description="vLLM --dtype.")
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="vLLM --gpu-memory-utilization."
    )
    max_lora_rank: int = Field(
        default=64, ge=1, le=4096, description="vLLM --max-lora-rank when serving adapters."
    )
    extra_args: list[str] = Field(
        default_factory=list,
        max_length=MAX_LIST,
        description="Further vLLM arguments, e.g. --enforce-eager.",
    )
    startup_timeout_seconds: int = Field(
        default=1800,
        ge=60,
        description="How long a server may take to become ready before the run fails.",
    )
    resources: Resources = defaulted(
        Resources(),
        description="Compute of each vLLM server (default one GPU).",
    )


class EvalRunSpec(ApiModel):
    """What to benchmark, on which questions, how often."""

    models: list[EvalModel] = Field(
        min_length=1,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description="Models under test; names must be unique.",
    )
    dataset: DataSource = Field(
        description="Multiple-choice questions as CSV with columns question, a, b, c, d, correct."
    )
    rag: Rag | None = Field(default=None, description="Retrieval from a RagIndex.")
    repeats: int = Field(
        default=5,
        ge=1,
        le=200,
        description="Rounds over the whole set; accuracy is reported "
        "as mean and sample standard deviation over rounds.",
    )
    seed: int = Field(default=0, ge=0, description="Seed of the per-round question shuffles.")
    temperature: float = Field(
        default=0.7, ge=0, le=2, description="Sampling temperature of the models under test."
    )
    max_tokens: int = Field(default=64, ge=1, le=32768, description="Tokens per answer.")
    concurrency: int = Field(default=8, ge=1, le=1024, description="Requests in flight per model.")
    system_prompt: str | None = Field(
        default=None,
        description="System prompt of the models under test; the default asks for one letter.",
        max_length=MAX_TEXT,
    )
    judge: Judge | None = Field(
        default=None, description="Pairwise LLM-as-judge comparison of the models' answers."
    )
    serving: Serving = defaulted(
        Serving(),
        description="vLLM settings for models given as uri or modelRef.",
    )
    resources: Resources = defaulted(
        Resources(gpus=0),
        description="Compute for the eval Job (no GPU unless asked for).",
    )


class ModelResult(ApiModel):
    """Accuracy of one model, with or without RAG, over all rounds."""

    model: str = Field(description="Name of the model (spec.models[].name).")
    rag: bool = Field(description="Whether retrieved context was given.")
    n: int = Field(ge=0, description="Rounds completed.")
    questions: int = Field(ge=0, description="Questions per round.")
    accuracy_mean: float = Field(description="Mean accuracy over rounds, in [0, 1].")
    accuracy_stddev: float = Field(description="Sample standard deviation over rounds.")
    ci95_low: float = Field(description="Lower bound of the 95% confidence interval of the mean.")
    ci95_high: float = Field(description="Upper bound of the 95% confidence interval of the mean.")
    rounds: list[float] = Field(
        max_length=200, description="Accuracy of each round, in round order."
    )
    unparsed: int = Field(default=0, ge=0, description="Answers with no single clear letter.")


class JudgeRating(ApiModel):
    """Bradley-Terry rating of one model from the judge's pairwise verdicts."""

    model: str = Field(description="Name of the model.")
    rating: float = Field(description="Bradley-Terry strength on the Elo-like scale.")
    ci95_low: float = Field(description="Lower bound of the bootstrap 95% interval.")
    ci95_high: float = Field(description="Upper bound of the bootstrap 95% interval.")


class EvalRunStatus(RunStatus):
    """Observed state of an EvalRun."""

    results: list[ModelResult] | None = Field(
        default=None, max_length=64, description="Accuracy per model and RAG setting."
    )
    judge_ratings: list[JudgeRating] | None = Field(
        default=None, max_length=16, description="Judge ratings, best first."
    )
    best_model: str | None = Field(default=None, description="Model with the best mean accuracy.")
    best_accuracy: float | None = Field(default=None, description="Its mean accuracy.")
    servers: list[str] | None = Field(
        default=None, description="vLLM Deployments the run created (removed when done)."
    )
    results_uri: str | None = Field(
        default=None, description="Where the per-question results (JSONL) were written."
    )
