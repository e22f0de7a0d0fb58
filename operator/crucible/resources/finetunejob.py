"""FineTuneJob → the training Job: one process per GPU with torchrun; on several nodes an
Indexed Job (one pod per node) and a headless Service that gives each pod a stable hostname,
torchrun's ranks meeting at index 0 (c10d rendezvous).

The group is started as one: every index's pod is created at once (suspended in its Kueue
queue, which admits the Job whole, where one is configured); a rank that starts before the
others waits for them at the rendezvous. A rank's pod that fails or is lost is re-created
for its index, and torch elastic re-forms the group, up to spec.distributed.maxRestarts
times; after that, one index failed for good fails the Job (maxFailedIndexes: 0)."""

from __future__ import annotations

import copy
from typing import Any

from crucible.api.common import DataSource
from crucible.api.contract import DatasetInput, DocumentsInput, FineTuneTask
from crucible.api.finetunejob import FineTuneJobSpec, Hyperparameters
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

ROLE = "train"
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


def command(spec: FineTuneJobSpec, job: str) -> list[str]:
    python, *entry = workload_command("finetune")
    resources = spec.resources
    processes = resources.processes_per_pod
    if resources.nodes > 1:
        return [
            "torchrun",
            f"--nnodes={resources.nodes}",
            f"--nproc_per_node={processes}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={job}-0.{job}:{RENDEZVOUS_PORT}",
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
        **task_fields(owner, config, claims, outputs(owner, spec, config)["outputUri"]),
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
            extra_volumes=volumes,
            extra_mounts=mounts,
        ),
        task,
    )
    return spread(children, spec) if spec.resources.nodes > 1 else children
