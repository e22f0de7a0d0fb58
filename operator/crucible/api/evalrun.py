"""EvalRun: benchmark models on a multiple-choice set, optionally with RAG and a judge."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field

from crucible.api.base import ApiModel, api_config, cel, defaulted
from crucible.api.common import (
    EXACTLY_ONE_TARGET,
    MAX_NAME,
    MAX_TEXT,
    DataSource,
    InferenceTarget,
    Resources,
    Serving,
    ServingStatus,
)
from crucible.api.formats import DNS_LABEL, OBJECT_NAME, DnsLabel, ObjectName


class Scoring(StrEnum):
    """How an answer to a multiple-choice question is obtained."""

    AUTO = "Auto"
    LOG_LIKELIHOOD = "LogLikelihood"
    GENERATION = "Generation"


class EvalModel(InferenceTarget):
    """A model under test."""

    model_config = api_config(EXACTLY_ONE_TARGET)

    name: DnsLabel = DNS_LABEL.field(
        description="Name of the model in results, metrics and Deployment names.",
        min_length=1,
        max_length=40,
    )


class Judge(InferenceTarget):
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

    index_name: ObjectName = OBJECT_NAME.about("the name of a RagIndex").field(
        description="Name of a RagIndex in this namespace; the run waits until it is indexed.",
        min_length=1,
        max_length=MAX_NAME,
    )
    top_k: int = Field(default=3, ge=1, le=100, description="Chunks retrieved per question.")
    compare_without_rag: bool = Field(
        default=True,
        description="Also evaluate every model without retrieved context, to measure RAG's effect.",
    )


QUESTIONS_OR_PROMPTS = cel(
    "has(self.dataset) || has(self.prompts)",
    "set dataset (multiple-choice questions), prompts (open prompts for the judge), or both",
    reason="FieldValueRequired",
)


class EvaluationData(ApiModel):
    """What models are evaluated on: multiple-choice questions, open prompts for the judge, or
    both."""

    model_config = api_config(QUESTIONS_OR_PROMPTS)

    dataset: DataSource | None = Field(
        default=None,
        description="Multiple-choice questions as CSV with columns question, a, b, c, d, correct.",
    )
    prompts: DataSource | None = Field(
        default=None,
        description="Open prompts for the judge: JSONL with a prompt field per line, or CSV "
        "with a prompt column. Every model answers each (generation at the run's temperature) "
        "and the judge compares the answers of every two models in both orders; without "
        "prompts the judge compares answers to the multiple-choice questions.",
    )


class EvalRunSpec(EvaluationData):
    """What to benchmark, on which questions, how often."""

    model_config = api_config(
        QUESTIONS_OR_PROMPTS,
        cel(
            "!has(self.prompts) || has(self.judge)",
            "spec.prompts are answered for the judge to compare: set spec.judge, or remove "
            "spec.prompts",
            field_path=".prompts",
            reason="FieldValueRequired",
        ),
        cel(
            "!(self.scoring == 'LogLikelihood' && self.constrainAnswers)",
            "spec.constrainAnswers constrains generated answers, and spec.scoring "
            "LogLikelihood generates none: remove constrainAnswers, or set scoring to Auto or "
            "Generation",
            field_path=".constrainAnswers",
            reason="FieldValueForbidden",
        ),
        cel(
            "!has(self.judge) || size(self.models) >= 2",
            "spec.judge compares the answers of two models at a time, and spec.models has "
            "one: add a model to compare it with (a hosted baseline endpoint, say), or remove "
            "spec.judge",
            field_path=".judge",
            reason="FieldValueInvalid",
        ),
    )

    models: list[EvalModel] = Field(
        min_length=1,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description="Models under test; names must be unique.",
    )
    rag: Rag | None = Field(default=None, description="Retrieval from a RagIndex.")
    scoring: Scoring = Field(
        default=Scoring.AUTO,
        description="LogLikelihood scores each option's text by the model's log-probability "
        "of it as the continuation of the question (and the retrieved context), as "
        "lm-evaluation-harness scores multiple choice: the prediction is the most likely "
        "option; it needs prompt log-probabilities (vLLM's completions API with echo), and "
        "being deterministic it is scored once whatever `repeats` says. Generation asks for "
        "the letter of the answer, `repeats` times. Auto (the default) scores each model by "
        "log-likelihood where its endpoint returns prompt log-probabilities (every model "
        "Crucible serves does) and by generation where it does not (e.g. a hosted chat "
        "model); each result says which scoring produced it.",
    )
    repeats: int = Field(
        default=5,
        ge=1,
        le=200,
        description="Rounds over the whole set for generation scoring; their accuracies are "
        "reported as mean and sample standard deviation over rounds.",
    )
    seed: int = Field(default=0, ge=0, description="Seed of the per-round question shuffles.")
    temperature: float = Field(
        default=0.7, ge=0, le=2, description="Sampling temperature of the models under test."
    )
    max_tokens: int = Field(default=64, ge=1, le=32768, description="Tokens per answer.")
    concurrency: int = Field(default=8, ge=1, le=1024, description="Requests in flight per model.")
    constrain_answers: bool = Field(
        default=False,
        description="Ask for exactly one of the letters A-D with vLLM's structured outputs "
        "(structured_outputs.choice); a server that refuses it is asked without.",
    )
    system_prompt: str | None = Field(
        default=None,
        description="System prompt of the models under test; the default asks for one letter.",
        max_length=MAX_TEXT,
    )
    judge: Judge | None = Field(
        default=None,
        description="Pairwise LLM-as-judge comparison of the models' answers; needs two "
        "models or more (with one there is no pair to compare, and it is refused).",
    )
    serving: Serving = defaulted(
        Serving(),
        description="vLLM settings for models given as uri or modelRef.",
    )
    resources: Resources = defaulted(
        Resources(gpus=0),
        description="Compute for the eval Job (no GPU unless asked for).",
    )


ScoringUsed = Literal["LogLikelihood", "Generation"]


class ModelResult(ApiModel):
    """Accuracy of one model, with or without RAG, over all rounds."""

    model: str = Field(description="Name of the model (spec.models[].name).")
    rag: bool = Field(description="Whether retrieved context was given.")
    scoring: ScoringUsed = Field(
        default="Generation", description="The scoring that produced this result."
    )
    n: int = Field(
        ge=0, description="Rounds scored (1 for log-likelihood scoring, which is deterministic)."
    )
    questions: int = Field(ge=0, description="Questions per round.")
    accuracy_mean: float = Field(description="Mean accuracy over rounds, in [0, 1].")
    accuracy_stddev: float | None = Field(
        default=None,
        description="Sample standard deviation of the accuracy between rounds (how much "
        "sampling changes the score); absent with a single round, where it is not defined.",
    )
    ci95_low: float = Field(
        description="Lower bound of the 95% confidence interval of the accuracy over "
        "questions: percentile bootstrap over questions (each question's score is its mean "
        "over rounds), 10,000 resamples seeded by spec.seed. This is the uncertainty that "
        "comes from having only these questions."
    )
    ci95_high: float = Field(description="Upper bound of that interval.")
    accuracy_norm: float | None = Field(
        default=None,
        description="Log-likelihood scoring only: accuracy when each option's log-likelihood "
        "is divided by its length in bytes (lm-evaluation-harness's acc_norm).",
    )
    rounds: list[float] = Field(
        max_length=200, description="Accuracy of each round, in round order."
    )
    unparsed: int = Field(default=0, ge=0, description="Answers with no single clear letter.")


class PairedTest(ApiModel):
    """Whether two results on the same questions differ for real: a paired test over
    questions."""

    a: str = Field(description="Model of the first result.")
    a_rag: bool = Field(description="Whether the first result had retrieved context.")
    b: str = Field(description="Model of the second result.")
    b_rag: bool = Field(description="Whether the second result had retrieved context.")
    difference: float = Field(description="Accuracy of the first minus the second.")
    ci95_low: float = Field(
        description="Lower bound of the paired bootstrap 95% interval of the difference."
    )
    ci95_high: float = Field(description="Upper bound of that interval.")
    test: Literal["McNemar", "PairedT"] = Field(
        description="McNemar's exact test where each question is scored once (right or "
        "wrong), else a paired t-test over the questions' mean scores."
    )
    p_value: float = Field(description="Two-sided p-value of 'no difference'.")


class JudgeRating(ApiModel):
    """Bradley-Terry rating of one model from the judge's pairwise verdicts."""

    model: str = Field(description="Name of the model.")
    rating: float = Field(description="Bradley-Terry strength on the Elo-like scale.")
    ci95_low: float = Field(description="Lower bound of the bootstrap 95% interval.")
    ci95_high: float = Field(description="Upper bound of the bootstrap 95% interval.")
    regularized: bool = Field(
        default=False,
        description="True when no maximum-likelihood estimate exists (some group of models "
        "never beat the others, e.g. a model never won or never lost): the ratings were then "
        "fitted with a weak prior. Otherwise they are the exact maximum-likelihood estimate.",
    )


class EvalRunStatus(ServingStatus):
    """Observed state of an EvalRun."""

    results: list[ModelResult] | None = Field(
        default=None, max_length=64, description="Accuracy per model and RAG setting."
    )
    paired_tests: list[PairedTest] | None = Field(
        default=None,
        max_length=512,
        description="Paired tests between results of the same RAG setting or the same model.",
    )
    judge_ratings: list[JudgeRating] | None = Field(
        default=None, max_length=16, description="Judge ratings, best first."
    )
    judge_comparisons: int | None = Field(
        default=None,
        ge=0,
        description="Readable verdicts of the judge the ratings are fitted to (judgements.jsonl "
        "beside the results holds each).",
    )
    best_model: str | None = Field(default=None, description="Model with the best mean accuracy.")
    best_accuracy: float | None = Field(default=None, description="Its mean accuracy.")
    results_uri: str | None = Field(
        default=None, description="Where the per-question results (JSONL) were written."
    )
