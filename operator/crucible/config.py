"""Operator configuration, read from the environment once at start and validated there: a
bad value stops the operator with the variable named, not a reconcile loop later."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo

from crucible import __version__
from crucible.api.formats import DnsLabel, ResourceName

DEFAULT_REGISTRY = "ghcr.io/crucible-dev"

ImageRef = Annotated[str, Field(min_length=1, pattern=r"^\S+$")]


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable and the fix."""


class OperatorConfig(BaseModel):
    """Every setting, each from the environment variable in its alias."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="forbid")

    model_store_pvc: DnsLabel = Field(
        default="crucible-models",
        alias="CRUCIBLE_MODEL_STORE_PVC",
        description="PersistentVolumeClaim holding models, adapters and results; one per "
        "namespace of runs, under this name.",
    )
    model_store_mount: str = Field(
        default="/models",
        alias="CRUCIBLE_MODEL_STORE_MOUNT",
        description="Where the workload pods mount the model store (an absolute path).",
    )
    merge_image: ImageRef = Field(
        default=f"{DEFAULT_REGISTRY}/crucible-merge:{__version__}",
        alias="CRUCIBLE_MERGE_IMAGE",
        description="Image of the ModelMerge Jobs (images/merge).",
    )
    train_image: ImageRef = Field(
        default=f"{DEFAULT_REGISTRY}/crucible-train:{__version__}",
        alias="CRUCIBLE_TRAIN_IMAGE",
        description="Image of the FineTuneJob Jobs (images/train).",
    )
    rag_image: ImageRef = Field(
        default=f"{DEFAULT_REGISTRY}/crucible-rag:{__version__}",
        alias="CRUCIBLE_RAG_IMAGE",
        description="Image of the RagIndex Jobs (images/rag).",
    )
    eval_image: ImageRef = Field(
        default=f"{DEFAULT_REGISTRY}/crucible-eval:{__version__}",
        alias="CRUCIBLE_EVAL_IMAGE",
        description="Image of the EvalRun, SyntheticDataset and ranking Jobs (images/eval).",
    )
    vllm_image: ImageRef = Field(
        default="vllm/vllm-openai:v0.11.0",
        alias="CRUCIBLE_VLLM_IMAGE",
        description="Image of the vLLM servers of EvalRuns, SyntheticDatasets and ModelServings.",
    )
    image_pull_policy: str = Field(
        default="IfNotPresent",
        alias="CRUCIBLE_IMAGE_PULL_POLICY",
        description="imagePullPolicy of every container Crucible makes: Always, IfNotPresent "
        "or Never.",
    )
    gpu_resource: ResourceName = Field(
        default="nvidia.com/gpu",
        alias="CRUCIBLE_GPU_RESOURCE",
        description="The extended resource a run's GPUs are requested as.",
    )
    gpu_runtime_class: DnsLabel | None = Field(
        default=None,
        alias="CRUCIBLE_GPU_RUNTIME_CLASS",
        description="RuntimeClass of the pods that request GPUs (e.g. nvidia, which the "
        "NVIDIA GPU Operator creates where containerd's default runtime is not NVIDIA's); "
        "unset: the node's default runtime.",
    )
    watch_namespaces: tuple[DnsLabel, ...] = Field(
        default=(),
        alias="CRUCIBLE_WATCH_NAMESPACES",
        description="Comma-separated namespaces to watch when `crucible operator` is given "
        "neither --namespace nor --all-namespaces; unset: every namespace.",
    )
    kueue_queue: DnsLabel | None = Field(
        default=None,
        alias="CRUCIBLE_KUEUE_QUEUE",
        description="Kueue LocalQueue the Jobs start suspended in; unset: no queue.",
    )
    trainer_runtime: DnsLabel = Field(
        default="torch-distributed",
        alias="CRUCIBLE_TRAINER_RUNTIME",
        description="Kubeflow Trainer's ClusterTrainingRuntime (a torch one) that FineTuneJobs "
        "with runtime KubeflowTrainer run on.",
    )
    job_backoff_limit: int = Field(
        default=2,
        ge=0,
        le=100,
        alias="CRUCIBLE_JOB_BACKOFF_LIMIT",
        description="backoffLimit of the workload Jobs: pod failures retried before a run fails.",
    )
    workers: int = Field(
        default=16,
        ge=1,
        le=256,
        alias="CRUCIBLE_RECONCILE_WORKERS",
        description="Reconciles in flight at once (asyncio tasks, not threads); a run waiting "
        "for something holds none.",
    )
    resync_interval: float = Field(
        default=600.0,
        gt=0,
        le=86400,
        alias="CRUCIBLE_RESYNC_INTERVAL",
        description="Seconds between safety-net reconciles of every unfinished run; watch "
        "events drive everything else.",
    )
    progress_interval: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        alias="CRUCIBLE_PROGRESS_INTERVAL",
        description="Least seconds between two status writes of a run that only change its "
        "progress; the latest progress is written when the interval ends, and a run's end at "
        "once.",
    )
    error_backoff: float = Field(
        default=1.0,
        gt=0,
        le=300,
        alias="CRUCIBLE_ERROR_BACKOFF",
        description="First retry delay after an unexpected error; doubles up to 5 minutes.",
    )
    leader_election_namespace: DnsLabel | None = Field(
        default=None,
        alias="CRUCIBLE_LEADER_ELECTION_NAMESPACE",
        description="Namespace of the Lease that elects the one active replica; unset, this "
        "replica is always active.",
    )
    leader_election_lease: DnsLabel = Field(
        default="crucible-operator",
        alias="CRUCIBLE_LEADER_ELECTION_LEASE",
        description="Name of that Lease.",
    )
    lease_duration: float = Field(
        default=15.0,
        ge=1,
        le=600,
        alias="CRUCIBLE_LEASE_DURATION",
        description="Seconds a standby waits after the leader's last renewal before taking "
        "over; the leader renews every third of it.",
    )
    identity: str = Field(
        default_factory=lambda: (
            os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
        ),
        alias="CRUCIBLE_IDENTITY",
        min_length=1,
        description="This replica's name in the Lease; default: $POD_NAME, else host and "
        "process id.",
    )
    http_address: str = Field(
        default="0.0.0.0",
        min_length=1,
        alias="CRUCIBLE_HTTP_ADDRESS",
        description="Address /healthz and /metrics are served on.",
    )
    http_port: int = Field(
        default=8080,
        ge=1,
        le=65535,
        alias="CRUCIBLE_HTTP_PORT",
        description="Port /healthz and /metrics are served on.",
    )

    report_tls_dir: str | None = Field(
        default=None,
        alias="CRUCIBLE_REPORT_TLS_DIR",
        description="Folder of the report endpoint's certificate, tls.crt, tls.key and ca.crt "
        "(a mounted kubernetes.io/tls Secret: the chart's, or cert-manager's); unset: no "
        "endpoint, and workloads report by their termination messages alone.",
    )
    report_port: int = Field(
        default=8443,
        ge=1,
        le=65535,
        alias="CRUCIBLE_REPORT_PORT",
        description="Port the report endpoint is served on (HTTPS), at CRUCIBLE_HTTP_ADDRESS.",
    )
    report_url: str | None = Field(
        default=None,
        alias="CRUCIBLE_REPORT_URL",
        description="The report endpoint as the workload pods reach it, https://host:port (the "
        "chart's Service); set, the runs that report while they run push to it with a "
        "projected token of their own audience; unset, they report only at their end.",
    )
    report_ca: str | None = Field(
        default=None,
        alias="CRUCIBLE_REPORT_CA",
        description="PEM of the CA the workloads trust the endpoint by, given to them in their "
        "tasks; unset: ca.crt of CRUCIBLE_REPORT_TLS_DIR.",
    )

    @field_validator("image_pull_policy")
    @classmethod
    def _pull_policy(cls, value: str) -> str:
        if value not in ("Always", "IfNotPresent", "Never"):
            raise ValueError("must be Always, IfNotPresent or Never")
        return value

    report_service: str | None = Field(
        default=None,
        alias="CRUCIBLE_REPORT_SERVICE",
        description="namespace/name of the Service (one without a selector) that "
        "CRUCIBLE_REPORT_URL names: the active replica points its EndpointSlice at itself, so "
        "the workloads reach the replica that writes the statuses; unset: the Service is "
        "someone else's to route.",
    )
    pod_ip: str | None = Field(
        default=None,
        alias="CRUCIBLE_POD_IP",
        description="This replica's pod IP (the downward API's status.podIP), which that "
        "EndpointSlice names.",
    )

    @field_validator("report_service")
    @classmethod
    def _namespaced_name(cls, value: str | None) -> str | None:
        namespace, _, name = (value or "/").partition("/")
        if value is not None and not (namespace and name and "/" not in name):
            raise ValueError("must be namespace/name of a Service, e.g. crucible/crucible-reports")
        return value

    @field_validator("report_url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("https://") or " " in value):
            raise ValueError("must be an https:// URL, e.g. https://crucible-reports.crucible:8443")
        return None if value is None else value.rstrip("/")

    @field_validator("model_store_mount")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must be an absolute path, e.g. /models")
        return value.rstrip("/") or "/"

    @field_validator("watch_namespaces", mode="before")
    @classmethod
    def _namespaces(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(n.strip() for n in value.split(",") if n.strip())
        return value

    def with_report_ca(self) -> OperatorConfig:
        """These settings with `report_ca` read from the endpoint's certificate folder where
        it is not given."""
        if self.report_ca is not None or self.report_tls_dir is None:
            return self
        ca = Path(self.report_tls_dir) / "ca.crt"
        try:
            return self.model_copy(update={"report_ca": ca.read_text()})
        except OSError as error:
            raise ConfigError(
                f"CRUCIBLE_REPORT_TLS_DIR={self.report_tls_dir!r}: cannot read {ca} ({error}); "
                "mount the endpoint's Secret with its ca.crt there, or set CRUCIBLE_REPORT_CA"
            ) from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorConfig:
        environ = os.environ if environ is None else environ
        aliases = {f.alias for f in cls.model_fields.values() if f.alias}
        values = {k: v for k, v in environ.items() if k in aliases and v != ""}
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            problems = [
                f"{problem['loc'][0]}={values.get(str(problem['loc'][0]), '')!r}: "
                f"{problem['msg'].removeprefix('Value error, ')}"
                for problem in error.errors()
            ]
            raise ConfigError("invalid operator configuration: " + "; ".join(problems)) from None


def settings_table() -> str:
    """README's table of the settings, from their declarations."""
    rows = ["| variable | default | what it sets |", "| --- | --- | --- |"]
    for field in OperatorConfig.model_fields.values():
        rows.append(f"| `{field.alias}` | {_default(field)} | {field.description} |")
    return "\n".join(rows) + "\n"


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return "(per replica)"
    if field.default in (None, ()):
        return "unset"
    return f"`{field.default}`"
