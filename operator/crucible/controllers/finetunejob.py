"""FineTuneJob: resolve the base model and the dataset, run the training Job."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crucible.api.common import DataSource, Phase, PvcPath, Reason
from crucible.api.contract import WorkloadReport
from crucible.api.finetunejob import Dataset, FineTuneJobSpec, FineTuneJobStatus
from crucible.api.formats import ModelLocation
from crucible.api.kinds import FINE_TUNE_JOB, SYNTHETIC_DATASET
from crucible.controllers.lifecycle import (
    Context,
    FailedError,
    Reference,
    RunController,
    config_map_key,
    dependency,
    output_of,
    resolve_full_weights,
)
from crucible.controllers.modelmerge import model_references
from crucible.controllers.registry import register
from crucible.resources import finetunejob
from crucible.resources.jobs import WorkloadKind
from crucible.resources.serving import ServedModel
from crucible.resources.syntheticdataset import TRAIN_FILE


@dataclass(frozen=True)
class TrainingInputs:
    base_model_uri: str
    dataset: DataSource | None  # where a datasetRef resolved to; None: spec.dataset as is


async def synthetic_data(ctx: Context, dataset: Dataset) -> DataSource:
    """The train split of the referenced SyntheticDataset, once it has succeeded."""
    assert dataset.dataset_ref is not None
    field = "spec.dataset.datasetRef"
    name = dataset.dataset_ref.name
    made_by, status = await dependency(ctx, SYNTHETIC_DATASET, name, field)
    made = made_by.format
    if str(made) != str(dataset.format):
        raise FailedError(
            Reason.INVALID_REFERENCE,
            f"{field}: SyntheticDataset {name!r} writes {made} rows but spec.dataset.format is "
            f"{dataset.format}; set spec.dataset.format: {made} (chat trains with sft, "
            "preference with dpo) or reference another SyntheticDataset",
        )
    output = ModelLocation.parse(output_of(status, SYNTHETIC_DATASET.kind, name, field))
    return DataSource(
        pvc=PvcPath(claim_name=output.root, path=f"{output.path.rstrip('/')}/{TRAIN_FILE}")
    )


class FineTuneJobController(RunController[FineTuneJobSpec, TrainingInputs]):
    kind = FINE_TUNE_JOB
    role = finetunejob.ROLE

    def workload_kind(self, spec: FineTuneJobSpec) -> WorkloadKind:
        return finetunejob.RUNTIMES[spec.runtime]

    def references(self, spec: FineTuneJobSpec) -> list[Reference]:
        refs = model_references([spec.base_model])
        dataset, documents = spec.dataset, spec.documents
        if dataset is not None and dataset.dataset_ref is not None:
            refs.append(Reference(SYNTHETIC_DATASET.kind, dataset.dataset_ref.name))
        for config_map in (
            dataset.config_map if dataset is not None else None,
            documents.config_map if documents is not None else None,
        ):
            if config_map is not None:
                refs.append(Reference("ConfigMap", config_map.name))
        return refs

    async def resolve(self, ctx: Context, spec: FineTuneJobSpec) -> TrainingInputs:
        base = await resolve_full_weights(ctx, spec.base_model, "spec.baseModel")
        if spec.documents is not None and spec.documents.config_map is not None:
            name = spec.documents.config_map.name
            await config_map_key(ctx, name, None, "spec.documents.configMap")
        dataset = spec.dataset
        if dataset is None:
            return TrainingInputs(base, None)
        if dataset.config_map is not None:
            ref = dataset.config_map
            await config_map_key(ctx, ref.name, ref.key, "spec.dataset.configMap")
        data = await synthetic_data(ctx, dataset) if dataset.dataset_ref is not None else None
        return TrainingInputs(base, data)

    def build(
        self,
        ctx: Context,
        spec: FineTuneJobSpec,
        inputs: TrainingInputs,
        served: list[ServedModel],
    ) -> list[dict[str, Any]]:
        return finetunejob.build(ctx.owner, spec, inputs.base_model_uri, ctx.config, inputs.dataset)

    def recorded(
        self, ctx: Context, spec: FineTuneJobSpec, inputs: TrainingInputs
    ) -> FineTuneJobStatus:
        return FineTuneJobStatus(base_model_uri=inputs.base_model_uri)

    def from_report(
        self, ctx: Context, spec: FineTuneJobSpec, report: WorkloadReport | None, phase: Phase
    ) -> FineTuneJobStatus:
        progress = report.progress if report is not None else None
        if phase != Phase.SUCCEEDED:
            return FineTuneJobStatus(progress=progress)
        outputs = finetunejob.outputs(ctx.owner, spec, ctx.config)
        return FineTuneJobStatus(
            progress=progress,
            adapter_uri=outputs["adapterUri"],
            output_uri=outputs["outputUri"],
            adapter_target_modules=(report.adapter_modules if report is not None else None) or None,
        )


register(FineTuneJobController())
