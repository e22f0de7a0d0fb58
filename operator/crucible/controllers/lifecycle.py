"""The flow every kind shares: resolve the inputs → build the children → derive the status
from the children and the workload's report.

A reconcile never waits: it reads what exists, creates what is missing (children have
deterministic names, so a second reconcile adopts instead of duplicating) and returns the
status. Everything the status records is recomputed from what exists, so an operator killed
at any instant loses nothing: what was decided when the Job was made (the resolved base model
of a fine-tune) is kept on the Job itself, in an annotation.
"""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import ValidationError

from crucible.api import GROUP, Kind
from crucible.api.base import ApiModel
from crucible.api.common import (
    ModelSource,
    Phase,
    Reason,
    RunStatus,
    Serving,
    ServingStatus,
)
from crucible.api.contract import PACKED_REPORT_PREFIX, WorkloadReport, unpack_report
from crucible.api.finetunejob import FineTuneJobStatus
from crucible.api.kinds import KINDS_BY_NAME, AnyKind
from crucible.config import OperatorConfig
from crucible.controllers.cache import Children
from crucible.controllers.kube import ChildConflictError, KubeClient
from crucible.resources.common import LABEL_ROLE, Owner, child_name
from crucible.resources.jobs import (
    JOB,
    WorkloadKind,
    job_outcome,
    packed_report,
    pod_ended,
    pod_failure,
)
from crucible.resources.serving import (
    SERVER_LABEL,
    SERVER_ROLE,
    ServedModel,
    server,
    server_name,
    servers_for,
)
from crucible.resources.status import describe_validation_error, phase_fields

# What a run decided when its Job was made, kept on the Job: status fields (API spelling, as
# the status has them).
RECORDED_ANNOTATION = f"{GROUP}/recorded-status"
# Nothing announces a CRD being installed, nor the status of the objects the operator does not
# watch (a JobSet, a TrainJob, KServe's): how often a run that waits on one looks again. Its
# pods' changes wake a training sooner.
UNWATCHED_RECHECK_SECONDS = 30.0
SERVER_SELECTOR = {LABEL_ROLE: SERVER_ROLE}


class WaitingError(Exception):
    """An input is not there yet; the run goes on when it appears (when nothing announces
    it, `recheck` says after how many seconds to look again)."""

    def __init__(self, reason: Reason, message: str, recheck: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.recheck = recheck


class FailedError(Exception):
    """The run cannot succeed; the message says why and what to change."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Reference:
    """Something a spec names, whose changes should reconcile the run: a Crucible resource
    (by kind) or a ConfigMap, in the run's namespace."""

    kind: str
    name: str


RunLookup = Callable[[str, str, str], Awaitable[dict[str, Any] | None]]


@dataclass
class Context:
    kube: KubeClient
    config: OperatorConfig
    owner: Owner
    body: dict[str, Any]
    current: RunStatus
    # A Crucible resource by (kind, namespace, name): the engine's view of it, fresh from watch
    # events, or read from the API when the engine has not seen it.
    lookup_run: RunLookup
    # The run's children as the watches last saw them, and where created ones are noted.
    children: Children
    created: Callable[[dict[str, Any]], object]
    # The Crucible resources this run made (an Experiment's), as the watches last saw them.
    owned_runs: Callable[[], list[dict[str, Any]]] = list
    # The references leading from a resource (kind, name) back to this run, as the path from
    # it to itself; None where they do not.
    reference_cycle: Callable[[tuple[str, str]], list[tuple[str, str]] | None] = lambda _: None

    @property
    def generation(self) -> int:
        generation: int = self.body["metadata"].get("generation", 1)
        return generation


@dataclass
class Result:
    """A reconcile's outcome: the status to write and, when nothing will announce the next
    change (a server's start-up deadline), when to look again."""

    status: RunStatus
    requeue_after: float | None = None


# -- inputs --------------------------------------------------------------------------------


DependencySpecT = TypeVar("DependencySpecT", bound=ApiModel)
DependencyStatusT = TypeVar("DependencyStatusT", bound=RunStatus)


async def dependency(
    ctx: Context, kind: Kind[DependencySpecT, DependencyStatusT], name: str, field_path: str
) -> tuple[DependencySpecT, DependencyStatusT]:
    """The spec and status of a referenced resource that has succeeded; otherwise wait or
    fail, naming the field."""
    ns = ctx.owner.namespace
    found = await ctx.lookup_run(kind.kind, ns, name)
    if found is None:
        raise WaitingError(
            Reason.DEPENDENCY_NOT_FOUND,
            f"{field_path}: {kind.kind} {name!r} does not exist in namespace {ns}; create it or "
            f"correct {field_path}",
        )
    status = kind.read_status(found)
    cycle = ctx.reference_cycle((kind.kind, name)) if status.phase != Phase.SUCCEEDED else None
    if cycle is not None:
        raise FailedError(
            Reason.INVALID_REFERENCE,
            f"{field_path}: a reference cycle, "
            + " → ".join(f"{k} {n!r}" for k, n in cycle)
            + ": each would wait for the other for ever; remove one of these references",
        )
    if status.phase == Phase.FAILED:
        ready = status.ready()
        why = f": {ready.message}" if ready is not None and ready.message else ""
        raise FailedError(
            Reason.DEPENDENCY_FAILED, f"{field_path}: {kind.kind} {name!r} failed{why}"
        )
    if status.phase != Phase.SUCCEEDED:
        raise WaitingError(
            Reason.WAITING_FOR_DEPENDENCY,
            f"{field_path}: waiting for {kind.kind} {name!r} to succeed "
            f"(now {status.phase or 'new'})",
        )
    # A run that succeeded had a valid spec, fixed since it started.
    return kind.spec.model_validate(found.get("spec") or {}), status


def output_of(status: RunStatus, kind: str, name: str, field_path: str) -> str:
    """Where a dependency that succeeded put its result."""
    if not status.output_uri:
        raise FailedError(
            Reason.DEPENDENCY_FAILED, f"{field_path}: {kind} {name!r} reported no outputUri"
        )
    return status.output_uri


@dataclass(frozen=True)
class ResolvedModel:
    """What a model source stands for: a uri, or the result of the run a modelRef names. A
    FineTuneJob's result is a LoRA adapter unless it merged it: then `uri` is the adapter, to
    be served on `base_model_uri`."""

    uri: str
    adapter: bool = False
    base_model_uri: str | None = None
    adapter_target_modules: tuple[str, ...] = ()


async def resolve_model(ctx: Context, source: ModelSource, field_path: str) -> ResolvedModel:
    if source.uri is not None:
        return ResolvedModel(source.uri)
    assert source.model_ref is not None
    ref = source.model_ref
    field = f"{field_path}.modelRef"
    _, status = await dependency(ctx, KINDS_BY_NAME[ref.kind], ref.name, field)
    uri = output_of(status, ref.kind, ref.name, field)
    if isinstance(status, FineTuneJobStatus) and status.adapter_uri == uri:
        return ResolvedModel(
            uri,
            adapter=True,
            base_model_uri=status.base_model_uri,
            adapter_target_modules=tuple(status.adapter_target_modules or ()),
        )
    return ResolvedModel(uri)


async def resolve_full_weights(ctx: Context, source: ModelSource, field_path: str) -> str:
    """A model source that must be full weights (a merge input, a base model to train)."""
    resolved = await resolve_model(ctx, source, field_path)
    if resolved.adapter:
        assert source.model_ref is not None
        raise FailedError(
            Reason.INVALID_REFERENCE,
            f"{field_path}.modelRef: FineTuneJob {source.model_ref.name!r} produces a LoRA "
            "adapter, not full weights; set spec.mergeAdapter: true on it, or use its base model",
        )
    return resolved.uri


async def config_map_key(ctx: Context, name: str, key: str | None, field_path: str) -> None:
    """A ConfigMap (and key) the spec names must exist before a GPU is spent on it; until it
    does the run waits, and its creation reconciles the run again."""
    cm = await ctx.kube.get("v1", "ConfigMap", ctx.owner.namespace, name)
    if cm is None:
        raise WaitingError(
            Reason.INPUT_NOT_FOUND,
            f"{field_path}.name: ConfigMap {name!r} does not exist in namespace "
            f"{ctx.owner.namespace}; create it (the run starts when it exists) or correct "
            f"{field_path}.name",
        )
    present = {*(cm.get("data") or {}), *(cm.get("binaryData") or {})}
    if key is not None and key not in present:
        raise WaitingError(
            Reason.INPUT_NOT_FOUND,
            f"{field_path}.key: ConfigMap {name!r} has no key {key!r} (it has: "
            f"{', '.join(sorted(present)) or 'none'}); add the key or correct {field_path}.key",
        )


# -- the controller of one kind --------------------------------------------------------------

SpecT = TypeVar("SpecT", bound=ApiModel)
InputsT = TypeVar("InputsT")


class Controller(ABC, Generic[SpecT]):
    """What the engine needs of a kind: what its spec names, and one reconcile."""

    kind: ClassVar[AnyKind]

    def references(self, spec: SpecT) -> list[Reference]:
        """What the spec names; a change to any of them reconciles the run."""
        return []

    @abstractmethod
    async def reconcile(self, ctx: Context) -> Result:
        """The status the run should have now; never waits."""


class RunController(Controller[SpecT], Generic[SpecT, InputsT]):
    """A kind of one workload Job, reconciled by the shared flow. Subclasses say how to
    resolve the inputs, which children to build from them and which status fields the
    workload's report gives."""

    role: ClassVar[str]  # the workload: names the Job, its ServiceAccount and its task

    async def reconcile(self, ctx: Context) -> Result:
        return await reconcile(self, ctx)

    @abstractmethod
    async def resolve(self, ctx: Context, spec: SpecT) -> InputsT:
        """The inputs, once all exist; WaitingError or FailedError naming the field otherwise."""

    def servers(self, ctx: Context, spec: SpecT, inputs: InputsT) -> list[ServedModel]:
        """Models to serve with vLLM while the Job runs (none by default)."""
        return []

    def serving(self, spec: SpecT) -> Serving | None:
        return None

    def workload_kind(self, spec: SpecT) -> WorkloadKind:
        """What runs the workload's pods: the last child build() makes."""
        return JOB

    @abstractmethod
    def build(
        self, ctx: Context, spec: SpecT, inputs: InputsT, served: list[ServedModel]
    ) -> list[dict[str, Any]]:
        """The workload's children in creation order, the Job last."""

    # The hooks below give the status fields they set as the kind's status type (the fields
    # they leave unset are not theirs).

    def recorded(self, ctx: Context, spec: SpecT, inputs: InputsT) -> RunStatus | None:
        """Status fields decided with the inputs, kept on the Job."""
        return None

    def fixed(self, ctx: Context, spec: SpecT) -> RunStatus | None:
        """Status fields that follow from the spec alone."""
        return None

    def from_report(
        self, ctx: Context, spec: SpecT, report: WorkloadReport | None, phase: Phase
    ) -> RunStatus | None:
        """Status fields from the workload's report while it runs and once it has
        succeeded."""
        return None


# -- the flow ----------------------------------------------------------------------------------


def timestamp(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def parse_report(text: str | None, source: str) -> WorkloadReport | None:
    """The workload's report (JSON, or a packed termination message), validated; FailedError
    naming its `source` when it is malformed."""
    if not text:
        return None
    try:
        if text.startswith(PACKED_REPORT_PREFIX):
            return unpack_report(text)
        return WorkloadReport.model_validate_json(text)
    except ValidationError as error:
        detail = describe_validation_error(error, "report")
    except ValueError as error:
        detail = str(error)
    raise FailedError(
        Reason.INVALID_REPORT, f"the workload's report ({source}) is malformed: {detail}"
    )


def live_report(ctx: Context, job: str) -> WorkloadReport | None:
    """The report of a Job that runs: the one its workload pushed last."""
    return ctx.children.pushed.get(job)


async def final_report(
    ctx: Context, job: str, pods: list[dict[str, Any]], selector: dict[str, str]
) -> WorkloadReport | None:
    """The report of a Job that completed: its pod's termination message, from the view or,
    where the view has not seen its pods end, from the API (each such pod by name: a list by
    label would make the API server filter every pod of the namespace). Where that is a
    summary, the last report pushed if it has what the summary left out; else the last one
    pushed (a pod removed before its message was read)."""
    ns = ctx.owner.namespace
    message = packed_report(pods)
    if message is None:
        if pods:
            lagging = [p["metadata"]["name"] for p in pods if not pod_ended(p)]
            read = [await ctx.kube.get("v1", "Pod", ns, name) for name in lagging]
            message = packed_report([p for p in read if p is not None])
        else:  # none seen at all (an operator down until they were removed)
            message = packed_report(await ctx.kube.list("v1", "Pod", ns, selector))
    pushed = ctx.children.pushed.get(job)
    if message is None:
        return pushed
    ended = parse_report(message, "its pod's termination message")
    left_out = (ended and ended.left_out) or []
    if left_out and pushed and set(left_out) <= pushed.to_api().keys():
        return pushed
    return ended


async def create_one(ctx: Context, manifest: dict[str, Any]) -> dict[str, Any]:
    try:
        created = await ctx.kube.create(manifest)
    except ChildConflictError as error:
        raise FailedError(Reason.CHILD_CONFLICT, str(error)) from None
    ctx.created(created)
    return created


async def create_all(ctx: Context, manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """Create the workload's children; the last (the Job) once the others exist, since its
    pod needs them. Returns the Job."""
    *first, job = manifests
    await asyncio.gather(*(create_one(ctx, m) for m in first))
    return await create_one(ctx, job)


async def start_servers(
    ctx: Context, served: list[ServedModel], serving: Serving
) -> tuple[list[str], datetime | None]:
    """Create the servers that do not exist yet (and only those); the ones not yet Available
    (with why, where their Deployment says: admission refusing their pods), and when the
    first was created. FailedError when one cannot start."""
    deployments = {
        d["metadata"]["name"]: d for d in ctx.children.of_kind("Deployment", **SERVER_SELECTOR)
    }
    services = {s["metadata"]["name"] for s in ctx.children.of_kind("Service", **SERVER_SELECTOR)}
    pending = []
    for planned in servers_for(served):
        deployment, service = server(ctx.owner, planned, serving, ctx.config)
        name = deployment["metadata"]["name"]
        if name not in deployments:
            deployments[name] = await create_one(ctx, deployment)
        if name not in services:
            await create_one(ctx, service)
        conditions = {
            c.get("type"): c
            for c in (deployments[name].get("status") or {}).get("conditions") or []
            if c.get("status") == "True"
        }
        if "Available" in conditions:
            continue
        failure = pod_failure(list(ctx.children.of_kind("Pod", **{SERVER_LABEL: name})))
        if failure is not None:
            raise FailedError(Reason.SERVER_FAILED, f"vLLM server {name}: {failure.message}")
        refused = conditions.get("ReplicaFailure")
        pending.append(
            f"{name} (its pods cannot be created: {refused.get('message', '')})"
            if refused
            else name
        )
    created = [timestamp(d["metadata"].get("creationTimestamp")) for d in deployments.values()]
    return pending, min((c for c in created if c), default=None)


def server_children(ctx: Context) -> list[str]:
    """The run's vLLM servers: those its status lists and those the watches have seen (a
    crash may have come between creating one and writing the status)."""
    seen = {d["metadata"]["name"] for d in ctx.children.of_kind("Deployment", **SERVER_SELECTOR)}
    if isinstance(ctx.current, ServingStatus):
        seen |= set(ctx.current.servers or [])
    return sorted(seen)


async def remove_servers(ctx: Context, names: list[str]) -> None:
    for name in names:
        await ctx.kube.delete("apps/v1", "Deployment", ctx.owner.namespace, name)
        await ctx.kube.delete("v1", "Service", ctx.owner.namespace, name)


def fields_set(partial: RunStatus | None) -> dict[str, Any]:
    """The fields a hook set, by name, to merge into the status being built."""
    return {} if partial is None else partial.model_dump(exclude_unset=True, exclude_none=True)


def status_of(
    ctx: Context,
    phase: Phase,
    reason: Reason,
    message: str,
    fields: dict[str, Any],
) -> RunStatus:
    """The kind's typed status: an unknown field name fails here, not silently at the API
    server's pruning."""
    kind = ctx.owner.kind
    status = kind.status.model_validate(
        {
            **fields,
            **phase_fields(
                ctx.current, phase, reason, message, ctx.generation, long_lived=kind.long_lived
            ),
        }
    )
    return status


async def run_workload(
    ctl: RunController[Any, Any], ctx: Context, spec: ApiModel
) -> tuple[Phase, Reason, str, dict[str, Any], float | None]:
    """Phase, reason, message, status fields and the next deadline of a run whose spec is
    valid; raises WaitingError / FailedError."""
    ns = ctx.owner.namespace
    job_name = child_name(ctx.owner.name, ctl.role)
    kind = ctl.workload_kind(spec)
    fields = fields_set(ctl.fixed(ctx, spec))
    job = ctx.children.get(kind.kind, job_name) if kind.watched else None
    if job is None and (ctx.current.job_name or not kind.watched):
        # The watches' view may lag (just after a start), and a JobSet or TrainJob is not in
        # it: ask before calling it deleted, or missing.
        job = await ctx.kube.get(kind.api_version, kind.kind, ns, job_name)
        if job is None and ctx.current.job_name:
            raise FailedError(
                Reason.JOB_DELETED,
                f"{kind.kind} {job_name} was deleted while running; create a new resource to "
                "run again",
            )
    if job is None and not kind.watched and await ctx.kube.request("GET", kind.discovery) is None:
        raise WaitingError(
            Reason.RUNTIME_NOT_INSTALLED,
            f"spec.runtime: the {kind.kind} kind ({kind.api_version}) is not installed in this "
            f"cluster; install {kind.installs}, or train with spec.runtime: Job in a new "
            f"{ctx.owner.kind.kind}",
            recheck=UNWATCHED_RECHECK_SECONDS,
        )
    if job is None:
        inputs = await ctl.resolve(ctx, spec)
        served = ctl.servers(ctx, spec, inputs)
        serving = ctl.serving(spec)
        if served and serving is not None:
            fields["servers"] = [server_name(ctx.owner, s.key) for s in servers_for(served)]
            pending, first = await start_servers(ctx, served, serving)
            started = ctx.current.start_time or first or datetime.now(UTC)
            fields["start_time"] = started
            if pending:
                waited = (datetime.now(UTC) - started).total_seconds()
                if waited > serving.startup_timeout_seconds:
                    raise FailedError(
                        Reason.SERVER_TIMEOUT,
                        f"vLLM servers not ready after {int(waited)} s: {', '.join(pending)}; "
                        "raise spec.serving.startupTimeoutSeconds or check their pods' logs",
                    )
                return (
                    Phase.RUNNING,
                    Reason.STARTING_SERVERS,
                    f"waiting for vLLM servers to become ready: {', '.join(pending)}",
                    fields,
                    serving.startup_timeout_seconds - waited + 1,
                )
        children = ctl.build(ctx, spec, inputs, served)
        recorded = ctl.recorded(ctx, spec, inputs)
        children[-1]["metadata"].setdefault("annotations", {})[RECORDED_ANNOTATION] = json.dumps(
            {}
            if recorded is None
            else recorded.model_dump(by_alias=True, exclude_unset=True, mode="json"),
            sort_keys=True,
        )
        job = await create_all(ctx, children)
    elif ctl.serving(spec) is not None:
        # Level-triggered: the servers are what exists (a crash may have come before the
        # status that listed them was written).
        fields["servers"] = server_children(ctx) or None
    kept_on_job = ctx.owner.kind.status.model_validate(
        json.loads((job["metadata"].get("annotations") or {}).get(RECORDED_ANNOTATION) or "{}")
    )
    fields.update(fields_set(kept_on_job))
    fields["job_name"] = job_name
    fields["start_time"] = (
        ctx.current.start_time
        or fields.get("start_time")
        or timestamp(job["metadata"].get("creationTimestamp"))
    )
    pods = list(ctx.children.of_kind("Pod", **{kind.pod_label: job_name}))
    outcome = job_outcome(job, pods, ctx.children.mount_failures, kind)
    if outcome.phase == Phase.FAILED:
        # A Job that cannot pull its image would hold its GPUs forever: remove it.
        if outcome.reason == Reason.IMAGE_PULL_FAILED:
            await ctx.kube.delete(kind.api_version, kind.kind, ns, job_name)
        raise FailedError(outcome.reason, outcome.message)
    if outcome.phase in (Phase.RUNNING, Phase.SUCCEEDED):
        if outcome.phase == Phase.SUCCEEDED:
            report = await final_report(ctx, job_name, pods, {kind.pod_label: job_name})
        else:
            report = live_report(ctx, job_name)
        fields.update(fields_set(ctl.from_report(ctx, spec, report, outcome.phase)))
    done = outcome.phase in (Phase.SUCCEEDED, Phase.FAILED)
    poll = None if kind.watched or done else UNWATCHED_RECHECK_SECONDS
    return outcome.phase, outcome.reason, outcome.message, fields, poll


async def reconcile(ctl: RunController[Any, Any], ctx: Context) -> Result:
    """One reconcile of one run: the status it should have now. What this reconcile does not
    derive (a fine-tune's last progress while its pod is re-queued) is kept from the current
    status, so an unchanged run compares equal and is not written again; the engine writes
    the difference, which removes what the new status no longer has."""
    kept = ctx.current.model_dump(exclude_none=True, exclude={"phase", "conditions"})
    try:
        spec = ctl.kind.spec.model_validate(ctx.body.get("spec") or {})
    except ValidationError as error:
        message = describe_validation_error(error)
        return Result(status_of(ctx, Phase.FAILED, Reason.INVALID_SPEC, message, kept))
    try:
        phase, reason, message, fields, requeue = await run_workload(ctl, ctx, spec)
    except WaitingError as waiting:
        # A run waiting on a pod's Secret has started: what it recorded stays.
        status = status_of(ctx, Phase.WAITING, waiting.reason, waiting.message, kept)
        return Result(status, waiting.recheck)
    except FailedError as failed:
        phase, reason, message, requeue = Phase.FAILED, failed.reason, failed.message, None
        fields = {"servers": server_children(ctx) or None}
    fields = {**kept, **{k: v for k, v in fields.items() if v is not None}}
    if phase in (Phase.SUCCEEDED, Phase.FAILED):
        # Before the terminal status is written: a crash in between leaves no server behind.
        await remove_servers(ctx, server_children(ctx))
    return Result(status_of(ctx, phase, reason, message, fields), requeue)
