"""Runs that need models served while their Job works (EvalRun, SyntheticDataset): resolve
the models, start their vLLM servers, wait until they are ready, run the Job against them and
remove the servers once the run has ended, whichever way."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from crucible.api.common import InferenceTarget, ModelRefKind, ModelSource, Phase, Serving
from crucible.controllers.lifecycle import (
    Context,
    FailedError,
    StatusFromReport,
    ensure_all,
    resolve_model,
    run_job,
)
from crucible.resources.common import child_name
from crucible.resources.jobs import pod_failure
from crucible.resources.serving import (
    SERVER_LABEL,
    ServedModel,
    ServedTarget,
    server,
    server_name,
)
from crucible.resources.status import now, phase_status


def serve(ctx: Context, target: InferenceTarget, field: str, name: str) -> ServedModel:
    """The model a uri or modelRef target stands for; an adapter is served on its base."""
    source = ModelSource(uri=target.uri, model_ref=target.model_ref)
    status = resolve_model(ctx, source, field)
    ref = target.model_ref
    adapter = status.get("adapterUri")
    if (
        ref is not None
        and ref.kind == ModelRefKind.FINE_TUNE_JOB
        and adapter == status.get("outputUri")
    ):
        if not status.get("baseModelUri"):
            raise FailedError(
                "InvalidReference",
                f"{field}.modelRef: FineTuneJob {ref.name!r} reports no base model "
                "to serve its adapter on",
            )
        return ServedModel(name, status["baseModelUri"], adapter)
    return ServedModel(name, status["outputUri"])


def servers_pending(ctx: Context, serving: Serving, names: list[str]) -> list[str]:
    """Servers not yet Available; FailedError when one cannot start."""
    pending = []
    for name in names:
        deployment = ctx.kube.get("apps/v1", "Deployment", ctx.owner.namespace, name) or {}
        available = any(
            c.get("type") == "Available" and c.get("status") == "True"
            for c in (deployment.get("status") or {}).get("conditions") or []
        )
        if available:
            continue
        pods = ctx.kube.list("v1", "Pod", ctx.owner.namespace, {SERVER_LABEL: name})
        failure = pod_failure(pods)
        if failure is not None:
            raise FailedError("ServerFailed", f"vLLM server {name}: {failure.message}")
        pending.append(name)
    started = ctx.status.get("startTime")
    if pending and started:
        waited = (datetime.now(UTC) - datetime.fromisoformat(started)).total_seconds()
        if waited > serving.startup_timeout_seconds:
            raise FailedError(
                "ServerTimeout",
                f"vLLM servers not ready after {int(waited)} s: {', '.join(pending)}; raise "
                "spec.serving.startupTimeoutSeconds or check their pods' logs",
            )
    return pending


def remove_servers(ctx: Context, names: list[str]) -> None:
    for name in names:
        ctx.kube.delete("apps/v1", "Deployment", ctx.owner.namespace, name)
        ctx.kube.delete("v1", "Service", ctx.owner.namespace, name)


def run_with_servers(
    ctx: Context,
    role: str,
    *,
    targets: list[ServedTarget],
    serving: Serving,
    build: Callable[[list[ServedModel]], list[dict[str, Any]]],
    on_success: StatusFromReport,
    on_progress: StatusFromReport | None = None,
    dependencies: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Serve the targets, then run the Job that `build` renders against them; the servers go
    when the run ends. `dependencies` checks what else must be ready before servers start."""
    names = [server_name(ctx.owner, t.name) for t in targets]
    job = ctx.kube.get("batch/v1", "Job", ctx.owner.namespace, child_name(ctx.owner.name, role))
    try:
        if job is None:
            served = [serve(ctx, t.target, t.field, t.name) for t in targets]
            dependencies()
            for model in served:
                ensure_all(ctx, server(ctx.owner, model, serving, ctx.config))
            pending = servers_pending(ctx, serving, names)
            if pending:
                return {
                    "servers": names or None,
                    **({} if ctx.status.get("startTime") else {"startTime": now()}),
                    **phase_status(
                        ctx.status,
                        Phase.RUNNING,
                        "StartingServers",
                        f"waiting for vLLM servers to become ready: {', '.join(pending)}",
                        ctx.generation,
                    ),
                }
            render: Callable[[], list[dict[str, Any]]] = lambda: build(served)  # noqa: E731
        else:
            render = list
        patch = run_job(
            ctx, role, render, on_success=on_success, started={"servers": names or None}
        )
    except FailedError:
        remove_servers(ctx, names)
        raise
    if patch.get("phase") == Phase.SUCCEEDED:
        remove_servers(ctx, names)
    return patch
