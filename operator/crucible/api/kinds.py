"""The kinds of the API: names, spec and status types, and how kubectl shows them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from crucible.api.base import ApiModel, cel
from crucible.api.common import TERMINAL_PHASES, Phase, RunStatus
from crucible.api.evalrun import EvalRunSpec, EvalRunStatus
from crucible.api.experiment import ExperimentSpec, ExperimentStatus
from crucible.api.finetunejob import FineTuneJobSpec, FineTuneJobStatus
from crucible.api.formats import DNS_1035_LABEL
from crucible.api.modelmerge import ModelMergeSpec, ModelMergeStatus
from crucible.api.modelserving import ModelServingSpec, ModelServingStatus
from crucible.api.ragindex import RagIndexSpec, RagIndexStatus
from crucible.api.syntheticdataset import SyntheticDatasetSpec, SyntheticDatasetStatus

CATEGORY = "crucible"
# A child's name is also a label value (crucible.dev/name, job-name) and may be a Service's.
MAX_CHILD_NAME = 63


@dataclass(frozen=True)
class ChildNames:
    """The names Crucible gives a resource's children, `<name><suffix>`: what the resource's
    own name must allow. A suffix made of other names (a model's, a task's) is shortened with
    a hash where it would not fit; the fixed ones bound the name's length."""

    longest: str  # the longest fixed suffix, e.g. "-vllm-rejected"
    example: str  # a name that fits
    # The children that are Services, in words, and when the resource has them (CEL, on the
    # resource); none: its name may also have dots.
    services: str | None = None
    served: str = "true"

    @property
    def max_name(self) -> int:
        return MAX_CHILD_NAME - len(self.longest)


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    type: str
    json_path: str
    description: str
    priority: int = 0


SpecT_co = TypeVar("SpecT_co", bound=ApiModel, covariant=True)
StatusT_co = TypeVar("StatusT_co", bound=RunStatus, covariant=True)


@dataclass(frozen=True)
class Kind(Generic[SpecT_co, StatusT_co]):
    kind: str
    plural: str
    short_names: tuple[str, ...]
    description: str
    spec: type[SpecT_co]
    status: type[StatusT_co]
    children: ChildNames
    # Rules on the whole resource (its spec beside its metadata.name), e.g. no reference to
    # itself.
    rules: tuple[dict[str, Any], ...] = ()
    headline_columns: tuple[PrinterColumn, ...] = field(default_factory=tuple)
    # A run ends (Succeeded or Failed) and its spec is then fixed; a long-lived kind is never
    # over: its spec may change at any time and every change is reconciled.
    long_lived: bool = False

    @property
    def singular(self) -> str:
        return self.kind.lower()

    def name_rules(self) -> list[dict[str, Any]]:
        """The API server's rules for the resource's own name (on the CRD's root), so that a
        name its children cannot take is refused at creation."""
        names = self.children
        rules = [
            cel(
                f"self.metadata.name.size() <= {names.max_name}",
                f"metadata.name: at most {names.max_name} characters: Crucible names "
                f"the {self.kind}'s children after it, the longest <name>{names.longest}, and "
                f"such a name has at most {MAX_CHILD_NAME}; choose a shorter name, e.g. "
                f"{names.example}",
                reason="FieldValueInvalid",
            )
        ]
        if names.services is not None:
            fmt = DNS_1035_LABEL.rule("self.metadata.name")
            rules.append(
                cel(
                    fmt["rule"]
                    if names.served == "true"
                    else f"!({names.served}) || {fmt['rule']}",
                    f"metadata.name: {names.services} are named after it, and a Service's "
                    f"name must be {DNS_1035_LABEL.what}: use {DNS_1035_LABEL.words}, e.g. "
                    f"{names.example}",
                    reason="FieldValueInvalid",
                )
            )
        return [*rules, *self.rules]

    def read_status(self, body: Mapping[str, Any]) -> StatusT_co:
        """The typed status of a resource of this kind (empty while it has none)."""
        return self.status.model_validate(body.get("status") or {})

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


def not_itself(
    kind: str, field: str, source: str, what: str, *, each: bool = False
) -> dict[str, Any]:
    """A rule that the model source at `source` (CEL, on the resource; with `each`, every one
    of a list) names no modelRef to the resource itself: it would wait for its own output."""
    names_itself = (
        "has({s}.modelRef) && {s}.modelRef.kind == '" + kind + "' "
        "&& {s}.modelRef.name == self.metadata.name"
    )
    rule = (
        f"!{source}.exists(m, {names_itself.format(s='m')})"
        if each
        else f"!has({source}) || !({names_itself.format(s=source)})"
    )
    return cel(
        rule,
        f"{field}.modelRef: names this {kind} itself, which would wait for its own output for "
        f"ever; {what}",
        reason="FieldValueInvalid",
    )


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
    children=ChildNames(longest="-merge", example="nitro-merge"),
    rules=(
        not_itself(
            "ModelMerge",
            "spec.models[]",
            "self.spec.models",
            "name another model to merge",
            each=True,
        ),
        not_itself("ModelMerge", "spec.baseModel", "self.spec.baseModel", "name another model"),
    ),
    headline_columns=(OUTPUT_COLUMN,),
)
FINE_TUNE_JOB = Kind(
    kind="FineTuneJob",
    plural="finetunejobs",
    short_names=("ftj",),
    description="FineTuneJob trains a LoRA/QLoRA adapter (SFT or DPO) on a base model.",
    spec=FineTuneJobSpec,
    status=FineTuneJobStatus,
    children=ChildNames(
        longest="-train-63",  # the pod hostname of the last of 64 nodes
        example="nitro-sft",
        services="the headless Service and pod hostnames of its training on several nodes "
        "(<name>-train, <name>-train-<index>)",
        served="self.spec.resources.nodes > 1",
    ),
    rules=(
        not_itself("FineTuneJob", "spec.baseModel", "self.spec.baseModel", "name another model"),
    ),
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
    children=ChildNames(longest="-rag", example="nitro-docs"),
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
    children=ChildNames(
        longest="-vllm-m",  # the server of a one-letter model, in full
        example="nitro-eval-v2",
        services="its vLLM servers' Services (<name>-vllm-<model>)",
        served="self.spec.models.exists(m, !has(m.endpoint)) || "
        "(has(self.spec.judge) && !has(self.spec.judge.endpoint))",
    ),
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
    children=ChildNames(
        longest="-vllm-rejected",
        example="nitro-qa",
        services="the Services of the teacher and rejected model it serves "
        "(<name>-vllm-teacher, <name>-vllm-rejected)",
        served="!has(self.spec.teacher.endpoint) || "
        "(has(self.spec.rejectedModel) && !has(self.spec.rejectedModel.endpoint))",
    ),
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
    children=ChildNames(
        longest="-verdict",
        example="base-search",
        services="its EvalRuns (<name>-<task>) and their vLLM servers' Services",
    ),
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
    children=ChildNames(
        longest="-vllm",
        example="docs-assistant",
        services="its vLLM server's Deployment and Service (<name>-vllm)",
    ),
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

# A kind whose spec and status types do not matter where it is used.
AnyKind = Kind[ApiModel, RunStatus]

KINDS: tuple[AnyKind, ...] = (
    SYNTHETIC_DATASET,
    MODEL_MERGE,
    FINE_TUNE_JOB,
    RAG_INDEX,
    EVAL_RUN,
    EXPERIMENT,
    MODEL_SERVING,
)
KINDS_BY_NAME = {k.kind: k for k in KINDS}
