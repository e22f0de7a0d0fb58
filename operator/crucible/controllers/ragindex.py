"""RagIndex: run the indexing Job and report what it indexed."""

from __future__ import annotations

from typing import Any

from crucible.api.base import ApiModel
from crucible.api.contract import WorkloadReport
from crucible.api.kinds import RAG_INDEX
from crucible.api.ragindex import RagIndexSpec
from crucible.controllers.lifecycle import Context, FailedError, register, run_job
from crucible.resources import ragindex
from crucible.resources.common import report_name
from crucible.resources.status import now

KIND = RAG_INDEX


def reconcile(ctx: Context, spec: ApiModel) -> dict[str, Any]:
    assert isinstance(spec, RagIndexSpec)

    def succeeded(report: WorkloadReport | None) -> dict[str, Any]:
        if report is None or report.chunks is None:
            raise FailedError(
                "MissingReport",
                f"the rag Job succeeded but reported no chunk counts in "
                f"ConfigMap {report_name(ctx.owner)}",
            )
        return {
            "documents": report.documents,
            "chunks": report.chunks,
            "contentHash": report.content_hash,
            "table": spec.database.table,
            "lastIndexedTime": now(),
        }

    return run_job(
        ctx,
        ragindex.ROLE,
        lambda: ragindex.build(ctx.owner, spec, ctx.config),
        on_success=succeeded,
        started={"table": spec.database.table},
    )


register(KIND, reconcile)
