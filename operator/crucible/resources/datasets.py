"""Mounting a DataSource (ConfigMap key, PVC file or URI) or a DocumentSource (ConfigMap, PVC
folder or git) into a workload pod."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crucible.api.common import DataSource, PvcPath
from crucible.api.ragindex import DocumentSource
from crucible.config import OperatorConfig
from crucible.resources.common import pvc_mount_path

DOCS_DIR = "/data/documents"


@dataclass(frozen=True)
class MountedData:
    path: str | None
    uri: str | None
    claims: list[str] = field(default_factory=list)
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)


def on_claim(pvc: PvcPath, config: OperatorConfig) -> MountedData:
    """A file or folder on a PersistentVolumeClaim, which the pod mounts."""
    base = pvc_mount_path(config, pvc.claim_name)
    return MountedData(path=f"{base}/{pvc.path}".rstrip("/"), uri=None, claims=[pvc.claim_name])


def mount_data(source: DataSource, config: OperatorConfig, name: str = "dataset") -> MountedData:
    """A data file; a ConfigMap key is mounted under /data/<name> (a volume of that name)."""
    if source.config_map is not None:
        key = source.config_map.key
        folder = f"/data/{name}"
        return MountedData(
            path=f"{folder}/{key}",
            uri=None,
            volumes=[
                {
                    "name": name,
                    "configMap": {
                        "name": source.config_map.name,
                        "items": [{"key": key, "path": key}],
                    },
                }
            ],
            mounts=[{"name": name, "mountPath": folder, "readOnly": True}],
        )
    if source.pvc is not None:
        return on_claim(source.pvc, config)
    return MountedData(path=None, uri=source.uri)


def mount_documents(source: DocumentSource, config: OperatorConfig) -> MountedData:
    """A folder of documents; `path` is None for git, which the workload checks out itself."""
    if source.config_map is not None:
        return MountedData(
            path=DOCS_DIR,
            uri=None,
            volumes=[{"name": "documents", "configMap": {"name": source.config_map.name}}],
            mounts=[{"name": "documents", "mountPath": DOCS_DIR, "readOnly": True}],
        )
    if source.pvc is not None:
        return on_claim(source.pvc, config)
    return MountedData(path=None, uri=None)
