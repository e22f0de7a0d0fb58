"""FineTuneJob: resolve the base model, check the dataset, run the training Job."""

from __future__ import annotations

from typing import Any

from crucible.api.base import ApiModel
from crucible.api.contract import WorkloadReport
from crucible.api.finetunejob import FineTuneJobSpec
from crucible.api.kinds import FINE_TUNE_JOB
from crucible.controllers.lifecycle import (
    Context,
    FailedError,
    register,
    resolve_full_weights,
    run_job,
)
from crucible.resources import finetunejob

KIND = FINE_TUNE_JOB


def check_config_map_key(ctx: Context, name: str, key: str, field: str) -> None:
    """A ConfigMap-sourced file must exist before a GPU is spent on it."""
    cm = ctx.kube.get("v1", "ConfigMap", ctx.owner.namespace, name)
    if cm is None:
        raise FailedError(
            "InvalidReference",
            f"{field}.name: ConfigMap {name!r} does not exist in namespace {ctx.owner.namespace}",
        )
    if key not in (cm.get("data") or {}) and key not in (cm.get("binaryData") or {}):
        keys = ", ".join(sorted({*(cm.get("data") or {}), *(cm.get("binaryData") or {})}))
        raise FailedError(
            "InvalidReference",
            f"{field}.key: ConfigMap {name!r} has no key {key!r} (it has: {keys or 'none'})",
        )


def progress(report: WorkloadReport | None) -> dict[str, Any]:
    return {"progress": report.progress.to_api()} if report and report.progress else {}


def reconcile(ctx: Context, spec: ApiModel) -> dict[str, Any]:
    assert isinstance(spec, FineTuneJobSpec)
    outputs = finetunejob.outputs(ctx.owner, spec, ctx.config)
    base: dict[str, str] = {}

    def build() -> list[dict[str, Any]]:
        base["baseModelUri"] = resolve_full_weights(ctx, spec.base_model, "spec.baseModel")
        if spec.dataset.config_map is not None:
            ref = spec.dataset.config_map
            check_config_map_key(ctx, ref.name, ref.key, "spec.dataset.configMap")
        return finetunejob.build(ctx.owner, spec, base["baseModelUri"], ctx.config)

    def succeeded(report: WorkloadReport | None) -> dict[str, Any]:
        return {**outputs, **progress(report)}

    return run_job(
        ctx, finetunejob.ROLE, build, on_success=succeeded, on_progress=progress, started=base
    )


register(KIND, reconcile)
