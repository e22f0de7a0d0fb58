"""EvalRun: serve the models with vLLM, run the eval Job against them, keep the summary,
remove the servers."""

from __future__ import annotations

from typing import Any

from crucible.api.base import ApiModel
from crucible.api.contract import WorkloadReport
from crucible.api.evalrun import EvalRunSpec
from crucible.api.kinds import EVAL_RUN, RAG_INDEX
from crucible.api.ragindex import RagIndexSpec
from crucible.controllers.lifecycle import Context, FailedError, dependency, register
from crucible.controllers.serving import run_with_servers, serve
from crucible.resources import evalrun
from crucible.resources.common import report_name
from crucible.resources.serving import ServedModel

KIND = EVAL_RUN


def served_models(ctx: Context, spec: EvalRunSpec) -> list[ServedModel]:
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
    names = [m.name for m in spec.models if m.endpoint is None]
    if spec.judge is not None and spec.judge.endpoint is None:
        names.append(evalrun.JUDGE)
    rag: list[evalrun.RagInputs | None] = []

    def resolve() -> list[ServedModel]:
        served = served_models(ctx, spec)
        rag.append(rag_inputs(ctx, spec))
        return served

    return run_with_servers(
        ctx,
        evalrun.ROLE,
        served_names=names,
        serving=spec.serving,
        resolve=resolve,
        build=lambda served: evalrun.eval_job(ctx.owner, spec, served, rag[0], ctx.config),
        on_success=lambda r: summary(ctx, r),
    )


register(KIND, reconcile)
