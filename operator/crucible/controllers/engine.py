"""The reconcile engine: every run progresses at once, and a run that waits costs nothing.

Watch events (crucible.controllers.watches) say *which* runs to look at; a fixed set of
asyncio workers on kopf's event loop reconciles them from a work queue with client-go's
semantics: a run is queued at most once, never reconciled by two workers at once, and queued
again when something changed while it was being reconciled. A run is queued when

- the resource itself changes;
- one of its children changes (Jobs, Pods, Deployments, Services, and
  the Crucible resources an Experiment makes: all carry the labels crucible.dev/kind and
  crucible.dev/name, which map them back to the run), or one of its workloads pushes a report;
- something its spec names changes: another Crucible resource (a modelRef, datasetRef or
  rag.indexName target) or a ConfigMap (the engine keeps the reverse index);
- a deadline it asked for passes (a vLLM server's start-up timeout), or it failed with an
  unexpected error (retried with exponential backoff);
- the safety-net resync passes (CRUCIBLE_RESYNC_INTERVAL, default 10 minutes).

Nothing else polls. The engine's view of Crucible resources and of their children is the
latest watch event of each (crucible.controllers.cache); a reconcile reads it instead of the
API, and reads the API only where a lagging view could mislead it. Status is always derived
from what exists (level-triggered). With leader election on, only the leader's workers run;
the standby keeps its view current and takes over at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from math import inf
from typing import Any

from crucible.api.common import TERMINAL_PHASES, Phase, RunStatus
from crucible.api.contract import WorkloadReport
from crucible.api.kinds import KINDS_BY_NAME
from crucible.config import OperatorConfig
from crucible.controllers.cache import ChildCache, newer, seen, slim_run
from crucible.controllers.kube import KubeClient
from crucible.controllers.lifecycle import Context, Controller, Reference
from crucible.metrics import (
    JOB_SECONDS,
    QUEUE_DEPTH,
    RECONCILE_ERRORS,
    RECONCILE_SECONDS,
    RECONCILES,
    RUNS,
)
from crucible.resources.common import (
    LABEL_KIND,
    LABEL_NAME,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    Owner,
    name_label,
)
from crucible.resources.status import comparable, merge_patch, progress_only

logger = logging.getLogger("crucible.engine")

Key = tuple[str, str, str]  # kind, namespace, name
OLD_FINALIZER = "crucible.dev/finalizer"  # set by operators before the engine; removed on sight


class WorkQueue:
    """Keys to reconcile: each queued at most once, handed to one worker at a time, queued
    again after its worker is done when it changed meanwhile; delayed adds keep the earliest."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._dirty: set[Key] = set()
        self._processing: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}

    def __len__(self) -> int:
        return self._queue.qsize()

    def add(self, key: Key) -> None:
        if key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._put(key)

    def _put(self, key: Key) -> None:
        self._queue.put_nowait(key)
        QUEUE_DEPTH.set(self._queue.qsize())

    def add_after(self, key: Key, delay: float) -> None:
        loop = asyncio.get_running_loop()
        when = loop.time() + max(delay, 0.0)
        timer = self._timers.get(key)
        if timer is not None and not timer.cancelled() and timer.when() <= when:
            return
        if timer is not None:
            timer.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def get(self) -> Key:
        key = await self._queue.get()
        self._dirty.discard(key)
        self._processing.add(key)
        QUEUE_DEPTH.set(self._queue.qsize())
        return key

    def done(self, key: Key) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._put(key)

    def forget(self, key: Key) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()


class Engine:
    def __init__(
        self,
        kube: KubeClient,
        config: OperatorConfig,
        controllers: Mapping[str, Controller[Any]],
    ) -> None:
        self.kube = kube
        self.config = config
        self.controllers = controllers
        self.queue = WorkQueue()
        self.runs: dict[Key, dict[str, Any]] = {}
        # (namespace, kind, name) of something referenced → the runs that reference it.
        self.dependents: dict[Key, set[Key]] = {}
        self.references: dict[Key, set[Key]] = {}
        # (namespace, kind, crucible.dev/name label value) → the run's name.
        self.names: dict[Key, str] = {}
        # (namespace, owner kind, owner's crucible.dev/name label) → the runs it made.
        self.owned: dict[Key, set[Key]] = {}
        self.failures: dict[Key, int] = {}
        # When each run's status was last written for its progress alone (self.clock).
        self.progress_written: dict[Key, float] = {}
        self.clock = time.monotonic
        self.children = ChildCache()
        self.leading = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- what the watches report ----------------------------------------------------------

    def run_changed(self, kind: str, event_type: str | None, body: dict[str, Any]) -> None:
        """A Crucible resource was added, modified or deleted."""
        meta = body["metadata"]
        key = (kind, meta["namespace"], meta["name"])
        owner = self._owner_of(meta["namespace"], meta.get("labels") or {})
        if event_type == "DELETED":
            if owner is not None:
                self.owned.get(owner, set()).discard(key)
            self.runs.pop(key, None)
            self._set_references(key, set())
            self.names.pop((meta["namespace"], kind, name_label(meta["name"])), None)
            self.queue.forget(key)
            self.failures.pop(key, None)
            self.progress_written.pop(key, None)
            self.children.forget_reports(meta["namespace"], name_label(meta["name"]))
            RUNS.forget(kind, meta["namespace"], meta["name"])
        elif not seen(body, self.runs.get(key)):
            if not newer(body, self.runs.get(key)):
                return
            self.runs[key] = body = slim_run(body)
            if owner is not None:
                self.owned.setdefault(owner, set()).add(key)
            self.names[(meta["namespace"], kind, name_label(meta["name"]))] = meta["name"]
            self._set_references(key, self._referenced(kind, body))
            RUNS.observe(kind, body)
            self.queue.add(key)
        # Even the echo of the run's own status write is news to the runs that reference it
        # and to the run that made it: they learn of it from this event alone.
        self._wake_dependents((meta["namespace"], kind, meta["name"]))
        # A run another run made (an Experiment's fine-tunes and evaluations) is its child too.
        self._queue_owner(meta["namespace"], meta.get("labels") or {})

    def child_changed(self, event_type: str | None, body: dict[str, Any]) -> None:
        """A Job, Pod, Deployment, Service or ConfigMap of a run changed."""
        if event_type == "DELETED":
            self.children.remove(body)
        elif not self.children.store(body):
            return  # the echo of the operator's own create: the reconcile that made it knows
        meta = body["metadata"]
        self._queue_owner(meta["namespace"], meta.get("labels") or {})

    def report_pushed(self, owner: Owner, job: str, report: WorkloadReport) -> None:
        """A workload pushed its report to the report endpoint, which checked that it is the
        run's `job`'s."""
        self.children.report_pushed(owner.namespace, owner.label, job, report)
        self.queue.add((owner.kind.kind, owner.namespace, owner.name))

    def _owner_of(self, namespace: str, labels: Mapping[str, str]) -> Key | None:
        """(namespace, kind, crucible.dev/name label) of the run a child's labels name."""
        kind, label = labels.get(LABEL_KIND) or "", labels.get(LABEL_NAME)
        if labels.get(MANAGED_BY_LABEL) == MANAGED_BY and kind in self.controllers and label:
            return (namespace, kind, label)
        return None

    def _queue_owner(self, namespace: str, labels: Mapping[str, str]) -> None:
        """Queue the run a child's labels name."""
        owner = self._owner_of(namespace, labels)
        if owner is not None:
            _, kind, label = owner
            self.queue.add((kind, namespace, self.names.get(owner, label)))

    def config_map_changed(self, body: dict[str, Any]) -> None:
        """Any ConfigMap: one a spec names wakes the runs that wait for it (a run's own, its
        task, never changes its status)."""
        self._wake_dependents(
            (body["metadata"]["namespace"], "ConfigMap", body["metadata"]["name"])
        )

    def pod_event(self, event: dict[str, Any]) -> None:
        """A core Event the kubelet posted about a pod (only FailedMount ones are watched)."""
        involved = event.get("involvedObject") or {}
        if involved.get("kind") != "Pod":
            return
        namespace, pod = involved.get("namespace") or "", involved.get("name") or ""
        labels = self.children.mount_failed(namespace, pod, event.get("message") or "")
        if labels is not None:
            self._queue_owner(namespace, labels)

    def _wake_dependents(self, target: Key) -> None:
        for dependent in self.dependents.get(target, ()):
            self.queue.add(dependent)

    def _referenced(self, kind: str, body: dict[str, Any]) -> set[Key]:
        try:
            spec = KINDS_BY_NAME[kind].spec.model_validate(body.get("spec") or {})
        except ValueError:
            return set()  # the reconcile reports the invalid spec
        namespace = body["metadata"]["namespace"]
        refs: list[Reference] = self.controllers[kind].references(spec)
        return {(namespace, r.kind, r.name) for r in refs}

    def _set_references(self, key: Key, targets: set[Key]) -> None:
        for old in self.references.pop(key, set()) - targets:
            holders = self.dependents.get(old)
            if holders is not None:
                holders.discard(key)
                if not holders:
                    del self.dependents[old]
        if targets:
            self.references[key] = targets
            for target in targets:
                self.dependents.setdefault(target, set()).add(key)

    def reference_cycle(
        self, namespace: str, start: tuple[str, str], via: tuple[str, str]
    ) -> list[tuple[str, str]] | None:
        """The references that lead from `via` back to `start` (kind, name), as the path
        start → via → … → start, in the watches' view of the namespace; None without one."""
        if via == start:
            return [start, start]
        stack, seen = [[start, via]], {via}
        while stack:
            path = stack.pop()
            kind, name = path[-1]
            for _, ref_kind, ref_name in sorted(self.references.get((kind, namespace, name), ())):
                step = (ref_kind, ref_name)
                if step == start:
                    return [*path, start]
                if step not in seen and ref_kind in self.controllers:
                    seen.add(step)
                    stack.append([*path, step])
        return None

    # -- reconciling ----------------------------------------------------------------------

    async def lookup_run(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A Crucible resource as last seen, or from the API when not seen yet (at start-up
        the watches of different kinds fill in any order)."""
        found = self.runs.get((kind, namespace, name))
        if found is not None:
            return found
        return await self.kube.get("crucible.dev/v1alpha1", kind, namespace, name)

    async def reconcile(self, key: Key) -> float | None:
        """Reconcile one run; when to look again if nothing else will say so."""
        kind, namespace, name = key
        body = self.runs.get(key)
        if body is None:
            return None
        await self._drop_old_finalizer(body)
        kind_type = KINDS_BY_NAME[kind]
        current = kind_type.read_status(body)
        if kind_type.over(current.phase):
            return None
        owner = Owner.of(kind_type, body)
        ctx = Context(
            self.kube,
            self.config,
            owner,
            body,
            current,
            self.lookup_run,
            self.children.children(namespace, owner.label),
            self.children.store,
            lambda: [
                self.runs[k]
                for k in self.owned.get((namespace, kind, owner.label), ())
                if k in self.runs
            ],
            lambda via: self.reference_cycle(namespace, (kind, owner.name), via),
        )
        with RECONCILE_SECONDS.labels(kind).time():
            result = await self.controllers[kind].reconcile(ctx)
        status = result.status
        RECONCILES.labels(kind, status.phase or Phase.PENDING).inc()
        before, after = comparable(current), comparable(status)
        if progress_only(before, after):
            # A workload may report every second: fold its progress into one status write
            # per interval, the latest one written when the interval ends.
            now = self.clock()
            wait = self.config.progress_interval - (now - self.progress_written.get(key, -inf))
            if wait > 0:
                return wait if result.requeue_after is None else min(wait, result.requeue_after)
            self.progress_written[key] = now
        if after != before:
            patch = merge_patch(current.to_api(), status.to_api())
            patched = await self.kube.patch_status(kind, namespace, name, patch)
            if patched is None:
                return None  # deleted meanwhile
            if newer(patched, self.runs.get(key)):
                self.runs[key] = slim_run(patched)
            RUNS.observe(kind, patched)
        if status.phase != current.phase:
            await self._announce(kind, body, current, status)
        return result.requeue_after

    async def _announce(
        self, kind: str, body: dict[str, Any], before: RunStatus, after: RunStatus
    ) -> None:
        """A phase transition: a log line, the duration of a finished run, and a core Event,
        except when a run starts running: that is in its status and its Job's own Events, and
        an Event more would be a third API write for every run that starts (with its Job and
        its status). A server that starts serving is announced."""
        ready = after.ready()
        assert ready is not None  # every status the flow builds has one
        meta = body["metadata"]
        logger.info(
            "%s %s/%s %s: %s", kind, meta["namespace"], meta["name"], after.phase, ready.message
        )
        if after.phase != Phase.RUNNING or KINDS_BY_NAME[kind].long_lived:
            failed = after.phase == Phase.FAILED
            await self.kube.post_event(
                body, "Warning" if failed else "Normal", ready.reason, ready.message
            )
        if after.phase in TERMINAL_PHASES and after.start_time and after.completion_time:
            seconds = (after.completion_time - after.start_time).total_seconds()
            JOB_SECONDS.labels(kind, after.phase).observe(max(seconds, 0.0))

    async def _drop_old_finalizer(self, body: dict[str, Any]) -> None:
        """Runs made by an operator before the engine carry its finalizer, which nothing
        would remove: take it off so they can be deleted."""
        finalizers = body["metadata"].get("finalizers") or []
        if OLD_FINALIZER in finalizers:
            meta = body["metadata"]
            await self.kube.patch(
                "crucible.dev/v1alpha1",
                body["kind"],
                meta["namespace"],
                meta["name"],
                {
                    "metadata": {
                        "finalizers": [f for f in finalizers if f != OLD_FINALIZER],
                        "resourceVersion": meta["resourceVersion"],
                    }
                },
            )

    async def _worker(self) -> None:
        while True:
            await self.leading.wait()
            key = await self.queue.get()
            try:
                if not self.leading.is_set():  # lost the lease while waiting: hand it back
                    self.queue.done(key)
                    self.queue.add(key)
                    continue
                requeue = await self.reconcile(key)
            except asyncio.CancelledError:
                self.queue.done(key)
                raise
            except Exception:  # an API hiccup or a bug: count it, log it, retry with backoff
                RECONCILE_ERRORS.labels(key[0]).inc()
                failures = self.failures[key] = self.failures.get(key, 0) + 1
                delay = min(self.config.error_backoff * 2 ** (failures - 1), 300.0)
                logger.exception("reconcile of %s %s/%s failed; retrying in %.1f s", *key, delay)
                self.queue.done(key)
                self.queue.add_after(key, delay)
                continue
            self.failures.pop(key, None)
            self.queue.done(key)
            if requeue is not None:
                self.queue.add_after(key, requeue)

    async def _resync(self) -> None:
        """The safety net: every run that is not over, now and then, whatever happened."""
        while True:
            await asyncio.sleep(self.config.resync_interval)
            for key, body in list(self.runs.items()):
                kind = KINDS_BY_NAME[key[0]]
                if not kind.over(kind.read_status(body).phase):
                    self.queue.add(key)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"crucible-worker-{i}")
            for i in range(self.config.workers)
        ]
        self._tasks.append(asyncio.create_task(self._resync(), name="crucible-resync"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def lead(self, leading: bool) -> None:
        """Start or stop reconciling; a new leader looks at every run once."""
        if leading and not self.leading.is_set():
            self.leading.set()
            RUNS.active = True
            for key in self.runs:
                self.queue.add(key)
        elif not leading and self.leading.is_set():
            self.leading.clear()
            RUNS.active = False
