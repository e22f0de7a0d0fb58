"""Operator configuration, read from the environment once at start and validated there: a
bad value stops the operator with the variable named, not a reconcile loop later."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from crucible import __version__

DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
RESOURCE_NAME = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$")
DEFAULT_REGISTRY = "ghcr.io/crucible-dev"

ImageRef = Annotated[str, Field(min_length=1, pattern=r"^\S+$")]


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable and the fix."""


class OperatorConfig(BaseModel):
    """Every setting, each from the environment variable in its alias."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="forbid")

    model_store_pvc: str = Field(
        default="crucible-models",
        alias="CRUCIBLE_MODEL_STORE_PVC",
        description="PersistentVolumeClaim holding models, adapters and results; one per "
        "namespace of runs, under this name.",
    )
    model_store_mount: str = Field(default="/models", alias="CRUCIBLE_MODEL_STORE_MOUNT")
    merge_image: ImageRef = Field(
        default=f"{DEFAULT_REGISTRY}/crucible-merge:{__version__}", alias="CRUCIBLE_MERGE_IMAGE"
    )
    train_image: ImageRef = Field(
        default=f"{DEFAULT_REGISTRY}/crucible-train:{__version__}", alias="CRUCIBLE_TRAIN_IMAGE"
    )
    rag_image: ImageRef = Field(
        default=f"{DEFAULT_REGISTRY}/crucible-rag:{__version__}", alias="CRUCIBLE_RAG_IMAGE"
    )
    eval_image: ImageRef = Field(
        default=f"{DEFAULT_REGISTRY}/crucible-eval:{__version__}", alias="CRUCIBLE_EVAL_IMAGE"
    )
    vllm_image: ImageRef = Field(default="vllm/vllm-openai:v0.11.0", alias="CRUCIBLE_VLLM_IMAGE")
    image_pull_policy: str = Field(default="IfNotPresent", alias="CRUCIBLE_IMAGE_PULL_POLICY")
    gpu_resource: str = Field(default="nvidia.com/gpu", alias="CRUCIBLE_GPU_RESOURCE")
    gpu_runtime_class: str | None = Field(
        default=None,
        alias="CRUCIBLE_GPU_RUNTIME_CLASS",
        description="RuntimeClass of the pods that request GPUs (e.g. nvidia, which the "
        "NVIDIA GPU Operator creates where containerd's default runtime is not NVIDIA's); "
        "unset: the node's default runtime.",
    )
    watch_namespaces: tuple[str, ...] = Field(default=(), alias="CRUCIBLE_WATCH_NAMESPACES")
    kueue_queue: str | None = Field(default=None, alias="CRUCIBLE_KUEUE_QUEUE")
    job_backoff_limit: int = Field(default=2, ge=0, le=100, alias="CRUCIBLE_JOB_BACKOFF_LIMIT")
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
    error_backoff: float = Field(
        default=1.0,
        gt=0,
        le=300,
        alias="CRUCIBLE_ERROR_BACKOFF",
        description="First retry delay after an unexpected error; doubles up to 5 minutes.",
    )
    leader_election_namespace: str | None = Field(
        default=None,
        alias="CRUCIBLE_LEADER_ELECTION_NAMESPACE",
        description="Namespace of the Lease that elects the one active replica; unset, this "
        "replica is always active.",
    )
    leader_election_lease: str = Field(
        default="crucible-operator", alias="CRUCIBLE_LEADER_ELECTION_LEASE"
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
    )

    @field_validator(
        "model_store_pvc", "kueue_queue", "leader_election_namespace", "gpu_runtime_class"
    )
    @classmethod
    def _dns_name(cls, value: str | None) -> str | None:
        if value is not None and not DNS_NAME.match(value):
            raise ValueError("must be a lowercase DNS name, e.g. crucible-models")
        return value

    @field_validator("gpu_resource")
    @classmethod
    def _resource_name(cls, value: str) -> str:
        if not RESOURCE_NAME.match(value):
            raise ValueError("must be an extended resource name, e.g. nvidia.com/gpu")
        return value

    @field_validator("image_pull_policy")
    @classmethod
    def _pull_policy(cls, value: str) -> str:
        if value not in ("Always", "IfNotPresent", "Never"):
            raise ValueError("must be Always, IfNotPresent or Never")
        return value

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
            names = tuple(n.strip() for n in value.split(",") if n.strip())
            bad = [n for n in names if not DNS_NAME.match(n)]
            if bad:
                raise ValueError(f"not namespace names: {', '.join(bad)}")
            return names
        return value

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

    def image_for(self, workload: str) -> str:
        images = {
            "merge": self.merge_image,
            "train": self.train_image,
            "rag": self.rag_image,
            "eval": self.eval_image,
        }
        return images[workload]
