"""ModelMerge: combine models with mergekit into a new model in the model store."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from crucible.api.base import ApiModel, api_config, cel, defaulted
from crucible.api.common import (
    EXACTLY_ONE_MODEL,
    MAX_LIST,
    ModelSource,
    Resources,
    RunStatus,
)


class MergeMethod(StrEnum):
    LINEAR = "linear"
    SLERP = "slerp"
    TASK_ARITHMETIC = "task_arithmetic"
    TIES = "ties"
    DARE_TIES = "dare_ties"
    DARE_LINEAR = "dare_linear"
    BREADCRUMBS = "breadcrumbs"
    BREADCRUMBS_TIES = "breadcrumbs_ties"
    DELLA = "della"
    DELLA_LINEAR = "della_linear"
    MODEL_STOCK = "model_stock"


# Methods that add task vectors (model minus base) need the base model to subtract.
METHODS_NEEDING_BASE = (
    MergeMethod.TASK_ARITHMETIC,
    MergeMethod.TIES,
    MergeMethod.DARE_TIES,
    MergeMethod.DARE_LINEAR,
    MergeMethod.BREADCRUMBS,
    MergeMethod.BREADCRUMBS_TIES,
    MergeMethod.DELLA,
    MergeMethod.DELLA_LINEAR,
    MergeMethod.MODEL_STOCK,
)
# Methods that prune task vectors by density: all task-vector methods but plain task
# arithmetic and model_stock.
METHODS_WITH_DENSITY = tuple(
    m
    for m in METHODS_NEEDING_BASE
    if m not in (MergeMethod.TASK_ARITHMETIC, MergeMethod.MODEL_STOCK)
)


class Dtype(StrEnum):
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    FLOAT32 = "float32"


class TokenizerSource(StrEnum):
    BASE = "base"
    UNION = "union"


class MergeInput(ModelSource):
    """One input model with its merge parameters."""

    model_config = api_config(EXACTLY_ONE_MODEL)

    weight: float | None = Field(
        default=None,
        description="Relative weight of this model (linear, task_arithmetic, ties, dare_*, "
        "della*, breadcrumbs*). Left out, the models weigh the same.",
    )
    density: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Fraction of this model's task vector kept (ties, dare_*, della*, "
        "breadcrumbs*), in (0, 1].",
    )


class MergeParameters(ApiModel):
    """Method-wide parameters."""

    t: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Interpolation factor of slerp: 0 gives the first (base) model, 1 the "
        "other model.",
    )
    normalize: bool | None = Field(
        default=None, description="Normalize the weights so they sum to 1 (linear, ties, …)."
    )
    int8_mask: bool | None = Field(
        default=None, description="Keep masks in int8 to save memory (ties, dare_*)."
    )


def _method_in(methods: tuple[MergeMethod, ...]) -> str:
    return "self.method in [" + ", ".join(f"'{m.value}'" for m in methods) + "]"


class ModelMergeSpec(ApiModel):
    """What to merge, how, and with which resources."""

    model_config = api_config(
        cel(
            "self.method != 'slerp' || size(self.models) == 2",
            "spec.models: slerp merges exactly two models; list two models, the base first",
            field_path=".models",
            reason="FieldValueInvalid",
        ),
        cel(
            "self.method != 'slerp' || !has(self.baseModel)",
            "spec.baseModel: slerp blends its two models and takes the first as the base: "
            "remove baseModel and list the base first in spec.models",
            field_path=".baseModel",
            reason="FieldValueForbidden",
        ),
        cel(
            "!(" + _method_in(METHODS_NEEDING_BASE) + ") || has(self.baseModel)",
            "spec.baseModel is required by task-vector methods (task_arithmetic, ties, "
            "dare_ties, dare_linear, breadcrumbs*, della*, model_stock): set baseModel to the "
            "model the others were fine-tuned from",
            field_path=".baseModel",
            reason="FieldValueRequired",
        ),
        cel(
            "self.method != 'slerp' || (has(self.parameters) && has(self.parameters.t))",
            "spec.parameters.t is required by slerp: set it between 0 (the first model) and "
            "1 (the second), e.g. 0.5",
            field_path=".parameters",
            reason="FieldValueRequired",
        ),
        cel(
            "self.method == 'slerp' || !has(self.parameters) || !has(self.parameters.t)",
            "spec.parameters.t only applies to slerp: remove it, or use weight on each model",
            field_path=".parameters.t",
            reason="FieldValueForbidden",
        ),
        cel(
            "self.method != 'linear' || size(self.models) >= 2",
            "spec.models: a linear merge of one model is that model again: list two or more",
            field_path=".models",
            reason="FieldValueInvalid",
        ),
        cel(
            "self.method != 'slerp' || size(self.models) != 2 || "
            "!(has(self.models[0].uri) && has(self.models[1].uri) && "
            "self.models[0].uri == self.models[1].uri) && "
            "!(has(self.models[0].modelRef) && has(self.models[1].modelRef) && "
            "self.models[0].modelRef == self.models[1].modelRef)",
            "spec.models: slerp between a model and itself gives that model at any t: name "
            "two different models",
            field_path=".models",
            reason="FieldValueInvalid",
        ),
        cel(
            "(has(self.parameters) && has(self.parameters.normalize) && "
            "!self.parameters.normalize) || !self.models.all(m, has(m.weight)) || "
            "self.models.map(m, m.weight).sum() != 0.0",
            "spec.models[].weight: the weights sum to 0 and the merge divides by their sum: "
            "give weights whose sum is not 0 (e.g. 0.7 and 0.3), or set "
            "spec.parameters.normalize: false to add the models up as weighted (a task "
            "vector, say)",
            field_path=".models",
            reason="FieldValueInvalid",
        ),
        cel(
            _method_in(METHODS_WITH_DENSITY) + " || self.models.all(m, !has(m.density))",
            "spec.models[].density only applies to ties, dare_*, della* and breadcrumbs*: "
            "remove it or choose one of those methods",
            field_path=".models",
            reason="FieldValueForbidden",
        ),
    )

    method: MergeMethod = Field(
        description="mergekit merge method: linear, slerp, task_arithmetic, ties, "
        "dare_ties, dare_linear, breadcrumbs, breadcrumbs_ties, della, della_linear or "
        "model_stock."
    )
    base_model: ModelSource | None = Field(
        default=None,
        description="The model the others are measured against, required by task-vector "
        "methods; slerp takes its first model instead.",
    )
    models: list[MergeInput] = Field(
        min_length=1,
        max_length=MAX_LIST,
        description="The models to merge, each a uri or modelRef with optional weight and "
        "density. Refused, as they could only give a meaningless merge: a linear merge of one "
        "model (that model again), a slerp of a model with itself (that model at any t), and "
        "weights that sum to 0 while normalize is on (a division by zero).",
    )
    parameters: MergeParameters | None = Field(
        default=None, description="Method-wide parameters such as t for slerp."
    )
    dtype: Dtype = Field(
        default=Dtype.BFLOAT16,
        description="dtype of the merged weights: float16, bfloat16 or float32.",
    )
    tokenizer_source: TokenizerSource = Field(
        default=TokenizerSource.BASE,
        description="Tokenizer of the result: base (the base model's) or union (all "
        "models' vocabularies).",
    )
    resources: Resources = defaulted(
        Resources(),
        description="Compute for the merge Job.",
    )


class ModelMergeStatus(RunStatus):
    """Observed state of a ModelMerge."""

    config_map_name: str | None = Field(
        default=None, description="ConfigMap holding the rendered mergekit configuration."
    )
