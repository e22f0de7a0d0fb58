"""SyntheticDataset: serve the teacher (and rejected model) when they are model sources, run
the generation Job against them, report the counts as they grow, remove the servers."""

from __future__ import annotations

from typing import Any

from crucible.api.common import Phase, Reason
from crucible.api.contract import WorkloadReport
from crucible.api.kinds import SYNTHETIC_DATASET
from crucible.api.syntheticdataset import SyntheticDatasetSpec, SyntheticDatasetStatus
from crucible.controllers.lifecycle import Context, FailedError, Reference, config_map_key
from crucible.controllers.registry import register
from crucible.controllers.serving import ServedInputs, ServingController
from crucible.resources import syntheticdataset
from crucible.resources.common import store_uri
from crucible.resources.serving import ServedModel, ServedTarget


class SyntheticDatasetController(ServingController[SyntheticDatasetSpec, ServedInputs]):
    kind = SYNTHETIC_DATASET
    role = syntheticdataset.ROLE

    def targets(self, spec: SyntheticDatasetSpec) -> list[ServedTarget]:
        return syntheticdataset.served_targets(spec)

    def references(self, spec: SyntheticDatasetSpec) -> list[Reference]:
        refs = super().references(spec)
        if spec.source.config_map is not None:
            refs.append(Reference("ConfigMap", spec.source.config_map.name))
        return refs

    async def resolve(self, ctx: Context, spec: SyntheticDatasetSpec) -> ServedInputs:
        served = await self.served(ctx, spec)
        if spec.source.config_map is not None:
            name = spec.source.config_map.name
            await config_map_key(ctx, name, None, "spec.source.configMap")
        return ServedInputs(served)

    def build(
        self,
        ctx: Context,
        spec: SyntheticDatasetSpec,
        inputs: ServedInputs,
        served: list[ServedModel],
    ) -> list[dict[str, Any]]:
        return syntheticdataset.build(ctx.owner, spec, served, ctx.config)

    def from_report(
        self,
        ctx: Context,
        spec: SyntheticDatasetSpec,
        report: WorkloadReport | None,
        phase: Phase,
    ) -> SyntheticDatasetStatus | None:
        if phase != Phase.SUCCEEDED:  # progress while the teacher writes
            if report is None:
                return None
            return SyntheticDatasetStatus(
                documents=report.documents, chunks=report.chunks, pairs=report.pairs
            )
        if report is None or report.pairs is None:
            raise FailedError(
                Reason.MISSING_REPORT,
                "the synth Job succeeded but reported no pair counts (in its pod's "
                "termination message or a push to the report endpoint)",
            )
        return SyntheticDatasetStatus(
            documents=report.documents,
            chunks=report.chunks,
            pairs=report.pairs,
            content_hash=report.content_hash,
            reused_from=report.reused_from,
            output_uri=store_uri(ctx.config, ctx.owner),
        )


register(SyntheticDatasetController())
