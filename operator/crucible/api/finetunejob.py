"""FineTuneJob: LoRA/QLoRA fine-tuning (SFT or DPO) of a model on a dataset."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from crucible.api.base import ApiModel, api_config, cel, defaulted
from crucible.api.common import (
    MAX_LIST,
    MAX_NAME,
    MAX_TEXT,
    DataSource,
    ModelSource,
    Resources,
    RunStatus,
)
from crucible.api.formats import OBJECT_NAME, ObjectName
from crucible.api.ragindex import DocumentSource

# A module's name in a model (q_proj, model.layers.0.mlp.down_proj): bounded, so that the API
# server can afford the rule that none is listed twice.
MAX_MODULE_NAME = 128


class TrainingMethod(StrEnum):
    SFT = "sft"
    DPO = "dpo"
    CPT = "cpt"  # continued pre-training on documents


class DatasetFormat(StrEnum):
    CHAT = "chat"
    PROMPT_COMPLETION = "prompt-completion"
    PREFERENCE = "preference"


class InvalidRowPolicy(StrEnum):
    FAIL = "Fail"
    SKIP = "Skip"


class DatasetRef(ApiModel):
    """A SyntheticDataset in the same namespace."""

    name: ObjectName = OBJECT_NAME.about("the name of a SyntheticDataset").field(
        description="Name of the SyntheticDataset; the job waits until it has succeeded and "
        "trains on its train.jsonl.",
        min_length=1,
        max_length=MAX_NAME,
    )


class Dataset(DataSource):
    """Training data: a JSONL or CSV file, or a SyntheticDataset, and how to read it."""

    model_config = api_config(
        cel(
            "[has(self.configMap), has(self.pvc), has(self.uri), has(self.datasetRef)]"
            ".filter(x, x).size() == 1",
            "set exactly one of configMap ({name, key}), pvc ({claimName, path}), "
            "uri (s3://, https://, hf://) or datasetRef ({name} of a SyntheticDataset)",
            reason="FieldValueInvalid",
        ),
        cel(
            "!has(self.datasetRef) || self.format != 'prompt-completion'",
            "a SyntheticDataset writes chat or preference rows, never prompt-completion: set "
            "format to chat (for sft) or preference (for dpo)",
            field_path=".format",
            reason="FieldValueInvalid",
        ),
    )

    dataset_ref: DatasetRef | None = Field(
        default=None,
        description="The output of a SyntheticDataset in this namespace (its format must "
        "match: chat for sft, preference for dpo).",
    )

    format: DatasetFormat = Field(
        default=DatasetFormat.CHAT,
        description="chat (messages, or question/answer columns), prompt-completion, or "
        "preference (prompt, chosen, rejected; needed by dpo).",
    )
    system_prompt: str | None = Field(
        default=None,
        description="System message prepended to every chat example.",
        max_length=MAX_TEXT,
    )
    on_invalid_row: InvalidRowPolicy = Field(
        default=InvalidRowPolicy.FAIL,
        description="Fail stops at the first bad row (naming file, row and column); Skip "
        "drops such rows and counts them.",
    )


class Lora(ApiModel):
    """Low-rank adapter settings (peft)."""

    r: int = Field(default=16, ge=1, le=4096, description="Rank of the adapter matrices.")
    alpha: int = Field(default=32, ge=1, le=8192, description="LoRA scaling numerator (alpha/r).")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[Annotated[str, Field(min_length=1, max_length=MAX_MODULE_NAME)]] = Field(
        default_factory=lambda: ["all-linear"],
        json_schema_extra={
            "default": ["all-linear"],
            "x-kubernetes-validations": [
                cel(
                    "self.all(m, self.exists_one(n, n == m))",
                    "spec.lora.targetModules: a module is listed twice: list each module once",
                    reason="FieldValueInvalid",
                )
            ],
        },
        min_length=1,
        max_length=MAX_LIST,
        description="Module names to adapt, each once, e.g. q_proj, v_proj; all-linear adapts "
        "every linear layer but the output head.",
    )
    load_in_4bit: bool = Field(
        default=False,
        alias="loadIn4bit",  # as transformers spells it (load_in_4bit)
        description="QLoRA: load the base model in 4-bit NF4 (needs a GPU and bitsandbytes).",
    )


class LrScheduler(StrEnum):
    LINEAR = "linear"
    COSINE = "cosine"
    CONSTANT = "constant"
    CONSTANT_WITH_WARMUP = "constant_with_warmup"


class Hyperparameters(ApiModel):
    """Optimisation settings."""

    learning_rate: float = Field(default=2e-4, gt=0, le=1, description="Peak learning rate.")
    epochs: float = Field(default=1, gt=0, le=1000, description="Passes over the dataset.")
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop after this many optimizer steps (overrides epochs)."
    )
    batch_size: int = Field(default=4, ge=1, le=4096, description="Examples per device per step.")
    gradient_accumulation_steps: int = Field(
        default=1, ge=1, le=4096, description="Micro-batches accumulated per optimizer step."
    )
    global_batch_size: int | None = Field(
        default=None,
        ge=1,
        le=1048576,
        description="Examples per optimizer step across every training process. When set, "
        "gradientAccumulationSteps is derived from it, batchSize and the processes (nodes times "
        "GPUs per node, one on a pod without GPUs), so that a step is the same whatever the "
        "shape.",
    )
    max_length: int = Field(
        default=1024, ge=16, le=1048576, description="Longest tokenized example, in tokens."
    )
    warmup_ratio: float = Field(
        default=0.0, ge=0, lt=1, description="Fraction of steps spent warming up the rate."
    )
    lr_scheduler: LrScheduler = Field(
        default=LrScheduler.LINEAR, description="linear, cosine, constant or constant_with_warmup."
    )
    beta: float = Field(
        default=0.1,
        gt=0,
        description="DPO temperature: how far the policy may move from the reference.",
    )
    seed: int = Field(default=42, ge=0, description="Random seed of data order and init.")
    save_steps: int = Field(
        default=100,
        ge=1,
        description="Checkpoint every this many steps so a restarted pod resumes.",
    )


# Training processes per pod, in CEL on the spec: one per GPU, one on a pod without GPUs.
GPUS_PER_POD = (
    "(has(self.resources.gpusPerNode) ? self.resources.gpusPerNode : self.resources.gpus)"
)
PROCESSES_PER_POD = f"({GPUS_PER_POD} > 0 ? {GPUS_PER_POD} : 1)"


class TrainingResources(Resources):
    """Compute for the training: one pod per node, one training process per GPU (one in all
    on a pod without GPUs)."""

    model_config = api_config(
        cel(
            "!has(self.gpusPerNode) || self.nodes > 1",
            "spec.resources.gpusPerNode is for a training on several nodes: on one node, "
            "spec.resources.gpus is the pod's GPUs; remove gpusPerNode or set nodes above 1",
            field_path=".gpusPerNode",
            reason="FieldValueForbidden",
        ),
    )

    nodes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Pods, one per node, that the training spans. Above 1 it runs "
        "torch.distributed across them: an Indexed Job and a headless Service, torchrun "
        "meeting at index 0 (c10d rendezvous). The model store must then be shared by every "
        "node (ReadWriteMany).",
    )
    gpus_per_node: int | None = Field(
        default=None,
        ge=0,
        le=64,
        description="GPUs of each node's pod when nodes is above 1 (default: gpus).",
    )

    @property
    def gpus_per_pod(self) -> int:
        return self.gpus if self.gpus_per_node is None else self.gpus_per_node

    @property
    def processes_per_pod(self) -> int:
        return max(self.gpus_per_pod, 1)


class Strategy(StrEnum):
    """How the training processes share the model: each holds all of it (DDP), or its
    parameters, gradients and optimizer state are sharded across them."""

    DDP = "DDP"
    FSDP = "FSDP"
    DEEPSPEED_ZERO2 = "DeepSpeedZeRO2"
    DEEPSPEED_ZERO3 = "DeepSpeedZeRO3"


class TrainingRuntime(StrEnum):
    """What runs the training's pods: a batch/v1 Job (any cluster), or the JobSet or
    Kubeflow Trainer controllers, where a cluster has them."""

    JOB = "Job"
    JOBSET = "JobSet"
    KUBEFLOW_TRAINER = "KubeflowTrainer"


class Distributed(ApiModel):
    """How a training on several processes holds together."""

    strategy: Strategy = Field(
        default=Strategy.DDP,
        description="DDP (every process holds the whole model), FSDP (PyTorch's fully sharded "
        "data parallel), DeepSpeedZeRO2 (optimizer state and gradients sharded) or "
        "DeepSpeedZeRO3 (parameters too), applied through accelerate's plugins; DeepSpeed needs "
        "GPUs and an image with deepspeed. Each works with LoRA and QLoRA.",
    )
    max_restarts: int = Field(
        default=3,
        ge=0,
        le=100,
        description="How often the group of ranks re-forms (torch elastic) after a rank's pod "
        "fails or is lost and is re-created, before the run fails with that rank's reason.",
    )


class FineTuneJobSpec(ApiModel):
    """What to train, on which data, and how."""

    model_config = api_config(
        cel(
            "self.method != 'cpt' || (has(self.documents) && !has(self.dataset))",
            "spec.method cpt trains on documents: set spec.documents (a source as a "
            "RagIndex's: configMap, git or pvc) and remove spec.dataset",
            field_path=".documents",
            reason="FieldValueRequired",
        ),
        cel(
            "self.method == 'cpt' || (has(self.dataset) && !has(self.documents))",
            "spec.documents are read by method cpt (continued pre-training) alone: set "
            "method: cpt, or give spec.dataset rows for sft or dpo and remove spec.documents",
            field_path=".dataset",
            reason="FieldValueRequired",
        ),
        cel(
            "self.method != 'dpo' || !has(self.dataset) || self.dataset.format == 'preference'",
            "spec.dataset.format must be preference for method dpo: give rows of prompt, "
            "chosen and rejected, or use method sft",
            field_path=".dataset.format",
            reason="FieldValueInvalid",
        ),
        cel(
            "!has(self.hyperparameters.globalBatchSize) || "
            "self.hyperparameters.gradientAccumulationSteps == 1",
            "spec.hyperparameters.gradientAccumulationSteps is derived from globalBatchSize: "
            "remove one of the two",
            field_path=".hyperparameters.gradientAccumulationSteps",
            reason="FieldValueForbidden",
        ),
        cel(
            "!has(self.hyperparameters.globalBatchSize) || "
            "self.hyperparameters.globalBatchSize % (self.hyperparameters.batchSize * "
            f"self.resources.nodes * {PROCESSES_PER_POD}) == 0",
            "spec.hyperparameters.globalBatchSize must be a multiple of batchSize times nodes "
            "times processes per node (GPUs per node, or one without GPUs): set it to such a "
            "multiple, or change batchSize or the shape",
            field_path=".hyperparameters.globalBatchSize",
            reason="FieldValueInvalid",
        ),
        cel(
            "!self.lora.loadIn4bit || self.resources.gpus > 0",
            "spec.lora.loadIn4bit (QLoRA) needs a GPU: set spec.resources.gpus to 1 or more, "
            "or remove loadIn4bit",
            field_path=".lora.loadIn4bit",
            reason="FieldValueInvalid",
        ),
        cel(
            "self.method != 'sft' || !has(self.dataset) || self.dataset.format != 'preference'",
            "spec.dataset.format preference is for method dpo: use chat or prompt-completion "
            "data with sft, or set method: dpo",
            field_path=".dataset.format",
            reason="FieldValueInvalid",
        ),
    )

    base_model: ModelSource = Field(
        description="The model to adapt: a uri, or a modelRef to a ModelMerge or FineTuneJob."
    )
    method: TrainingMethod = Field(
        default=TrainingMethod.SFT,
        description="sft (supervised fine-tuning on spec.dataset), dpo (direct preference "
        "optimisation on spec.dataset) or cpt (continued pre-training on spec.documents: the "
        "model reads them as plain text, domain-adaptive pre-training).",
    )
    dataset: Dataset | None = Field(
        default=None, description="Training rows and their format (sft and dpo)."
    )
    documents: DocumentSource | None = Field(
        default=None,
        description="Documents to continue pre-training on (cpt): split at markdown headers, "
        "then into windows of spec.hyperparameters.maxLength tokens, each trained on whole.",
    )
    lora: Lora = defaulted(
        Lora(),
        description="LoRA/QLoRA adapter settings.",
    )
    hyperparameters: Hyperparameters = defaulted(
        Hyperparameters(),
        description="Optimisation settings.",
    )
    merge_adapter: bool = Field(
        default=False,
        description="Also write the base model with the adapter merged in (full weights).",
    )
    resources: TrainingResources = defaulted(
        TrainingResources(),
        description="Compute for the training: gpus > 1 runs one process per GPU; nodes > 1 "
        "spans several nodes.",
    )
    distributed: Distributed = defaulted(
        Distributed(),
        description="How a training on several processes holds together: the strategy, and "
        "on several nodes (spec.resources.nodes) the restarts.",
    )
    runtime: TrainingRuntime = Field(
        default=TrainingRuntime.JOB,
        description="What runs the training: Job (a batch/v1 Job, Indexed under a headless "
        "Service on several nodes; needs nothing installed), JobSet (a jobset.x-k8s.io/v1alpha2 "
        "JobSet of one Indexed Job: the whole group restarts after a failure, up to "
        "spec.distributed.maxRestarts) or KubeflowTrainer (a trainer.kubeflow.org/v1alpha1 "
        "TrainJob on the operator's ClusterTrainingRuntime, CRUCIBLE_TRAINER_RUNTIME). The last "
        "two wait with reason RuntimeNotInstalled where their CRDs are absent.",
    )


class TrainingProgress(ApiModel):
    """Latest training progress reported by the workload."""

    step: int | None = Field(default=None, ge=0, description="Optimizer steps done.")
    total_steps: int | None = Field(default=None, ge=0, description="Optimizer steps planned.")
    epoch: float | None = Field(default=None, ge=0, description="Epochs done (fractional).")
    loss: float | None = Field(default=None, description="Latest training loss.")
    learning_rate: float | None = Field(default=None, description="Current learning rate.")
    resumed_from_step: int | None = Field(
        default=None,
        ge=0,
        description="The step of the last complete checkpoint this run resumed from, after its "
        "pod (or a rank's) was lost or preempted.",
    )


class FineTuneJobStatus(RunStatus):
    """Observed state of a FineTuneJob."""

    progress: TrainingProgress | None = Field(default=None, description="Training progress.")
    adapter_uri: str | None = Field(default=None, description="Where the adapter was written.")
    adapter_target_modules: list[str] | None = Field(
        default=None,
        max_length=256,
        description="The modules the adapter adapts, as peft resolved spec.lora.targetModules "
        "(all-linear: the model's linear layers but its output head); a vLLM server of the "
        "adapter applies LoRA to these alone.",
    )
    base_model_uri: str | None = Field(
        default=None,
        description="The resolved base model the adapter applies to (needed to serve it).",
    )
