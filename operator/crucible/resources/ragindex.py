"""RagIndex → the indexing Job; the database URI reaches it from its Secret, never inline."""

from __future__ import annotations

from typing import Any

from crucible.api.contract import DATABASE_URL_ENV, RagTask
from crucible.api.ragindex import RagIndexSpec
from crucible.config import OperatorConfig
from crucible.resources.common import (
    Owner,
    Workload,
    env_from_secret,
    pvc_claims,
    task_fields,
    workload_children,
    workload_command,
)
from crucible.resources.datasets import mount_documents

ROLE = "rag"


def build(owner: Owner, spec: RagIndexSpec, config: OperatorConfig) -> list[dict[str, Any]]:
    documents = mount_documents(spec.source, config)
    claims = pvc_claims([spec.embedding.model]) + documents.claims
    task = RagTask(
        **task_fields(owner, config, claims),
        git=spec.source.git,
        documents_path=documents.path,
        include=spec.source.include,
        chunking=spec.chunking,
        embedding=spec.embedding,
        table=spec.database.table,
    )
    secret = spec.database.connection_secret_ref
    return workload_children(
        Workload(
            owner=owner,
            role=ROLE,
            config=config,
            resources=spec.resources,
            image=config.rag_image,
            command=workload_command("rag"),
            claims=claims,
            env=[env_from_secret(DATABASE_URL_ENV, secret.name, secret.key)],
            extra_volumes=documents.volumes,
            extra_mounts=documents.mounts,
        ),
        task,
    )
