"""ModelMerge → the mergekit configuration (ConfigMap) and the merge Job."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from crucible.api.contract import TASK_PATH, MergeTask
from crucible.api.modelmerge import (
    METHODS_NEEDING_BASE,
    MergeMethod,
    ModelMergeSpec,
)
from crucible.config import OperatorConfig
from crucible.resources.common import (
    Owner,
    child_name,
    job,
    pvc_claims,
    pvc_volumes,
    report_name,
    report_objects,
    store_path,
    store_uri,
    task_config_map,
    workload_pod,
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
    if base is None and method in (MergeMethod.SLERP, MergeMethod.NUSLERP):
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
    uris = [*inputs.models, *([inputs.base_model] if inputs.base_model else [])]
    claims = pvc_claims(uris)
    _, _, mounts = pvc_volumes(config, claims)
    mergekit = mergekit_config(spec, inputs)
    task = MergeTask(
        namespace=owner.namespace,
        name=owner.name,
        report_config_map=report_name(owner),
        mounts=mounts,
        output_uri=store_uri(config, owner),
        output_path=store_path(config, owner),
        mergekit=mergekit,
    )
    name = child_name(owner.name, ROLE)
    pod = workload_pod(
        owner=owner,
        role=ROLE,
        config=config,
        resources=spec.resources,
        image=config.merge_image,
        command=["python", "-m", "crucible.workloads.merge", "--task", TASK_PATH],
        task_config_map_name=name,
        claims=claims,
    )
    return [
        *report_objects(owner, ROLE),
        task_config_map(
            owner, name, ROLE, task, {"mergekit.yaml": yaml.safe_dump(mergekit, sort_keys=False)}
        ),
        job(owner, name, ROLE, pod, config),
    ]
