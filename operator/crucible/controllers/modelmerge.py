"""ModelMerge: resolve the input models, then run the merge Job."""

from __future__ import annotations

from typing import Any

from crucible.api.base import ApiModel
from crucible.api.kinds import MODEL_MERGE
from crucible.api.modelmerge import ModelMergeSpec
from crucible.controllers.lifecycle import Context, register, resolve_full_weights, run_job
from crucible.resources import modelmerge
from crucible.resources.common import child_name, store_uri

KIND = MODEL_MERGE


def reconcile(ctx: Context, spec: ApiModel) -> dict[str, Any]:
    assert isinstance(spec, ModelMergeSpec)

    def build() -> list[dict[str, Any]]:
        inputs = modelmerge.MergeInputs(
            models=[
                resolve_full_weights(ctx, m, f"spec.models[{i}]") for i, m in enumerate(spec.models)
            ],
            base_model=resolve_full_weights(ctx, spec.base_model, "spec.baseModel")
            if spec.base_model
            else None,
        )
        return modelmerge.build(ctx.owner, spec, inputs, ctx.config)

    return run_job(
        ctx,
        modelmerge.ROLE,
        build,
        on_success=lambda _: {"outputUri": store_uri(ctx.config, ctx.owner)},
        started={"configMapName": child_name(ctx.owner.name, modelmerge.ROLE)},
    )


register(KIND, reconcile)
