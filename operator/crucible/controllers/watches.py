"""What kopf watches, feeding the engine: the Crucible kinds, their labelled children and the
ConfigMaps specs name. Every handler only records and queues; the engine's workers do the
work, so no handler holds a thread or waits."""

from __future__ import annotations

from typing import Any

import kopf

from crucible.api import GROUP, KINDS, VERSION
from crucible.api.kinds import AnyKind
from crucible.controllers.engine import Engine


def watch_kind(kind: AnyKind) -> None:
    @kopf.on.event(GROUP, VERSION, kind.plural, id=f"{kind.singular}-events")
    async def run_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
        engine: Engine = memo.engine
        engine.run_changed(kind.kind, event["type"], dict(event["object"]))


for _kind in KINDS:
    watch_kind(_kind)


# Children, filtered by the API server to Crucible's own (settings.CHILDREN).
@kopf.on.event("batch", "v1", "jobs", id="job-events")
@kopf.on.event("", "v1", "pods", id="pod-events")
@kopf.on.event("apps", "v1", "deployments", id="deployment-events")
@kopf.on.event("", "v1", "services", id="service-events")
async def child_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    engine: Engine = memo.engine
    engine.child_changed(event["type"], dict(event["object"]))


# All ConfigMaps: a dataset or documents ConfigMap a spec names may be created after the run.
@kopf.on.event("", "v1", "configmaps", id="configmap-events")
async def config_map_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    engine: Engine = memo.engine
    engine.config_map_changed(dict(event["object"]))


# The kubelet says why a pod cannot mount its volumes only in an Event (FailedMount), filtered
# by the API server to those (settings.configure).
@kopf.on.event("", "v1", "events", id="failed-mount-events")
async def failed_mount_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    if event["type"] in ("ADDED", "MODIFIED", None):
        engine: Engine = memo.engine
        engine.pod_event(dict(event["object"]))
