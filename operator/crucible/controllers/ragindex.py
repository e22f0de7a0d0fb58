"""RagIndex: run the indexing Job and report what it indexed."""

from __future__ import annotations

from typing import Any

from crucible.api.common import Phase, Reason
from crucible.api.contract import WorkloadReport
from crucible.api.kinds import RAG_INDEX
from crucible.api.ragindex import RagIndexSpec, RagIndexStatus
from crucible.controllers.lifecycle import (
    Context,
    FailedError,
    Reference,
    RunController,
    config_map_key,
)
from crucible.controllers.registry import register
from crucible.resources import ragindex
from crucible.resources.serving import ServedModel
from crucible.resources.status import now


class RagIndexController(RunController[RagIndexSpec, None]):
    kind = RAG_INDEX
    role = ragindex.ROLE

    def references(self, spec: RagIndexSpec) -> list[Reference]:
        source = spec.source.config_map
        return [Reference("ConfigMap", source.name)] if source is not None else []

    async def resolve(self, ctx: Context, spec: RagIndexSpec) -> None:
        if spec.source.config_map is not None:
            name = spec.source.config_map.name
            await config_map_key(ctx, name, None, "spec.source.configMap")

    def build(
        self, ctx: Context, spec: RagIndexSpec, inputs: None, served: list[ServedModel]
    ) -> list[dict[str, Any]]:
        return ragindex.build(ctx.owner, spec, ctx.config)

    def fixed(self, ctx: Context, spec: RagIndexSpec) -> RagIndexStatus:
        return RagIndexStatus(table=spec.database.table)

    def from_report(
        self, ctx: Context, spec: RagIndexSpec, report: WorkloadReport | None, phase: Phase
    ) -> RagIndexStatus | None:
        if phase != Phase.SUCCEEDED:
            return None
        if report is None or report.chunks is None:
            raise FailedError(
                Reason.MISSING_REPORT,
                "the rag Job succeeded but reported no chunk counts (in its pod's "
                "termination message or a push to the report endpoint)",
            )
        return RagIndexStatus(
            documents=report.documents,
            chunks=report.chunks,
            content_hash=report.content_hash,
            last_indexed_time=now(),
        )


register(RagIndexController())
