"""EvalRun: serve the models with vLLM, run the eval Job against them, keep the summary,
remove the servers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from crucible.api.base import ApiModel
from crucible.api.common import ModelRefKind, ModelSource, Phase
from crucible.api.contract import WorkloadReport
from crucible.api.evalrun import EvalRunSpec, EvalTarget
from crucible.api.kinds import EVAL_RUN, RAG_INDEX
from crucible.api.ragindex import RagIndexSpec
from crucible.controllers.lifecycle import (
    Context,
    FailedError,
    dependency,
    ensure_all,
    register,
    resolve_model,
    run_job,
)
from crucible.resources import evalrun
from crucible.resources.common import child_name, report_name
from crucible.resources.jobs import pod_failure
from crucible.resources.status import now, phase_status

KIND = EVAL_RUN


def serve(ctx: Context, target: EvalTarget, field: str, name: str) -> evalrun.ServedModel:
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
        return evalrun.ServedModel(name, status["baseModelUri"], adapter)
    return evalrun.ServedModel(name, status["outputUri"])


def served_models(ctx: Context, spec: EvalRunSpec) -> list[evalrun.ServedModel]:
    served = [
        serve(ctx, m, f"spec.models[{i}]", m.name)
        for i, m in enumerate(spec.models)
        if m.endpoint is None
    ]
    if spec.judge is not None and spec.judge.endpoint is None:
        served.append(serve(ctx, spec.judge, "spec.judge", evalrun.JUDGE))
    return served


def rag_inputs(ctx: Context, spec: EvalRunSpec) -> evalrun.RagInputs | None:
    if spec.rag is None:
        return None
    index = dependency(ctx, RAG_INDEX, spec.rag.index_name, "spec.rag.indexName")
    index_spec = RagIndexSpec.model_validate(index["spec"])
    return evalrun.RagInputs(
        table=index_spec.database.table,
        embedding=index_spec.embedding,
        connection=index_spec.database.connection_secret_ref,
    )


def server_names(ctx: Context, spec: EvalRunSpec) -> list[str]:
    names = [m.name for m in spec.models if m.endpoint is None]
    if spec.judge is not None and spec.judge.endpoint is None:
        names.append(evalrun.JUDGE)
    return [evalrun.server_name(ctx.owner, n) for n in names]


def servers_pending(ctx: Context, spec: EvalRunSpec, names: list[str]) -> list[str]:
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
        pods = ctx.kube.list("v1", "Pod", ctx.owner.namespace, {"crucible.dev/server": name})
        failure = pod_failure(pods)
        if failure is not None:
            raise FailedError("ServerFailed", f"vLLM server {name}: {failure.message}")
        pending.append(name)
    started = ctx.status.get("startTime")
    if pending and started:
        waited = (datetime.now(UTC) - datetime.fromisoformat(started)).total_seconds()
        if waited > spec.serving.startup_timeout_seconds:
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


def summary(ctx: Context, report: WorkloadReport | None) -> dict[str, Any]:
    if report is None or not report.results:
        raise FailedError(
            "MissingReport",
            f"the eval Job succeeded but wrote no results to ConfigMap {report_name(ctx.owner)}",
        )
    best = max(report.results, key=lambda r: r.accuracy_mean)
    return {
        "results": [r.to_api() for r in report.results],
        "judgeRatings": [r.to_api() for r in report.judge_ratings or []] or None,
        "bestModel": best.model + (" (RAG)" if best.rag else ""),
        "bestAccuracy": round(best.accuracy_mean, 4),
        "resultsUri": report.results_uri,
        "outputUri": report.results_uri,
    }


def reconcile(ctx: Context, spec: ApiModel) -> dict[str, Any]:
    assert isinstance(spec, EvalRunSpec)
    names = server_names(ctx, spec)
    job = ctx.kube.get(
        "batch/v1", "Job", ctx.owner.namespace, child_name(ctx.owner.name, evalrun.ROLE)
    )
    try:
        if job is None:
            served = served_models(ctx, spec)
            rag = rag_inputs(ctx, spec)
            for model in served:
                ensure_all(ctx, evalrun.server(ctx.owner, model, spec.serving, ctx.config))
            started = {
                "servers": names or None,
                **({} if ctx.status.get("startTime") else {"startTime": now()}),
            }
            pending = servers_pending(ctx, spec, names)
            if pending:
                return {
                    **started,
                    **phase_status(
                        ctx.status,
                        Phase.RUNNING,
                        "StartingServers",
                        f"waiting for vLLM servers to become ready: {', '.join(pending)}",
                        ctx.generation,
                    ),
                }
            build = lambda: evalrun.eval_job(ctx.owner, spec, served, rag, ctx.config)  # noqa: E731
        else:
            build = list
        patch = run_job(
            ctx,
            evalrun.ROLE,
            build,
            on_success=lambda r: summary(ctx, r),
            started={"servers": names or None},
        )
    except FailedError:
        remove_servers(ctx, names)
        raise
    if patch.get("phase") == Phase.SUCCEEDED:
        remove_servers(ctx, names)
    return patch


register(KIND, reconcile)
