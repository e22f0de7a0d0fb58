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
from crucible.controllers.serving import run_with_servers
from crucible.resources import evalrun
from crucible.resources.common import report_name

KIND = EVAL_RUN


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
    rag: list[evalrun.RagInputs | None] = []
    return run_with_servers(
        ctx,
        evalrun.ROLE,
        targets=evalrun.served_targets(spec),
        serving=spec.serving,
        dependencies=lambda: rag.append(rag_inputs(ctx, spec)),
        build=lambda served: evalrun.eval_job(ctx.owner, spec, served, rag[0], ctx.config),
        on_success=lambda r: summary(ctx, r),
    )


register(KIND, reconcile)
