"""Types shared by several kinds: model sources, data sources, resources, status."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import Field

from crucible.api.base import ApiModel, Quantity, api_config, cel, defaulted
from crucible.api.formats import (
    DATA_URI,
    ENDPOINT_URL,
    MODEL_URI,
    OBJECT_KEY,
    OBJECT_NAME,
    RESOURCE_NAME,
    DataUri,
    EndpointUrl,
    ModelUri,
    ObjectKey,
    ObjectName,
    ResourceName,
)

MODEL_URI_HELP = "hf://org/name@revision, s3://bucket/prefix or pvc://claim/path"

# Upper bounds keep the cost of CEL rules (e.g. the immutability rule) within the API server's
# budget; they are far above anything a real spec needs.
MAX_NAME = 253
MAX_URI = 2048
MAX_TEXT = 65536
MAX_LIST = 64


def stays_inside(what: str) -> dict[str, Any]:
    """No '..' segment: a path or URI stays inside what it names (the workloads resolve it
    under its mount, and refuse one that leaves it too)."""
    return cel("!self.split('/').exists(p, p == '..')", f"{what}: remove '..' segments")


STAYS_INSIDE = stays_inside("a URI must stay inside its volume or bucket")


class ModelRefKind(StrEnum):
    MODEL_MERGE = "ModelMerge"
    FINE_TUNE_JOB = "FineTuneJob"


class ModelRef(ApiModel):
    """The output of another Crucible resource in the same namespace."""

    kind: ModelRefKind = Field(
        description="Kind of the referenced resource: ModelMerge or FineTuneJob."
    )
    name: ObjectName = OBJECT_NAME.field(
        description="Name of the referenced resource, in this namespace.",
        min_length=1,
        max_length=MAX_NAME,
    )


EXACTLY_ONE_MODEL = cel(
    "has(self.uri) != has(self.modelRef)",
    "set exactly one of uri or modelRef: uri for a stored model "
    f"({MODEL_URI_HELP}), modelRef for the output of a ModelMerge or FineTuneJob",
    reason="FieldValueInvalid",
)


class ModelSource(ApiModel):
    """Where a model comes from: exactly one of uri or modelRef."""

    model_config = api_config(EXACTLY_ONE_MODEL)

    uri: ModelUri | None = MODEL_URI.field(
        default=None,
        description=f"Location of the model weights: {MODEL_URI_HELP}.",
        max_length=MAX_URI,
        rules=(STAYS_INSIDE,),
    )
    model_ref: ModelRef | None = Field(
        default=None,
        description="The output of a ModelMerge or FineTuneJob in this namespace; the "
        "referrer waits until it has succeeded.",
    )


class SecretKeyRef(ApiModel):
    """A key of a Secret in the resource's namespace."""

    name: ObjectName = OBJECT_NAME.about("the name of a Secret").field(
        description="Name of the Secret.", min_length=1, max_length=MAX_NAME
    )
    key: ObjectKey = OBJECT_KEY.about("a Secret key").field(
        description="Key within the Secret.", min_length=1, max_length=MAX_NAME
    )


class ConfigMapKeyRef(ApiModel):
    """A key of a ConfigMap in the resource's namespace."""

    name: ObjectName = OBJECT_NAME.about("the name of a ConfigMap").field(
        description="Name of the ConfigMap.", min_length=1, max_length=MAX_NAME
    )
    key: ObjectKey = OBJECT_KEY.about("a ConfigMap key").field(
        description="Key within the ConfigMap.", min_length=1, max_length=MAX_NAME
    )


class PvcPath(ApiModel):
    """A path on a PersistentVolumeClaim in the resource's namespace."""

    claim_name: ObjectName = OBJECT_NAME.about("the name of a PersistentVolumeClaim").field(
        description="Name of the PersistentVolumeClaim.", min_length=1, max_length=MAX_NAME
    )
    path: str = Field(
        default="",
        description="Path inside the volume; empty means its root.",
        max_length=MAX_URI,
        json_schema_extra={
            "x-kubernetes-validations": [stays_inside("pvc.path must stay inside the volume")]
        },
    )


EXACTLY_ONE_DATA_SOURCE = cel(
    "[has(self.configMap), has(self.pvc), has(self.uri)].filter(x, x).size() == 1",
    "set exactly one of configMap ({name, key}), pvc ({claimName, path}) or "
    "uri (s3://, https://, hf://)",
    reason="FieldValueInvalid",
)


class DataSource(ApiModel):
    """A file of data: exactly one of configMap, pvc or uri."""

    model_config = api_config(EXACTLY_ONE_DATA_SOURCE)

    config_map: ConfigMapKeyRef | None = Field(
        default=None, description="A key of a ConfigMap holding the file."
    )
    pvc: PvcPath | None = Field(default=None, description="A file on a PersistentVolumeClaim.")
    uri: DataUri | None = DATA_URI.field(
        default=None,
        description="A URI the workload downloads: s3://bucket/key, https://… or "
        "hf://datasets/org/name.",
        max_length=MAX_URI,
        rules=(STAYS_INSIDE,),
    )


class Toleration(ApiModel):
    """A pod toleration, as in core/v1."""

    key: str | None = Field(
        default=None, description="Taint key the toleration applies to.", max_length=MAX_NAME
    )
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal (the default)."
    )
    value: str | None = Field(
        default=None, description="Taint value to match with Equal.", max_length=MAX_NAME
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, description="How long a NoExecute taint is tolerated.", ge=0
    )


class Resources(ApiModel):
    """Compute for the workload's pods."""

    gpus: int = Field(
        default=1,
        ge=0,
        le=64,
        description="GPUs per pod; with more than one, training runs one process per GPU.",
    )
    gpu_resource_name: ResourceName | None = RESOURCE_NAME.field(
        default=None,
        description="Extended resource name of the GPU, e.g. nvidia.com/gpu or amd.com/gpu; "
        "defaults to the operator's CRUCIBLE_GPU_RESOURCE.",
        max_length=MAX_NAME,
    )
    cpu: Quantity | None = Field(default=None, description="CPU request and limit, e.g. 8.")
    memory: Quantity | None = Field(
        default=None, description="Memory request and limit, e.g. 64Gi."
    )
    node_selector: dict[str, str] | None = Field(
        default=None, description="Node labels the pods must match."
    )
    tolerations: list[Toleration] | None = Field(
        default=None,
        description="Tolerations of the pods, e.g. for tainted GPU nodes.",
        max_length=MAX_LIST,
    )
    image: str | None = Field(
        default=None,
        description="Overrides the operator's image for this workload.",
        min_length=1,
        max_length=MAX_URI,
    )


class Endpoint(ApiModel):
    """An OpenAI-compatible server that is already running (e.g. a hosted baseline)."""

    url: EndpointUrl = ENDPOINT_URL.field(
        description="Base URL of the OpenAI-compatible API, e.g. https://api.openai.com/v1.",
        min_length=1,
        max_length=MAX_URI,
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


class InferenceTarget(ApiModel):
    """A model to query: served by the operator from a model source, or an endpoint."""

    model_config = api_config(EXACTLY_ONE_TARGET)

    uri: ModelUri | None = MODEL_URI.field(
        default=None,
        description=f"A stored model the operator serves with vLLM: {MODEL_URI_HELP}.",
        max_length=MAX_URI,
        rules=(STAYS_INSIDE,),
    )
    model_ref: ModelRef | None = Field(
        default=None,
        description="A ModelMerge or FineTuneJob whose output the operator serves with vLLM "
        "(a LoRA adapter is served on its base model).",
    )
    endpoint: Endpoint | None = Field(
        default=None, description="An OpenAI-compatible server that is already running."
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


class Phase(StrEnum):
    PENDING = "Pending"
    WAITING = "Waiting"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


# A run in one of these phases is over: nothing reconciles it any more.
TERMINAL_PHASES = (Phase.SUCCEEDED.value, Phase.FAILED.value)


class ConditionType(StrEnum):
    """The conditions a Crucible resource reports, declared beside their reasons (as Kubeflow
    Trainer's trainjob_types.go does)."""

    # Every kind: True once the run has succeeded (a ModelServing: while it serves); its
    # reason is one of Reason's, by phase, and its message says why.
    READY = "Ready"
    # A ModelServing: True when the current spec is the generation served (reason Promoted);
    # False with the reason it is not (GateNotMet, a waiting or failed input's reason).
    PROMOTED = "Promoted"


class Reason(StrEnum):
    """Why a run is in its phase: the reason of its Ready condition (and of a ModelServing's
    Promoted), one vocabulary for every kind (as Kubeflow Trainer and KAITO declare theirs
    beside the API types)."""

    # Pending: the Job exists but does not run yet.
    QUEUED = "Queued"  # suspended in its Kueue queue
    UNSCHEDULABLE = "Unschedulable"  # no node fits its pod (the scheduler's message)
    # Waiting: an input is not there yet; the run goes on by itself when it appears.
    DEPENDENCY_NOT_FOUND = "DependencyNotFound"  # a referenced Crucible resource is missing
    WAITING_FOR_DEPENDENCY = "WaitingForDependency"  # it exists but has not succeeded yet
    INPUT_NOT_FOUND = "InputNotFound"  # a ConfigMap, key or Secret the spec names is missing
    # Running.
    STARTING_SERVERS = "StartingServers"  # vLLM servers of the run are not ready yet
    JOB_RUNNING = "JobRunning"
    RETRYING = "Retrying"  # a pod failed and the Job retries
    # Running, an Experiment: the stage its children are at.
    SEARCHING = "Searching"  # fine-tunes and evaluations of the search tasks
    RANKING = "Ranking"  # the overall ranking Job
    VALIDATING = "Validating"  # the top candidates on the held-out task, then the verdict
    # A ModelServing: Pending while its replicas roll out, Running once they serve; its
    # Promoted condition says whether the current spec is the one served.
    ROLLING_OUT = "RollingOut"
    SERVING = "Serving"
    PROMOTED = "Promoted"
    GATE_NOT_MET = "GateNotMet"  # an EvalRun's results do not pass the spec's gate
    RUNTIME_NOT_INSTALLED = "RuntimeNotInstalled"  # KServe's, JobSet's or Trainer's CRDs absent
    # Succeeded.
    SUCCEEDED = "Succeeded"
    # Failed: what went wrong, and the message says what to change.
    INVALID_SPEC = "InvalidSpec"
    INVALID_REFERENCE = "InvalidReference"  # the reference exists but cannot be used so
    DEPENDENCY_FAILED = "DependencyFailed"
    CHILD_CONFLICT = "ChildConflict"  # an object with a child's name belongs to someone else
    OOM_KILLED = "OOMKilled"
    ERROR = "Error"  # the container exited non-zero (its termination message follows)
    IMAGE_PULL_FAILED = "ImagePullFailed"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    JOB_FAILED = "JobFailed"  # the Job failed for another reason (Kubernetes' reason follows)
    JOB_DELETED = "JobDeleted"
    SERVER_FAILED = "ServerFailed"
    SERVER_TIMEOUT = "ServerTimeout"
    INVALID_REPORT = "InvalidReport"
    MISSING_REPORT = "MissingReport"
    CHILD_FAILED = "ChildFailed"  # a child the run cannot do without failed
    NO_COMPARISONS = "NoComparisons"  # an Experiment had nothing the judge could compare
    # Of an Experiment's status.failures: a task left with fewer than two models to compare.
    TOO_FEW_MODELS = "TooFewModels"


class Condition(ApiModel):
    """A condition per the Kubernetes API conventions (metav1.Condition)."""

    type: str = Field(description="Type of condition in CamelCase, e.g. Ready.", max_length=316)
    status: Literal["True", "False", "Unknown"] = Field(
        description="Status of the condition: True, False or Unknown."
    )
    reason: Reason = Field(description="Machine-readable CamelCase reason for the last transition.")
    message: str = Field(
        default="", description="Human-readable details of the transition.", max_length=32768
    )
    last_transition_time: datetime = Field(description="When the condition last changed status.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the condition was set for."
    )


class RunStatus(ApiModel):
    """Status every kind reports."""

    phase: Phase | None = Field(
        default=None, description="Pending, Waiting, Running, Succeeded or Failed."
    )
    conditions: list[Condition] | None = Field(
        default=None, description="Latest observations of the resource's state."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the status was computed for."
    )
    start_time: datetime | None = Field(
        default=None,
        description="When the run started; from then on the spec is immutable.",
    )
    completion_time: datetime | None = Field(
        default=None, description="When the run succeeded or failed."
    )
    job_name: str | None = Field(default=None, description="Name of the Job doing the work.")
    output_uri: str | None = Field(
        default=None, description="Where the result was written, e.g. pvc://store/ns/…/."
    )

    def ready(self) -> Condition | None:
        """The Ready condition, whose reason and message say why the run is in its phase."""
        return next((c for c in self.conditions or [] if c.type == ConditionType.READY), None)


class ServingStatus(RunStatus):
    """Status of a kind that serves models with vLLM while its Job runs."""

    servers: list[str] | None = Field(
        default=None,
        description="vLLM Deployments the run created, one per distinct full-weights model "
        "(adapters are served on their base model's); removed when the run ends.",
    )
