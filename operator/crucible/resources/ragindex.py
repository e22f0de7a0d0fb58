"""RagIndex → the indexing Job; the database URI reaches it from its Secret, never inline."""

from __future__ import annotations

from typing import Any

from crucible.api.contract import DATABASE_URL_ENV, TASK_PATH, RagTask
from crucible.api.ragindex import RagIndexSpec
from crucible.config import OperatorConfig
from crucible.resources.common import (
    Owner,
    child_name,
    env_from_secret,
    job,
    pvc_claims,
    pvc_mount_path,
    pvc_volumes,
    report_name,
    report_objects,
    store_path,
    store_uri,
    task_config_map,
    workload_pod,
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
    _, _, claim_paths = pvc_volumes(config, claims)
    task = RagTask(
        namespace=owner.namespace,
        name=owner.name,
        report_config_map=report_name(owner),
        mounts=claim_paths,
        output_uri=store_uri(config, owner),
        output_path=store_path(config, owner),
        git=source.git,
        documents_path=documents_path,
        include=source.include,
        chunking=spec.chunking,
        embedding=spec.embedding,
        table=spec.database.table,
    )
    name = child_name(owner.name, ROLE)
    secret = spec.database.connection_secret_ref
    pod = workload_pod(
        owner=owner,
        role=ROLE,
        config=config,
        resources=spec.resources,
        image=config.rag_image,
        command=["python", "-m", "crucible.workloads.rag", "--task", TASK_PATH],
        task_config_map_name=name,
        claims=claims,
        env=[env_from_secret(DATABASE_URL_ENV, secret.name, secret.key)],
        extra_volumes=volumes,
        extra_mounts=mounts,
    )
    return [
        *report_objects(owner, ROLE),
        task_config_map(owner, name, ROLE, task),
        job(owner, name, ROLE, pod, config),
    ]
