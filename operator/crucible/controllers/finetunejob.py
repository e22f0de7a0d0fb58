"""FineTuneJob: resolve the base model and the dataset, run the training Job."""

from __future__ import annotations

from typing import Any

from crucible.api.base import ApiModel
from crucible.api.common import DataSource, PvcPath
from crucible.api.contract import WorkloadReport
from crucible.api.finetunejob import FineTuneJobSpec
from crucible.api.kinds import FINE_TUNE_JOB, SYNTHETIC_DATASET
from crucible.api.syntheticdataset import SyntheticFormat
from crucible.controllers.lifecycle import (
    Context,
    FailedError,
    dependency,
    register,
    resolve_full_weights,
    run_job,
)
from crucible.resources import finetunejob
from crucible.resources.syntheticdataset import TRAIN_FILE

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


def synthetic_data(ctx: Context, spec: FineTuneJobSpec) -> DataSource:
    """The train split of the referenced SyntheticDataset, once it has succeeded."""
    assert spec.dataset.dataset_ref is not None
    field = "spec.dataset.datasetRef"
    name = spec.dataset.dataset_ref.name
    found = dependency(ctx, SYNTHETIC_DATASET, name, field)
    made = found["spec"].get("format", SyntheticFormat.CHAT)
    if made != spec.dataset.format:
        raise FailedError(
            "InvalidReference",
            f"{field}: SyntheticDataset {name!r} writes {made} rows but spec.dataset.format is "
            f"{spec.dataset.format}; set spec.dataset.format: {made} (chat trains with sft, "
            "preference with dpo) or reference another SyntheticDataset",
        )
    claim, _, path = found["status"]["outputUri"].removeprefix("pvc://").partition("/")
    return DataSource(pvc=PvcPath(claim_name=claim, path=f"{path.rstrip('/')}/{TRAIN_FILE}"))


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
        data = synthetic_data(ctx, spec) if spec.dataset.dataset_ref is not None else None
        return finetunejob.build(ctx.owner, spec, base["baseModelUri"], ctx.config, data)

    def succeeded(report: WorkloadReport | None) -> dict[str, Any]:
        return {**outputs, **progress(report)}

    return run_job(
        ctx, finetunejob.ROLE, build, on_success=succeeded, on_progress=progress, started=base
    )


register(KIND, reconcile)
