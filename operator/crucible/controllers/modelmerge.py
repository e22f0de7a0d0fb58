"""ModelMerge: resolve the input models, then run the merge Job."""

from __future__ import annotations

from typing import Any

from crucible.api.common import ModelSource, Phase
from crucible.api.contract import WorkloadReport
from crucible.api.kinds import MODEL_MERGE
from crucible.api.modelmerge import ModelMergeSpec, ModelMergeStatus
from crucible.controllers.lifecycle import (
    Context,
    Reference,
    RunController,
    resolve_full_weights,
)
from crucible.controllers.registry import register
from crucible.resources import modelmerge
from crucible.resources.common import child_name, store_uri
from crucible.resources.serving import ServedModel


def model_references(sources: list[ModelSource | None]) -> list[Reference]:
    return [Reference(s.model_ref.kind, s.model_ref.name) for s in sources if s and s.model_ref]


class ModelMergeController(RunController[ModelMergeSpec, modelmerge.MergeInputs]):
    kind = MODEL_MERGE
    role = modelmerge.ROLE

    def references(self, spec: ModelMergeSpec) -> list[Reference]:
        return model_references([*spec.models, spec.base_model])

    async def resolve(self, ctx: Context, spec: ModelMergeSpec) -> modelmerge.MergeInputs:
        models = [
            await resolve_full_weights(ctx, m, f"spec.models[{i}]")
            for i, m in enumerate(spec.models)
        ]
        base = spec.base_model
        return modelmerge.MergeInputs(
            models=models,
            base_model=await resolve_full_weights(ctx, base, "spec.baseModel") if base else None,
        )

    def build(
        self,
        ctx: Context,
        spec: ModelMergeSpec,
        inputs: modelmerge.MergeInputs,
        served: list[ServedModel],
    ) -> list[dict[str, Any]]:
        return modelmerge.build(ctx.owner, spec, inputs, ctx.config)

    def fixed(self, ctx: Context, spec: ModelMergeSpec) -> ModelMergeStatus:
        return ModelMergeStatus(config_map_name=child_name(ctx.owner.name, modelmerge.ROLE))

    def from_report(
        self, ctx: Context, spec: ModelMergeSpec, report: WorkloadReport | None, phase: Phase
    ) -> ModelMergeStatus | None:
        if phase != Phase.SUCCEEDED:
            return None
        return ModelMergeStatus(output_uri=store_uri(ctx.config, ctx.owner))


register(ModelMergeController())
