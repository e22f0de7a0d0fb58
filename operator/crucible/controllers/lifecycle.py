"""The reconcile loop every kind shares.

Each resource gets a kopf daemon that reconciles it every CRUCIBLE_RECONCILE_INTERVAL until it
has succeeded or failed. A step reads the world (the resource, its children, its
dependencies) and writes status; children have deterministic names and are adopted when they
exist, so an operator restarted at any moment picks up where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from crucible.api import GROUP, VERSION, Kind
from crucible.api.base import ApiModel
from crucible.api.common import TERMINAL_PHASES, ModelRefKind, ModelSource, Phase
from crucible.api.contract import REPORT_KEY, WorkloadReport
from crucible.api.kinds import FINE_TUNE_JOB, KINDS_BY_NAME
from crucible.config import OperatorConfig
from crucible.controllers.kube import ChildConflictError, Kube
from crucible.metrics import JOB_SECONDS, RECONCILE_ERRORS, RECONCILE_SECONDS, RECONCILES, RUNS
from crucible.resources.common import Owner, child_name, report_name
from crucible.resources.jobs import job_outcome
from crucible.resources.status import describe_validation_error, now, phase_status


class WaitingError(Exception):
    """A dependency is not ready yet."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class FailedError(Exception):
    """The run cannot succeed; the message says why and what to change."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class Context:
    kube: Kube
    config: OperatorConfig
    owner: Owner
    body: dict[str, Any]

    @property
    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.body.get("status") or {}
        return status

    @property
    def generation(self) -> int:
        generation: int = self.body["metadata"].get("generation", 1)
        return generation


# -- dependencies -------------------------------------------------------------------------


def dependency(ctx: Context, kind: Kind, name: str, field: str) -> dict[str, Any]:
    """A referenced resource that has succeeded; otherwise wait or fail, naming the field."""
    ns = ctx.owner.namespace
    found = ctx.kube.get_run(kind, ns, name)
    if found is None:
        raise WaitingError(
            "DependencyNotFound",
            f"{field}: {kind.kind} {name!r} does not exist in namespace {ns}; create it or "
            f"correct {field}",
        )
    status = found.get("status") or {}
    phase = status.get("phase")
    if phase == Phase.FAILED:
        why = next(
            (c.get("message") for c in status.get("conditions") or [] if c.get("type") == "Ready"),
            "",
        )
        raise FailedError(
            "DependencyFailed",
            f"{field}: {kind.kind} {name!r} failed" + (f": {why}" if why else ""),
        )
    if phase != Phase.SUCCEEDED:
        raise WaitingError(
            "WaitingForDependency",
            f"{field}: waiting for {kind.kind} {name!r} to succeed (now {phase or 'new'})",
        )
    return found


def resolve_model(ctx: Context, source: ModelSource, field: str) -> dict[str, Any]:
    """The status of a modelRef's target, or {"outputUri": uri} for a plain uri."""
    if source.uri is not None:
        return {"outputUri": source.uri}
    assert source.model_ref is not None
    ref = source.model_ref
    target = dependency(ctx, KINDS_BY_NAME[ref.kind], ref.name, f"{field}.modelRef")
    status: dict[str, Any] = target["status"]
    if not status.get("outputUri"):
        raise FailedError(
            "DependencyFailed", f"{field}.modelRef: {ref.kind} {ref.name!r} reported no outputUri"
        )
    return status


def resolve_full_weights(ctx: Context, source: ModelSource, field: str) -> str:
    """A model source that must be full weights (a merge input, a base model to train)."""
    status = resolve_model(ctx, source, field)
    ref = source.model_ref
    if ref is not None and ref.kind == ModelRefKind.FINE_TUNE_JOB:
        target = ctx.kube.get_run(FINE_TUNE_JOB, ctx.owner.namespace, ref.name) or {}
        if not target.get("spec", {}).get("mergeAdapter"):
            raise FailedError(
                "InvalidReference",
                f"{field}.modelRef: FineTuneJob {ref.name!r} produces a LoRA adapter, not full "
                "weights; set spec.mergeAdapter: true on it, or use its base model",
            )
    uri: str = status["outputUri"]
    return uri


# -- children -----------------------------------------------------------------------------


def ensure_all(ctx: Context, manifests: list[dict[str, Any]]) -> None:
    for manifest in manifests:
        try:
            ctx.kube.ensure(manifest)
        except ChildConflictError as error:
            raise FailedError("ChildConflict", str(error)) from None


def pods_of(ctx: Context, job_name: str) -> list[dict[str, Any]]:
    return ctx.kube.list("v1", "Pod", ctx.owner.namespace, {"job-name": job_name})


def read_report(ctx: Context) -> WorkloadReport | None:
    """The workload's report, validated; FailedError when it is malformed."""
    cm = ctx.kube.get("v1", "ConfigMap", ctx.owner.namespace, report_name(ctx.owner))
    text = ((cm or {}).get("data") or {}).get(REPORT_KEY)
    if not text:
        return None
    try:
        return WorkloadReport.model_validate_json(text)
    except ValidationError as error:
        raise FailedError(
            "InvalidReport",
            f"the workload's report ({report_name(ctx.owner)}/{REPORT_KEY}) is malformed: "
            + describe_validation_error(error, "report"),
        ) from None


JobBuilder = Callable[[], list[dict[str, Any]]]
StatusFromReport = Callable[[WorkloadReport | None], dict[str, Any]]


def run_job(
    ctx: Context,
    role: str,
    build: JobBuilder,
    *,
    on_success: StatusFromReport,
    on_progress: StatusFromReport | None = None,
    started: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Start the workload Job if it does not exist (`build` resolves dependencies and renders
    the children), then report its progress; returns the status patch."""
    job_name = child_name(ctx.owner.name, role)
    job = ctx.kube.get("batch/v1", "Job", ctx.owner.namespace, job_name)
    if job is None:
        if ctx.status.get("jobName"):
            raise FailedError(
                "JobDeleted", f"Job {job_name} was deleted while running; create a new resource"
            )
        ensure_all(ctx, build())
        job = ctx.kube.get("batch/v1", "Job", ctx.owner.namespace, job_name)
        assert job is not None
    outcome = job_outcome(job, pods_of(ctx, job_name))
    patch = {"jobName": job_name, **(started or {})}
    if not ctx.status.get("startTime"):
        patch["startTime"] = now()
    if outcome.phase == Phase.SUCCEEDED:
        patch.update(on_success(read_report(ctx)))
    elif outcome.phase == Phase.FAILED:
        # A Job that cannot pull its image would hold its GPUs forever: remove it.
        if outcome.reason == "ImagePullFailed":
            ctx.kube.delete("batch/v1", "Job", ctx.owner.namespace, job_name)
        raise FailedError(outcome.reason, outcome.message)
    elif on_progress is not None:
        patch.update(on_progress(read_report(ctx)))
    return {
        **patch,
        **phase_status(ctx.status, outcome.phase, outcome.reason, outcome.message, ctx.generation),
    }


# -- the loop ------------------------------------------------------------------------------

Step = Callable[[Context, ApiModel], dict[str, Any]]


def step(
    kind: Kind, reconcile: Step, kube: Kube, config: OperatorConfig, body: dict[str, Any]
) -> dict[str, Any]:
    """One reconcile of one resource: the status patch to write."""
    ctx = Context(kube, config, Owner.of(kind, body), body)
    try:
        spec = kind.spec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        return phase_status(
            ctx.status,
            Phase.FAILED,
            "InvalidSpec",
            describe_validation_error(error),
            ctx.generation,
        )
    try:
        return reconcile(ctx, spec)
    except WaitingError as waiting:
        return phase_status(
            ctx.status, Phase.WAITING, waiting.reason, waiting.message, ctx.generation
        )
    except FailedError as failed:
        return phase_status(ctx.status, Phase.FAILED, failed.reason, failed.message, ctx.generation)


def changed(current: Mapping[str, Any], patch: Mapping[str, Any]) -> bool:
    """Whether writing `patch` would change the status (conditions compared without times)."""

    def strip(conditions: Any) -> Any:
        return [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in conditions or []]

    for key, value in patch.items():
        if key == "conditions":
            if strip(value) != strip(current.get(key)):
                return True
        elif key == "completionTime":
            if not current.get(key):
                return True
        elif current.get(key) != value:
            return True
    return False


def record_run(
    kind: Kind, body: Mapping[str, Any], before: Mapping[str, Any], after: Mapping[str, Any]
) -> None:
    """Metrics of one step: the status seen, and the run's duration when it just ended."""
    RUNS.observe(kind.kind, body, after)
    RECONCILES.labels(kind.kind, after.get("phase") or "Pending").inc()
    ended = after.get("phase") in TERMINAL_PHASES and before.get("phase") not in TERMINAL_PHASES
    if ended and after.get("startTime"):
        seconds = (datetime.now(UTC) - datetime.fromisoformat(after["startTime"])).total_seconds()
        JOB_SECONDS.labels(kind.kind, after["phase"]).observe(max(seconds, 0.0))


def register(kind: Kind, reconcile: Step) -> None:
    """Run `reconcile` for every resource of `kind` until it is done."""

    @kopf.daemon(GROUP, VERSION, kind.plural, id="reconcile", cancellation_timeout=10.0)
    def reconcile_daemon(
        *,
        stopped: kopf.DaemonStopped,
        name: str,
        namespace: str | None,
        memo: Any,
        logger: kopf.Logger,
        **_: Any,
    ) -> None:
        assert namespace is not None  # every kind is namespaced
        kube: Kube = memo.kube
        config: OperatorConfig = memo.config
        while not stopped:
            body = kube.get_run(kind, namespace, name)
            if body is None:
                return
            status = body.get("status") or {}
            if status.get("phase") in TERMINAL_PHASES:
                RUNS.observe(kind.kind, body, status)  # rebuilds the series after a restart
                return
            try:
                with RECONCILE_SECONDS.labels(kind.kind).time():
                    patch = step(kind, reconcile, kube, config, body)
                    if changed(status, patch):
                        kube.patch_status(kind, namespace, name, patch)
            except Exception:  # an API hiccup or a bug: count it, log it, try again
                RECONCILE_ERRORS.labels(kind.kind).inc()
                logger.exception(
                    "reconcile of %s %s/%s failed; retrying", kind.kind, namespace, name
                )
                stopped.wait(config.reconcile_interval)
                continue
            record_run(kind, body, status, {**status, **patch})
            if patch.get("phase") != status.get("phase"):
                ready = patch["conditions"][-1]
                logger.info("%s %s: %s", kind.kind, patch.get("phase"), ready["message"])
                warning = patch.get("phase") == Phase.FAILED
                kube.post_event(
                    body, "Warning" if warning else "Normal", ready["reason"], ready["message"]
                )
            if patch.get("phase") in TERMINAL_PHASES:
                return
            stopped.wait(config.reconcile_interval)

    # A raw watch event, not on.delete: kopf calls delete handlers only while its finalizer
    # holds the object, and that is gone once the daemon has finished.
    @kopf.on.event(GROUP, VERSION, kind.plural, id="forget")
    def forget(event: kopf.RawEvent, name: str, namespace: str | None, **_: Any) -> None:
        if event["type"] == "DELETED":
            RUNS.forget(kind.kind, namespace or "", name)
