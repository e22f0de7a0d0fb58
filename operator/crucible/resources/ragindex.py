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
    pvc_mount_path,
    task_fields,
    workload_children,
    workload_command,
)

ROLE = "rag"
DOCS_DIR = "/data/documents"


def build(owner: Owner, spec: RagIndexSpec, config: OperatorConfig) -> list[dict[str, Any]]:
    source = spec.source
    claims = pvc_claims([spec.embedding.model])
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    documents_path = None
    if source.config_map is not None:
        documents_path = DOCS_DIR
        volumes.append({"name": "documents", "configMap": {"name": source.config_map.name}})
        mounts.append({"name": "documents", "mountPath": DOCS_DIR, "readOnly": True})
    elif source.pvc is not None:
        claims.append(source.pvc.claim_name)
        base = pvc_mount_path(config, source.pvc.claim_name)
        documents_path = f"{base}/{source.pvc.path}".rstrip("/")
    task = RagTask(
        **task_fields(owner, config, claims),
        git=source.git,
        documents_path=documents_path,
        include=source.include,
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
            extra_volumes=volumes,
            extra_mounts=mounts,
        ),
        task,
    )
