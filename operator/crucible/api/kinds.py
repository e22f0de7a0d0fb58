"""The kinds of the API: names, spec and status types, and how kubectl shows them."""

from __future__ import annotations

from dataclasses import dataclass, field

from crucible.api.base import ApiModel
from crucible.api.common import TERMINAL_PHASES, Phase
from crucible.api.evalrun import EvalRunSpec, EvalRunStatus
from crucible.api.experiment import ExperimentSpec, ExperimentStatus
from crucible.api.finetunejob import FineTuneJobSpec, FineTuneJobStatus
from crucible.api.modelmerge import ModelMergeSpec, ModelMergeStatus
from crucible.api.modelserving import ModelServingSpec, ModelServingStatus
from crucible.api.ragindex import RagIndexSpec, RagIndexStatus
from crucible.api.syntheticdataset import SyntheticDatasetSpec, SyntheticDatasetStatus

CATEGORY = "crucible"


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    type: str
    json_path: str
    description: str
    priority: int = 0


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    description: str
    spec: type[ApiModel]
    status: type[ApiModel]
    headline_columns: tuple[PrinterColumn, ...] = field(default_factory=tuple)
    # A run ends (Succeeded or Failed) and its spec is then fixed; a long-lived kind is never
    # over: its spec may change at any time and every change is reconciled.
    long_lived: bool = False

    @property
    def singular(self) -> str:
        return self.kind.lower()

    def over(self, phase: str | None) -> bool:
        """Whether a resource in `phase` is done with: a run that succeeded or failed, which
        nothing reconciles any more. A long-lived resource never is."""
        return not self.long_lived and phase in TERMINAL_PHASES

    def settled(self, phase: str | None) -> bool:
        """Whether a resource in `phase` has got where it is going: a run is over, a
        long-lived resource serves (or cannot)."""
        return self.over(phase) or (self.long_lived and phase in (Phase.RUNNING, Phase.FAILED))

    def succeeded(self, phase: str | None) -> bool:
        return phase == (Phase.RUNNING if self.long_lived else Phase.SUCCEEDED)


PHASE_COLUMN = PrinterColumn("Phase", "string", ".status.phase", "Phase of the run.")
AGE_COLUMN = PrinterColumn(
    "Age", "date", ".metadata.creationTimestamp", "Time since the resource was created."
)
OUTPUT_COLUMN = PrinterColumn("Output", "string", ".status.outputUri", "Where the result is.")

MODEL_MERGE = Kind(
    kind="ModelMerge",
    plural="modelmerges",
    short_names=("mm",),
    description="ModelMerge combines models with mergekit (slerp, ties, dare_ties, …) into a "
    "new model in the model store.",
    spec=ModelMergeSpec,
    status=ModelMergeStatus,
    headline_columns=(OUTPUT_COLUMN,),
)
FINE_TUNE_JOB = Kind(
    kind="FineTuneJob",
    plural="finetunejobs",
    short_names=("ftj",),
    description="FineTuneJob trains a LoRA/QLoRA adapter (SFT or DPO) on a base model.",
    spec=FineTuneJobSpec,
    status=FineTuneJobStatus,
    headline_columns=(
        PrinterColumn("Step", "integer", ".status.progress.step", "Training steps done."),
        PrinterColumn("Loss", "number", ".status.progress.loss", "Latest training loss.", 1),
        OUTPUT_COLUMN,
    ),
)
RAG_INDEX = Kind(
    kind="RagIndex",
    plural="ragindexes",
    short_names=("ri",),
    description="RagIndex chunks documents, embeds them and upserts them into pgvector.",
    spec=RagIndexSpec,
    status=RagIndexStatus,
    headline_columns=(
        PrinterColumn("Chunks", "integer", ".status.chunks", "Chunks in the index."),
        PrinterColumn("Table", "string", ".status.table", "pgvector table.", 1),
    ),
)
EVAL_RUN = Kind(
    kind="EvalRun",
    plural="evalruns",
    short_names=("er",),
    description="EvalRun benchmarks models on multiple-choice questions over repeated rounds, "
    "optionally with RAG and an LLM judge.",
    spec=EvalRunSpec,
    status=EvalRunStatus,
    headline_columns=(
        PrinterColumn("Best", "number", ".status.bestAccuracy", "Best mean accuracy."),
        PrinterColumn("Model", "string", ".status.bestModel", "Model with the best accuracy."),
    ),
)

SYNTHETIC_DATASET = Kind(
    kind="SyntheticDataset",
    plural="syntheticdatasets",
    short_names=("sds",),
    description="SyntheticDataset has a teacher model write question/answer pairs from "
    "documents, for fine-tuning.",
    spec=SyntheticDatasetSpec,
    status=SyntheticDatasetStatus,
    headline_columns=(
        PrinterColumn("Pairs", "integer", ".status.pairs.kept", "Pairs kept."),
        PrinterColumn("Chunks", "integer", ".status.chunks", "Chunks sent to the teacher.", 1),
        OUTPUT_COLUMN,
    ),
)

EXPERIMENT = Kind(
    kind="Experiment",
    plural="experiments",
    short_names=("exp",),
    description="Experiment searches for the best base model: every candidate fine-tuned on "
    "every task, all ranked by an LLM judge (Bradley-Terry), the winner checked on a held-out "
    "task.",
    spec=ExperimentSpec,
    status=ExperimentStatus,
    headline_columns=(
        PrinterColumn("Stage", "string", ".status.progress.stage", "Stage of the search."),
        PrinterColumn("Leader", "string", ".status.ranking[0].model", "Best-ranked model."),
        PrinterColumn(
            "Holds", "boolean", ".status.heldOut.holds", "Whether the lead holds held out."
        ),
        PrinterColumn("Comparisons", "integer", ".status.comparisons", "Judge verdicts ranked.", 1),
    ),
)

MODEL_SERVING = Kind(
    kind="ModelServing",
    plural="modelservings",
    short_names=("msv",),
    description="ModelServing serves a model (with LoRA adapters) for good, promoting each "
    "version of its spec only when an EvalRun's results pass its gate.",
    spec=ModelServingSpec,
    status=ModelServingStatus,
    headline_columns=(
        PrinterColumn(
            "Serving", "string", ".status.promoted.servedModelName", "Model being served."
        ),
        PrinterColumn("Ready", "integer", ".status.readyReplicas", "Replicas ready."),
        PrinterColumn("Gate", "boolean", ".status.gate.holds", "Whether the spec passed its gate."),
        PrinterColumn("URL", "string", ".status.url", "Where it answers.", 1),
    ),
    long_lived=True,
)

KINDS: tuple[Kind, ...] = (
    SYNTHETIC_DATASET,
    MODEL_MERGE,
    FINE_TUNE_JOB,
    RAG_INDEX,
    EVAL_RUN,
    EXPERIMENT,
    MODEL_SERVING,
)
KINDS_BY_NAME = {k.kind: k for k in KINDS}
