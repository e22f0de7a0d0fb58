"""What the operator watches, feeding the engine. Every handler only records and queues; the
engine's workers do the work, so no handler holds a thread or waits.

kopf watches the Crucible kinds. The runs' children (filtered by the API server to Crucible's
own), ConfigMaps and the kubelet's FailedMount Events, which bring most of the events (every
transition of every pod), come through the engine's own informers (crucible.controllers.
informer): kopf hands each event through a task, a queue, a logger and handler state of its
object's own, which on these took three times the CPU of decoding the event itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

import kopf

from crucible.api import GROUP, KINDS, VERSION
from crucible.api.kinds import AnyKind
from crucible.controllers.engine import Engine
from crucible.controllers.informer import Collection, Informer, WatchSource
from crucible.resources.common import MANAGED_BY, MANAGED_BY_LABEL


def watch_kind(kind: AnyKind) -> None:
    @kopf.on.event(GROUP, VERSION, kind.plural, id=f"{kind.singular}-events")
    async def run_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
        engine: Engine = memo.engine
        engine.run_changed(kind.kind, event["type"], dict(event["object"]))


for _kind in KINDS:
    watch_kind(_kind)


Deliver = Callable[[Engine, str | None, dict[str, Any]], None]


def _child(engine: Engine, event_type: str | None, body: dict[str, Any]) -> None:
    engine.child_changed(event_type, body)


def _config_map(engine: Engine, event_type: str | None, body: dict[str, Any]) -> None:
    engine.config_map_changed(body)


def _failed_mount(engine: Engine, event_type: str | None, body: dict[str, Any]) -> None:
    if event_type != "DELETED":
        engine.pod_event(body)


OURS = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
# Each collection (in every namespace the operator watches), and where its events go.
WATCHED: tuple[tuple[Collection, Deliver], ...] = (
    (Collection("batch/v1", "Job", "jobs", label_selector=OURS), _child),
    (Collection("v1", "Pod", "pods", label_selector=OURS), _child),
    (Collection("apps/v1", "Deployment", "deployments", label_selector=OURS), _child),
    (Collection("v1", "Service", "services", label_selector=OURS), _child),
    # All of them: a dataset or documents ConfigMap a spec names may come after the run.
    (Collection("v1", "ConfigMap", "configmaps"), _config_map),
    # The kubelet says why a pod cannot mount its volumes only in an Event.
    (Collection("v1", "Event", "events", field_selector="reason=FailedMount"), _failed_mount),
)


def start_informers(
    source: WatchSource, engine: Engine, namespaces: tuple[str, ...]
) -> list[asyncio.Task[None]]:
    """One informer per collection and namespace (one per collection for every namespace when
    `namespaces` is empty), running until cancelled."""
    return [
        asyncio.create_task(
            Informer(
                source, replace(collection, namespace=namespace), partial(deliver, engine)
            ).run(),
            name=f"crucible-watch-{collection.plural}-{namespace or 'all'}",
        )
        for collection, deliver in WATCHED
        for namespace in namespaces or (None,)
    ]
