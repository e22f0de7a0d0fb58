"""FineTuneJob → the training Job: one process per GPU with torchrun; on several nodes an
Indexed Job (one pod per node) and a headless Service that gives each pod a stable hostname,
torchrun's ranks meeting at index 0 (c10d rendezvous).

The group is started as one: every index's pod is created at once (suspended in its Kueue
queue, which admits the Job whole, where one is configured); a rank that starts before the
others waits for them at the rendezvous. A rank's pod that fails or is lost is re-created
for its index, and torch elastic re-forms the group, up to spec.distributed.maxRestarts
times; after that, one index failed for good fails the Job (maxFailedIndexes: 0).

Where a cluster has them, spec.runtime renders the same pod as a JobSet (one ReplicatedJob of
one Indexed Job, JobSet's own headless Service; a failure restarts the whole group) or as a
Kubeflow Trainer TrainJob on a torch ClusterTrainingRuntime, whose torch plugin gives torchrun
its shape through PET_* variables; the pod's volumes, identity and labels ride in the
TrainJob's runtimePatches."""

from __future__ import annotations

import copy
from typing import Any

from crucible.api.common import DataSource
from crucible.api.contract import DatasetInput, DocumentsInput, FineTuneTask
from crucible.api.finetunejob import FineTuneJobSpec, Hyperparameters, TrainingRuntime
from crucible.config import OperatorConfig
from crucible.resources.common import (
    KUEUE_QUEUE_LABEL,
    Owner,
    Workload,
    child_name,
    pvc_claims,
    store_path,
    store_uri,
    task_fields,
    workload_children,
    workload_command,
)
from crucible.resources.datasets import mount_data, mount_documents
from crucible.resources.jobs import JOB, WorkloadKind

ROLE = "train"
# Kubeflow's torch runtimes name their one ReplicatedJob, and its trainer container, "node";
# the JobSet Crucible renders names its ReplicatedJob the same.
NODE = "node"
PATCH_MANAGER = "crucible.dev/operator"
# Where the ServiceAccount admission mounts the API server's token, unless a mount is there.
API_TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
NO_API_TOKEN = "no-api-token"
# torch elastic caches the workers' store address from its first rendezvous: a surviving
# rank-0 agent does not publish it again when the group re-forms, and the re-created pod of a
# lost node waits for it until it times out. Off, each round publishes its own.
ELASTIC_ENV = [{"name": "TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "value": "1"}]
JOBSET = WorkloadKind(
    api_version="jobset.x-k8s.io/v1alpha2",
    kind="JobSet",
    installs="JobSet",
    complete="Completed",
    pod_label="jobset.sigs.k8s.io/jobset-name",
)
TRAIN_JOB = WorkloadKind(
    api_version="trainer.kubeflow.org/v1alpha1",
    kind="TrainJob",
    installs="Kubeflow Trainer",
    complete="Complete",
    # Trainer runs a TrainJob as a JobSet of the same name.
    pod_label="jobset.sigs.k8s.io/jobset-name",
)
RUNTIMES = {
    TrainingRuntime.JOB: JOB,
    TrainingRuntime.JOBSET: JOBSET,
    TrainingRuntime.KUBEFLOW_TRAINER: TRAIN_JOB,
}
SHM = (
    {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    {"name": "dshm", "mountPath": "/dev/shm"},
)


def outputs(owner: Owner, spec: FineTuneJobSpec, config: OperatorConfig) -> dict[str, str]:
    """adapterUri and outputUri (merged weights when asked for, else the adapter)."""
    adapter = store_uri(config, owner, "adapter")
    merged = store_uri(config, owner, "merged")
    return {"adapterUri": adapter, "outputUri": merged if spec.merge_adapter else adapter}


RENDEZVOUS_PORT = 29400


def rendezvous_host(spec: FineTuneJobSpec, job: str) -> str:
    """Index 0's stable hostname: `<job>-0` under the Job's headless Service, or JobSet's
    `<jobset>-<replicatedJob>-<job index>-<pod index>` under the JobSet's."""
    if spec.runtime == TrainingRuntime.JOBSET:
        return f"{job}-{NODE}-0-0.{job}"
    return f"{job}-0.{job}"


def command(spec: FineTuneJobSpec, job: str) -> list[str]:
    python, *entry = workload_command("finetune")
    resources = spec.resources
    processes = resources.processes_per_pod
    if spec.runtime == TrainingRuntime.KUBEFLOW_TRAINER:
        return ["torchrun", *entry]  # the shape and the rendezvous: Trainer's PET_* variables
    if resources.nodes > 1:
        return [
            "torchrun",
            f"--nnodes={resources.nodes}",
            f"--nproc_per_node={processes}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={rendezvous_host(spec, job)}:{RENDEZVOUS_PORT}",
            f"--rdzv_id={job}",
            f"--max_restarts={spec.distributed.max_restarts}",
            *entry,
        ]
    if processes > 1:
        return ["torchrun", "--standalone", f"--nproc_per_node={processes}", *entry]
    return [python, *entry]


def hyperparameters(spec: FineTuneJobSpec) -> Hyperparameters:
    """The spec's settings, with the gradient accumulation that gives its global batch."""
    hyper = spec.hyperparameters
    if hyper.global_batch_size is None:
        return hyper
    resources = spec.resources
    per_micro_batch = hyper.batch_size * resources.nodes * resources.processes_per_pod
    steps = max(hyper.global_batch_size // per_micro_batch, 1)
    return hyper.model_copy(update={"gradient_accumulation_steps": steps})


def spread(children: list[dict[str, Any]], spec: FineTuneJobSpec) -> list[dict[str, Any]]:
    """The children of a training on several nodes: the Job made Indexed, one pod per node
    under a headless Service of the Job's name, created before it."""
    *first, job = children
    name, nodes = job["metadata"]["name"], spec.resources.nodes
    job["spec"] |= {
        "completionMode": "Indexed",
        "completions": nodes,
        "parallelism": nodes,
        "backoffLimitPerIndex": spec.distributed.max_restarts,
        "maxFailedIndexes": 0,
    }
    del job["spec"]["backoffLimit"]  # the per-index limit counts instead
    job["spec"]["template"]["spec"]["subdomain"] = name
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": copy.deepcopy(job["metadata"]),
        "spec": {
            "clusterIP": "None",
            # The ranks look each other up before any is ready.
            "publishNotReadyAddresses": True,
            "selector": {"job-name": name},
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT}],
        },
    }
    service["metadata"]["labels"].pop(KUEUE_QUEUE_LABEL, None)
    return [*first, service, job]


def jobset(children: list[dict[str, Any]], spec: FineTuneJobSpec) -> list[dict[str, Any]]:
    """The Job made a JobSet's one ReplicatedJob: Indexed, one pod per node, no retries of
    its own, since JobSet restarts the whole group (up to maxRestarts) after a failure."""
    *first, job = children
    meta, job_spec = job["metadata"], job["spec"]
    suspend = job_spec.pop("suspend")
    nodes = spec.resources.nodes
    job_spec |= {
        "completionMode": "Indexed",
        "completions": nodes,
        "parallelism": nodes,
        "backoffLimit": 0,
    }
    labels = {k: v for k, v in meta["labels"].items() if k != KUEUE_QUEUE_LABEL}
    return [
        *first,
        {
            "apiVersion": JOBSET.api_version,
            "kind": JOBSET.kind,
            "metadata": meta,
            "spec": {
                "suspend": suspend,
                "network": {"enableDNSHostnames": True, "publishNotReadyAddresses": True},
                "failurePolicy": {"maxRestarts": spec.distributed.max_restarts},
                "replicatedJobs": [
                    {
                        "name": NODE,
                        "replicas": 1,
                        "template": {"metadata": {"labels": labels}, "spec": job_spec},
                    }
                ],
            },
        },
    ]


def train_job(
    children: list[dict[str, Any]], spec: FineTuneJobSpec, config: OperatorConfig
) -> list[dict[str, Any]]:
    """The Job made a TrainJob on the configured torch ClusterTrainingRuntime: the trainer's
    image, command, environment and resources go in spec.trainer, the rest of the pod (its
    security context, volumes and labels) in a runtime patch of the runtime's "node"
    ReplicatedJob. The runtime's own pod settings (its RuntimeClass) stay its own. A patch
    cannot turn off automountServiceAccountToken, so the trainer's container mounts an empty
    folder where the API server's token would go, which keeps the ServiceAccount admission
    from mounting it there."""
    *first, job = children
    pod = job["spec"]["template"]
    pod_spec = pod["spec"]
    (container,) = pod_spec["containers"]
    patched_pod = {
        key: pod_spec[key]
        for key in ("securityContext", "volumes", "tolerations")
        if key in pod_spec
    }
    patched_pod["volumes"] = [*pod_spec["volumes"], {"name": NO_API_TOKEN, "emptyDir": {}}]
    patched_pod["containers"] = [
        {
            "name": NODE,
            "volumeMounts": [
                *container["volumeMounts"],
                {"name": NO_API_TOKEN, "mountPath": API_TOKEN_DIR, "readOnly": True},
            ],
            "securityContext": container["securityContext"],
        }
    ]
    trainer = {
        "image": container["image"],
        "command": container["command"],
        "env": container["env"],
        "numNodes": spec.resources.nodes,
        "numProcPerNode": spec.resources.processes_per_pod,
    }
    if "resources" in container:  # none on a pod without GPUs, memory or CPU asked
        trainer["resourcesPerNode"] = container["resources"]
    replicated = {
        "name": NODE,
        "template": {"spec": {"template": {"metadata": pod["metadata"], "spec": patched_pod}}},
    }
    return [
        *first,
        {
            "apiVersion": TRAIN_JOB.api_version,
            "kind": TRAIN_JOB.kind,
            "metadata": job["metadata"],
            "spec": {
                "runtimeRef": {
                    "apiGroup": "trainer.kubeflow.org",
                    "kind": "ClusterTrainingRuntime",
                    "name": config.trainer_runtime,
                },
                "suspend": job["spec"]["suspend"],
                "trainer": trainer,
                "runtimePatches": [
                    {
                        "manager": PATCH_MANAGER,
                        "trainingRuntimeSpec": {
                            "template": {"spec": {"replicatedJobs": [replicated]}}
                        },
                    }
                ],
            },
        },
    ]


def build(
    owner: Owner,
    spec: FineTuneJobSpec,
    base_model_uri: str,
    config: OperatorConfig,
    dataset: DataSource | None = None,
) -> list[dict[str, Any]]:
    """`dataset` is where a spec.dataset.datasetRef resolved to; otherwise spec.dataset (or,
    for continued pre-training, spec.documents)."""
    rows: DatasetInput | None = None
    documents: DocumentsInput | None = None
    if spec.documents is not None:
        data = mount_documents(spec.documents, config)
        documents = DocumentsInput(
            git=spec.documents.git, documents_path=data.path, include=spec.documents.include
        )
    else:
        assert spec.dataset is not None
        data = mount_data(dataset or spec.dataset, config)
        rows = DatasetInput(
            path=data.path,
            uri=data.uri,
            format=spec.dataset.format,
            system_prompt=spec.dataset.system_prompt,
            on_invalid_row=spec.dataset.on_invalid_row,
        )
    claims = pvc_claims([base_model_uri]) + data.claims
    task = FineTuneTask(
        **task_fields(
            owner, config, claims, outputs(owner, spec, config)["outputUri"], report=True
        ),
        base_model_uri=base_model_uri,
        method=spec.method,
        dataset=rows,
        documents=documents,
        lora=spec.lora,
        hyperparameters=hyperparameters(spec),
        merge_adapter=spec.merge_adapter,
        adapter_path=store_path(config, owner, "adapter"),
        merged_path=store_path(config, owner, "merged") if spec.merge_adapter else None,
        checkpoint_path=store_path(config, owner, "checkpoints"),
        gpus=spec.resources.gpus_per_pod,
        strategy=spec.distributed.strategy,
    )
    volumes, mounts = list(data.volumes), list(data.mounts)
    if spec.resources.gpus_per_pod > 1:  # NCCL needs more shared memory than the default 64 MiB
        volumes.append(SHM[0])
        mounts.append(SHM[1])
    name = child_name(owner.name, ROLE)
    children = workload_children(
        Workload(
            owner=owner,
            role=ROLE,
            config=config,
            # A pod's GPUs: gpusPerNode where the training spans several nodes.
            resources=spec.resources.model_copy(update={"gpus": spec.resources.gpus_per_pod}),
            image=config.train_image,
            command=command(spec, name),
            claims=claims,
            env=ELASTIC_ENV if spec.resources.nodes > 1 else [],
            extra_volumes=volumes,
            extra_mounts=mounts,
        ),
        task,
    )
    if spec.runtime == TrainingRuntime.JOBSET:
        return jobset(children, spec)
    if spec.runtime == TrainingRuntime.KUBEFLOW_TRAINER:
        return train_job(children, spec, config)
    return spread(children, spec) if spec.resources.nodes > 1 else children
