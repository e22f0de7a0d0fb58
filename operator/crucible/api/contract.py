"""The contract between the operator and its workloads.

The operator renders a task (one of the *Task types) into its pod's annotation, mounted at
`TASK_PATH` (a ConfigMap there when it is large); the workload reads it and does the work.
Its final `WorkloadReport` is its container's termination message (`pack_report`), which the
kubelet keeps in the pod's status as long as the pod exists, whatever happens to the operator
or the API server meanwhile. A workload that reports while it runs (a fine-tune's progress)
or whose report may outgrow a termination message also pushes it to the operator's report
endpoint (`report_url`) where the operator serves one. Both sides import these types, so they
cannot drift.
"""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any, Literal

from pydantic import Field

from crucible.api.base import ApiModel
from crucible.api.evalrun import JudgeRating, ModelResult, PairedTest, Scoring
from crucible.api.experiment import HeldOutVerdict, RankedModel
from crucible.api.finetunejob import (
    DatasetFormat,
    Hyperparameters,
    InvalidRowPolicy,
    Lora,
    Strategy,
    TrainingMethod,
    TrainingProgress,
)
from crucible.api.ragindex import Chunking, Embedding, GitSource
from crucible.api.syntheticdataset import Filters, PairCounts, SyntheticFormat

TASK_DIR = "/etc/crucible"
TASK_FILE = "task.json"
TASK_PATH = f"{TASK_DIR}/{TASK_FILE}"
# Where a pod that pushes its reports finds its token (a projected ServiceAccount token whose
# audience names its run).
REPORT_TOKEN_DIR = "/var/run/secrets/crucible.dev/report"
REPORT_TOKEN_FILE = "token"
DATABASE_URL_ENV = "CRUCIBLE_DATABASE_URL"


class TaskBase(ApiModel):
    namespace: str = Field(description="Namespace of the run.")
    name: str = Field(description="Name of the resource the task belongs to.")
    report_url: str | None = Field(
        default=None,
        description="The operator's report endpoint for this run: the workload POSTs each report "
        "there with its projected token; without one, only its termination message reports.",
    )
    report_ca: str | None = Field(
        default=None, description="PEM of the CA that signed the endpoint's certificate."
    )
    mounts: dict[str, str] = Field(
        default_factory=dict,
        description="PersistentVolumeClaim name → where it is mounted, to resolve pvc:// URIs.",
    )
    output_uri: str = Field(description="Where the result goes, as a URI.")
    output_path: str = Field(description="The same place as a local path in the pod.")


class MergeTask(TaskBase):
    workload: Literal["merge"] = "merge"
    mergekit: dict[str, Any] = Field(
        description="mergekit configuration; model names are URIs the workload resolves."
    )


class DataFile(ApiModel):
    path: str | None = Field(default=None, description="Local file of the data.")
    uri: str | None = Field(default=None, description="Remote file to download.")


class DatasetInput(DataFile):
    format: DatasetFormat = Field(description="How the rows read.")
    system_prompt: str | None = Field(default=None, description="System message for chat rows.")
    on_invalid_row: InvalidRowPolicy = Field(description="Fail or Skip on bad rows.")


class DocumentsInput(ApiModel):
    git: GitSource | None = Field(default=None, description="Repository to check out.")
    documents_path: str | None = Field(default=None, description="Local folder of documents.")
    include: list[str]


class FineTuneTask(TaskBase):
    workload: Literal["finetune"] = "finetune"
    base_model_uri: str = Field(description="Model to adapt (full weights).")
    method: TrainingMethod
    dataset: DatasetInput | None = Field(default=None, description="Rows (sft, dpo).")
    documents: DocumentsInput | None = Field(default=None, description="Documents (cpt).")
    lora: Lora
    hyperparameters: Hyperparameters
    merge_adapter: bool
    adapter_path: str = Field(description="Where the adapter is saved.")
    merged_path: str | None = Field(default=None, description="Where merged weights go.")
    checkpoint_path: str = Field(description="Checkpoints, for resuming after a restart.")
    gpus: int = Field(ge=0, description="GPUs, one training process each.")
    strategy: Strategy = Field(default=Strategy.DDP, description="How processes share the model.")


class RagTask(TaskBase, DocumentsInput):
    workload: Literal["rag"] = "rag"
    chunking: Chunking
    embedding: Embedding
    table: str
    database_url_env: str = DATABASE_URL_ENV


class ChatEndpoint(ApiModel):
    name: str = Field(description="Name of the model in results.")
    base_url: str = Field(description="OpenAI-compatible base URL, ending in /v1.")
    model: str = Field(description="Model name to send in requests.")
    api_key_env: str | None = Field(default=None, description="Environment variable of the key.")


class EvalRag(ApiModel):
    table: str
    top_k: int
    compare_without_rag: bool
    embedding: Embedding
    database_url_env: str = DATABASE_URL_ENV


class EvalTask(TaskBase):
    workload: Literal["eval"] = "eval"
    endpoints: list[ChatEndpoint]
    dataset: DataFile | None = Field(
        default=None, description="Multiple-choice CSV: question, a, b, c, d, correct."
    )
    prompts: DataFile | None = Field(
        default=None, description="Open prompts for the judge: JSONL (prompt) or CSV (prompt)."
    )
    rag: EvalRag | None = None
    scoring: Scoring = Scoring.GENERATION
    repeats: int
    seed: int
    temperature: float
    max_tokens: int
    concurrency: int
    system_prompt: str | None = None
    constrain_answers: bool = False
    judge: ChatEndpoint | None = None
    judge_prompt: str | None = None
    bootstrap_samples: int = 1000
    lineage: dict[str, str] = Field(
        default_factory=dict, description="Each model in words, for the report."
    )


class SynthTask(TaskBase, DocumentsInput):
    workload: Literal["synthesize"] = "synthesize"
    chunking: Chunking
    tokenizer_uri: str | None = Field(
        default=None, description="Model whose tokenizer counts tokens; None counts words."
    )
    teacher: ChatEndpoint
    rejected: ChatEndpoint | None = None
    pairs_per_chunk: int
    passes: int
    temperature: float
    max_tokens: int
    prompt: str
    format: SyntheticFormat
    validation_fraction: float
    filters: Filters
    seed: int
    concurrency: int
    settings_hash: str = Field(
        description="sha256 of every spec setting that shapes the output; with the documents' "
        "hashes it decides whether an earlier result can be reused."
    )


class JudgedTask(ApiModel):
    name: str = Field(description="Name of the task (or of the held-out task).")
    judgements_path: str = Field(description="Its EvalRun's judgements.jsonl.")


class RankTask(TaskBase):
    workload: Literal["rank"] = "rank"
    tasks: list[JudgedTask] = Field(description="The comparisons to fit, a file per task.")
    baselines: list[str] = Field(description="Models that are hosted baselines.")
    winner: str | None = Field(
        default=None,
        description="The held-out stage: the search's winner, whose lead is checked; None for "
        "the search's ranking.",
    )
    bootstrap_samples: int
    seed: int


Task = MergeTask | FineTuneTask | RagTask | EvalTask | SynthTask | RankTask


class WorkloadReport(ApiModel):
    """What a workload tells the operator; small, since it travels in a termination message."""

    progress: TrainingProgress | None = None
    adapter_modules: list[str] | None = Field(
        default=None, max_length=256, description="Modules the adapter adapts, as peft resolved."
    )
    documents: int | None = Field(default=None, ge=0)
    chunks: int | None = Field(default=None, ge=0)
    content_hash: str | None = None
    results: list[ModelResult] | None = Field(default=None, max_length=64)
    paired_tests: list[PairedTest] | None = Field(default=None, max_length=512)
    judge_ratings: list[JudgeRating] | None = Field(default=None, max_length=16)
    judge_comparisons: int | None = Field(default=None, ge=0)
    results_uri: str | None = None
    pairs: PairCounts | None = None
    reused_from: str | None = None
    comparisons: int | None = Field(default=None, ge=0)
    ranking: list[RankedModel] | None = Field(default=None, max_length=32)
    held_out: HeldOutVerdict | None = None
    message: str | None = Field(default=None, max_length=4096)
    left_out: list[str] | None = Field(
        default=None,
        description="The fields (as the API spells them) a termination message left out to fit "
        "in 4 KiB; the pushed report, and the results in the model store, have them.",
    )


# The kubelet keeps at most this much of a container's termination message.
TERMINATION_MESSAGE_BYTES = 4096
PACKED_REPORT_PREFIX = "crucible-report/v1:"


# What a summary leaves out first when a report does not fit in a termination message: the
# details before the figures a status is made of.
LEFT_OUT_FIRST = (
    "paired_tests",
    "message",
    "adapter_modules",
    "judge_ratings",
    "ranking",
    "results",
    "held_out",
)


def _packed(report: WorkloadReport) -> str:
    packed = zlib.compress(json.dumps(report.to_api(), separators=(",", ":")).encode(), 9)
    return PACKED_REPORT_PREFIX + base64.b64encode(packed).decode()


def pack_summary(report: WorkloadReport) -> tuple[WorkloadReport, str]:
    """The report, or where it is too large for a termination message once packed, a summary
    that leaves out fields (in the order of LEFT_OUT_FIRST) until it fits and names them; and
    that one packed as the termination message."""
    message = _packed(report)
    present = (field for field in LEFT_OUT_FIRST if getattr(report, field) is not None)
    left_out: list[str] = []
    while len(message) > TERMINATION_MESSAGE_BYTES and (field := next(present, None)):
        left_out.append(WorkloadReport.model_fields[field].alias or field)
        report = report.model_copy(update={field: None, "left_out": [*left_out]})
        message = _packed(report)
    return report, message


def pack_report(report: WorkloadReport) -> str:
    """The report (its summary where it is too large) as a termination message: its JSON,
    compressed and in base64 after a prefix that tells it from an error's message."""
    return pack_summary(report)[1]


def unpack_report(message: str) -> WorkloadReport | None:
    """The report a termination message packs; None for any other message. ValueError (a
    pydantic ValidationError) when the packed report is malformed."""
    if not message.startswith(PACKED_REPORT_PREFIX):
        return None
    try:
        text = zlib.decompress(base64.b64decode(message.removeprefix(PACKED_REPORT_PREFIX)))
    except (ValueError, zlib.error) as error:
        raise ValueError(f"the packed report does not decode: {error}") from error
    return WorkloadReport.model_validate_json(text)
