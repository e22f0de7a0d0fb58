"""Pieces every child manifest is made of: names, labels, owner references, the model store,
pod security and the Job wrapper."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from crucible.api import GROUP
from crucible.api.common import Resources
from crucible.api.contract import (
    REPORT_TOKEN_DIR,
    REPORT_TOKEN_FILE,
    TASK_DIR,
    TASK_FILE,
    TASK_PATH,
    TaskBase,
)
from crucible.api.formats import ModelLocation
from crucible.api.kinds import AnyKind
from crucible.config import OperatorConfig

MANAGED_BY = "crucible"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
LABEL_KIND = f"{GROUP}/kind"
LABEL_NAME = f"{GROUP}/name"
LABEL_ROLE = f"{GROUP}/role"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
MAX_NAME = 63
REPORT_PATH_PREFIX = "/reports/v1"
TASK_VOLUME = "task"
STORE_VOLUME = "model-store"
TMP_VOLUME = "tmp"
REPORT_TOKEN_VOLUME = "report-token"
# The kubelet renews a projected token at 80% of its life; the API server's least is 600 s.
REPORT_TOKEN_SECONDS = 3600


@dataclass(frozen=True)
class Owner:
    """The custom resource a child belongs to."""

    kind: AnyKind
    name: str
    namespace: str
    uid: str

    @classmethod
    def of(cls, kind: AnyKind, body: Mapping[str, Any]) -> Owner:
        meta = body["metadata"]
        return cls(kind, meta["name"], meta["namespace"], meta["uid"])

    @property
    def label(self) -> str:
        """The value of its children's crucible.dev/name label."""
        return name_label(self.name)


def child_name(owner_name: str, suffix: str, max_length: int = MAX_NAME) -> str:
    """`<owner>-<suffix>`, shortened with a hash when it would pass `max_length`: 63, so it can
    also be a label value, a Service name and a container hostname; less for a child that is
    itself a Crucible resource, whose own children are named after it."""
    name = f"{owner_name}-{suffix}"
    if len(name) <= max_length:
        return name
    digest = hashlib.sha256(owner_name.encode()).hexdigest()[:8]
    keep = max_length - len(suffix) - len(digest) - 2
    if keep >= 1:
        return f"{owner_name[:keep].rstrip('-.')}-{digest}-{suffix}"
    # The suffix alone is too long (it is made of the user's names): all of it hashed.
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: max_length - len(digest) - 1].rstrip('-.')}-{digest}"


def name_label(name: str) -> str:
    """A resource's name as a label value: itself, or shortened with a hash past 63 chars."""
    return name if len(name) <= MAX_NAME else child_name(name, "x")


def labels(owner: Owner, role: str) -> dict[str, str]:
    return {
        MANAGED_BY_LABEL: MANAGED_BY,
        "app.kubernetes.io/name": "crucible",
        "app.kubernetes.io/component": role,
        LABEL_KIND: owner.kind.kind,
        LABEL_NAME: owner.label,
        LABEL_ROLE: role,
    }


def metadata(owner: Owner, name: str, role: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner, role),
        "ownerReferences": [
            {
                "apiVersion": f"{GROUP}/v1alpha1",
                "kind": owner.kind.kind,
                "name": owner.name,
                "uid": owner.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }


# -- the model store ---------------------------------------------------------------------


def store_relative(owner: Owner) -> str:
    """The path convention of the model store: <namespace>/<kind-plural>/<name>."""
    return f"{owner.namespace}/{owner.kind.plural}/{owner.name}"


def store_uri(config: OperatorConfig, owner: Owner, leaf: str = "") -> str:
    return f"pvc://{config.model_store_pvc}/{store_relative(owner)}/{leaf}".rstrip("/") + "/"


def store_path(config: OperatorConfig, owner: Owner, leaf: str = "") -> str:
    return f"{config.model_store_mount}/{store_relative(owner)}/{leaf}".rstrip("/")


def pvc_mount_path(config: OperatorConfig, claim: str) -> str:
    if claim == config.model_store_pvc:
        return config.model_store_mount
    return f"/mnt/pvc/{claim}"


def pvc_claims(uris: list[str]) -> list[str]:
    """PersistentVolumeClaims the pvc:// URIs live on, in first-seen order."""
    claims: list[str] = []
    for uri in uris:
        claim = ModelLocation.claim_of(uri)
        if claim is not None and claim not in claims:
            claims.append(claim)
    return claims


def pvc_volumes(
    config: OperatorConfig, claims: list[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, str]]:
    """Volumes, mounts and claim → mount path for the model store plus `claims`."""
    volumes, mounts, paths = [], [], {}
    for claim in [config.model_store_pvc, *[c for c in claims if c != config.model_store_pvc]]:
        volume = STORE_VOLUME if claim == config.model_store_pvc else f"pvc-{claim}"[:MAX_NAME]
        volumes.append({"name": volume, "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": volume, "mountPath": pvc_mount_path(config, claim)})
        paths[claim] = pvc_mount_path(config, claim)
    return volumes, mounts, paths


# -- tasks and reports --------------------------------------------------------------------


# The task rides in its pod's annotation, which the downward API mounts as TASK_PATH: no
# object of its own to write. The API server allows 256 KiB of annotations an object; a task
# larger than this takes a ConfigMap instead.
TASK_ANNOTATION = f"{GROUP}/task"
TASK_ANNOTATION_BYTES = 128 * 1024


def task_text(task: TaskBase) -> str:
    # Compact: it rides in every Job the API server stores, and json's C encoder makes it
    # (an indented dump takes the pure-Python one, a tenth of a ModelMerge's reconcile).
    return json.dumps(task.to_api(), separators=(",", ":"), sort_keys=True)


def task_config_map(owner: Owner, name: str, role: str, task: TaskBase) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(owner, name, role),
        "data": {TASK_FILE: task_text(task)},
    }


def report_audience(owner: Owner) -> str:
    """The audience of the tokens of one run's pods: a token minted for another run, or for
    the API server, is refused by the TokenReview that names this one."""
    return f"{GROUP}/reports/{owner.namespace}/{owner.kind.plural}/{owner.name}"


def report_path(owner: Owner) -> str:
    return f"{REPORT_PATH_PREFIX}/{owner.namespace}/{owner.kind.plural}/{owner.name}"


# -- pods ---------------------------------------------------------------------------------

RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def container_resources(resources: Resources, config: OperatorConfig) -> dict[str, Any]:
    amounts: dict[str, Any] = {}
    if resources.cpu is not None:
        amounts["cpu"] = str(resources.cpu)
    if resources.memory is not None:
        amounts["memory"] = str(resources.memory)
    if resources.gpus:
        amounts[resources.gpu_resource_name or config.gpu_resource] = str(resources.gpus)
    # GPUs cannot be overcommitted: requests equal limits for everything asked for.
    return {"requests": dict(amounts), "limits": dict(amounts)} if amounts else {}


def scheduling(resources: Resources, config: OperatorConfig) -> dict[str, Any]:
    """Where a pod may run: the spec's node selector and tolerations, and the GPU
    RuntimeClass when it asks for GPUs."""
    spec: dict[str, Any] = {}
    if resources.gpus and config.gpu_runtime_class:
        spec["runtimeClassName"] = config.gpu_runtime_class
    if resources.node_selector:
        spec["nodeSelector"] = dict(resources.node_selector)
    if resources.tolerations:
        spec["tolerations"] = [t.to_api() for t in resources.tolerations]
    return spec


@dataclass(frozen=True)
class Workload:
    """One run of a Crucible workload image: who owns it, what it runs, what it mounts."""

    owner: Owner
    role: str
    config: OperatorConfig
    resources: Resources
    image: str
    command: list[str]
    claims: list[str]
    env: list[dict[str, Any]] = field(default_factory=list)
    extra_volumes: list[dict[str, Any]] = field(default_factory=list)
    extra_mounts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return child_name(self.owner.name, self.role)


def report_token_volume(owner: Owner) -> dict[str, Any]:
    """A ServiceAccount token for the report endpoint alone: its audience names the run, so
    the API server refuses it, and the kubelet renews it before it expires."""
    return {
        "name": REPORT_TOKEN_VOLUME,
        "projected": {
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": report_audience(owner),
                        "expirationSeconds": REPORT_TOKEN_SECONDS,
                        "path": REPORT_TOKEN_FILE,
                    }
                }
            ]
        },
    }


def workload_pod(w: Workload, task: TaskBase, text: str | None) -> dict[str, Any]:
    """The pod template of a Crucible workload: its task's `text` in an annotation mounted by
    the downward API (without one, the ConfigMap of the workload's name), the model store (and
    any other PVCs) mounted, restricted security. It reports through its termination message,
    which needs no credential, and holds no token for the API server; one that pushes its
    reports holds a token for the report endpoint and this run alone."""
    task_source: dict[str, Any] = (
        {"configMap": {"name": w.name}}
        if text is None
        else {
            "downwardAPI": {
                "items": [
                    {
                        "path": TASK_FILE,
                        "fieldRef": {"fieldPath": f"metadata.annotations['{TASK_ANNOTATION}']"},
                    }
                ]
            }
        }
    )
    pushes = task.report_url is not None
    volumes, mounts, _ = pvc_volumes(w.config, w.claims)
    volumes += [
        {"name": TASK_VOLUME, **task_source},
        {"name": TMP_VOLUME, "emptyDir": {}},
        *([report_token_volume(w.owner)] if pushes else []),
        *w.extra_volumes,
    ]
    mounts += [
        {"name": TASK_VOLUME, "mountPath": TASK_DIR, "readOnly": True},
        {"name": TMP_VOLUME, "mountPath": "/tmp"},
        *(
            [{"name": REPORT_TOKEN_VOLUME, "mountPath": REPORT_TOKEN_DIR, "readOnly": True}]
            if pushes
            else []
        ),
        *w.extra_mounts,
    ]
    container = {
        "name": w.role,
        "image": w.resources.image or w.image,
        "imagePullPolicy": w.config.image_pull_policy,
        "command": w.command,
        "env": [
            {"name": "HOME", "value": "/tmp"},
            {"name": "HF_HOME", "value": f"{w.config.model_store_mount}/.cache/huggingface"},
            *w.env,
        ],
        "volumeMounts": mounts,
        "securityContext": RESTRICTED_CONTAINER,
        # A failure with no message of its own is explained by the end of its log.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if resources_spec := container_resources(w.resources, w.config):
        container["resources"] = resources_spec
    return {
        "metadata": {
            "labels": labels(w.owner, w.role),
            **({"annotations": {TASK_ANNOTATION: text}} if text is not None else {}),
        },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": RESTRICTED_POD,
            "containers": [container],
            "volumes": volumes,
            **scheduling(w.resources, w.config),
        },
    }


def job(
    owner: Owner, name: str, role: str, pod: dict[str, Any], config: OperatorConfig
) -> dict[str, Any]:
    """A Job around `pod`; with a Kueue queue configured it starts suspended in that queue."""
    meta = metadata(owner, name, role)
    if config.kueue_queue:
        meta["labels"][KUEUE_QUEUE_LABEL] = config.kueue_queue
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": config.job_backoff_limit,
            "suspend": bool(config.kueue_queue),
            "template": pod,
        },
    }


def env_from_secret(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def task_fields(
    owner: Owner,
    config: OperatorConfig,
    claims: list[str],
    output_uri: str | None = None,
    *,
    job: str | None = None,
    report: bool = False,
) -> dict[str, Any]:
    """The TaskBase fields every workload's task has; a run with several Jobs names the `job`,
    which gets an output folder of its own. A workload that reports while it runs, or whose
    report may outgrow a termination message, pushes its reports to the operator's endpoint
    where it serves one; without it, only the termination message reports, at the end."""
    _, _, mounts = pvc_volumes(config, claims)
    pushes = report and config.report_url is not None
    return {
        "namespace": owner.namespace,
        "name": owner.name,
        "report_url": f"{config.report_url}{report_path(owner)}" if pushes else None,
        "report_ca": config.report_ca if pushes else None,
        "mounts": mounts,
        "output_uri": output_uri or store_uri(config, owner, job or ""),
        "output_path": store_path(config, owner, job or ""),
    }


def workload_command(module: str) -> list[str]:
    return ["python", "-m", f"crucible.workloads.{module}", "--task", TASK_PATH]


def workload_children(w: Workload, task: TaskBase) -> list[dict[str, Any]]:
    """Every child of a workload run, in creation order: the task's ConfigMap (if it is too
    large for an annotation), the Job."""
    text = task_text(task)
    inline = len(text.encode()) <= TASK_ANNOTATION_BYTES
    pod = workload_pod(w, task, text if inline else None)
    return [
        *([] if inline else [task_config_map(w.owner, w.name, w.role, task)]),
        job(w.owner, w.name, w.role, pod, w.config),
    ]
