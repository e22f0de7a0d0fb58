"""ModelMerge → the mergekit configuration (ConfigMap) and the merge Job."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crucible.api.contract import MergeTask
from crucible.api.modelmerge import (
    METHODS_NEEDING_BASE,
    MergeMethod,
    ModelMergeSpec,
)
from crucible.config import OperatorConfig
from crucible.resources.common import (
    Owner,
    Workload,
    pvc_claims,
    task_fields,
    workload_children,
    workload_command,
)

ROLE = "merge"
# Methods whose per-model weight mergekit requires; left out, models weigh the same.
WEIGHTED = (MergeMethod.LINEAR, *METHODS_NEEDING_BASE)


@dataclass(frozen=True)
class MergeInputs:
    """Model sources resolved to URIs (modelRefs replaced by their outputs)."""

    models: list[str]
    base_model: str | None


def mergekit_config(spec: ModelMergeSpec, inputs: MergeInputs) -> dict[str, Any]:
    method = MergeMethod(spec.method)
    models = []
    for source, uri in zip(spec.models, inputs.models, strict=True):
        parameters: dict[str, Any] = {}
        if source.weight is not None or method in WEIGHTED:
            parameters["weight"] = source.weight if source.weight is not None else 1.0
        if source.density is not None:
            parameters["density"] = source.density
        models.append({"model": uri, **({"parameters": parameters} if parameters else {})})
    base = inputs.base_model
    if base is None and method == MergeMethod.SLERP:
        base = inputs.models[0]
    config: dict[str, Any] = {"merge_method": method.value}
    if base is not None:
        config["base_model"] = base
    config["models"] = models
    parameters = spec.parameters.to_api() if spec.parameters else {}
    if "int8Mask" in parameters:
        parameters["int8_mask"] = parameters.pop("int8Mask")
    if parameters:
        config["parameters"] = parameters
    config["dtype"] = spec.dtype
    config["tokenizer_source"] = spec.tokenizer_source
    return config


def build(
    owner: Owner, spec: ModelMergeSpec, inputs: MergeInputs, config: OperatorConfig
) -> list[dict[str, Any]]:
    """Every child of a ModelMerge, in creation order."""
    claims = pvc_claims([*inputs.models, *([inputs.base_model] if inputs.base_model else [])])
    mergekit = mergekit_config(spec, inputs)
    return workload_children(
        Workload(
            owner=owner,
            role=ROLE,
            config=config,
            resources=spec.resources,
            image=config.merge_image,
            command=workload_command("merge"),
            claims=claims,
        ),
        MergeTask(**task_fields(owner, config, claims), mergekit=mergekit),
    )
