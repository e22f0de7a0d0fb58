"""FineTuneJob → the training Job (one process per GPU with torchrun)."""

from __future__ import annotations

from typing import Any

from crucible.api.common import DataSource
from crucible.api.contract import DatasetInput, DocumentsInput, FineTuneTask
from crucible.api.finetunejob import FineTuneJobSpec
from crucible.config import OperatorConfig
from crucible.resources.common import (
    Owner,
    Workload,
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


def command(gpus: int) -> list[str]:
    python, *entry = workload_command("finetune")
    if gpus > 1:
        return ["torchrun", "--standalone", f"--nproc_per_node={gpus}", *entry]
    return [python, *entry]


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
        hyperparameters=spec.hyperparameters,
        merge_adapter=spec.merge_adapter,
        adapter_path=store_path(config, owner, "adapter"),
        merged_path=store_path(config, owner, "merged") if spec.merge_adapter else None,
        checkpoint_path=store_path(config, owner, "checkpoints"),
        gpus=spec.resources.gpus,
    )
    volumes, mounts = list(data.volumes), list(data.mounts)
    if spec.resources.gpus > 1:  # NCCL needs more shared memory than the default 64 MiB
        volumes.append(SHM[0])
        mounts.append(SHM[1])
    return workload_children(
        Workload(
            owner=owner,
            role=ROLE,
            config=config,
            resources=spec.resources,
            image=config.train_image,
            command=command(spec.resources.gpus),
            claims=claims,
            extra_volumes=volumes,
            extra_mounts=mounts,
        ),
        task,
    )
