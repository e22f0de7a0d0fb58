"""SyntheticDataset: serve the teacher (and rejected model) when they are model sources, run
the generation Job against them, report the counts, remove the servers."""

from __future__ import annotations

from typing import Any

from crucible.api.base import ApiModel
from crucible.api.contract import WorkloadReport
from crucible.api.kinds import SYNTHETIC_DATASET
from crucible.api.syntheticdataset import SyntheticDatasetSpec
from crucible.controllers.lifecycle import Context, FailedError, register
from crucible.controllers.serving import run_with_servers
from crucible.resources import syntheticdataset
from crucible.resources.common import report_name, store_uri

KIND = SYNTHETIC_DATASET


def summary(ctx: Context, report: WorkloadReport | None) -> dict[str, Any]:
    if report is None or report.pairs is None:
        raise FailedError(
            "MissingReport",
            f"the synth Job succeeded but reported no pair counts in "
            f"ConfigMap {report_name(ctx.owner)}",
        )
    return {
        "documents": report.documents,
        "chunks": report.chunks,
        "pairs": report.pairs.to_api(),
        "contentHash": report.content_hash,
        "reusedFrom": report.reused_from,
        "outputUri": store_uri(ctx.config, ctx.owner),
    }


def progress(report: WorkloadReport | None) -> dict[str, Any]:
    if report is None:
        return {}
    counts = {"chunks": report.chunks, "pairs": report.pairs.to_api() if report.pairs else None}
    return {k: v for k, v in counts.items() if v is not None}


def reconcile(ctx: Context, spec: ApiModel) -> dict[str, Any]:
    assert isinstance(spec, SyntheticDatasetSpec)
    return run_with_servers(
        ctx,
        syntheticdataset.ROLE,
        targets=syntheticdataset.served_targets(spec),
        serving=spec.serving,
        build=lambda served: syntheticdataset.build(ctx.owner, spec, served, ctx.config),
        on_success=lambda r: summary(ctx, r),
        on_progress=progress,
    )


register(KIND, reconcile)
