"""Runs that need models served while their Job works (EvalRun, SyntheticDataset): the models
to serve are resolved with the other inputs; the shared flow starts their vLLM servers, runs
the Job once all are ready and removes them when the run ends, whichever way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from crucible.api.base import ApiModel
from crucible.api.common import InferenceTarget, ModelSource, Reason, Serving
from crucible.controllers.lifecycle import (
    Context,
    FailedError,
    Reference,
    RunController,
    resolve_model,
)
from crucible.controllers.modelmerge import model_references
from crucible.resources.serving import ServedModel, ServedTarget


@dataclass(frozen=True)
class ServedInputs:
    """Inputs of a serving kind: at least the models it serves itself."""

    served: list[ServedModel]


SpecT = TypeVar("SpecT", bound=ApiModel)
InputsT = TypeVar("InputsT", bound=ServedInputs)


async def serve(
    ctx: Context, target: InferenceTarget | ModelSource, field: str, name: str
) -> ServedModel:
    """The model a uri or modelRef stands for; an adapter is served on its base."""
    resolved = await resolve_model(
        ctx, ModelSource(uri=target.uri, model_ref=target.model_ref), field
    )
    if not resolved.adapter:
        return ServedModel(name, resolved.uri)
    if not resolved.base_model_uri:
        assert target.model_ref is not None
        raise FailedError(
            Reason.INVALID_REFERENCE,
            f"{field}.modelRef: FineTuneJob {target.model_ref.name!r} reports no base model "
            "to serve its adapter on",
        )
    return ServedModel(name, resolved.base_model_uri, resolved.uri, resolved.adapter_target_modules)


class ServingController(RunController[SpecT, InputsT]):
    """A kind whose Job queries models the run serves itself (`targets`)."""

    def targets(self, spec: SpecT) -> list[ServedTarget]:
        raise NotImplementedError

    def serving(self, spec: SpecT) -> Serving | None:
        serving: Serving = getattr(spec, "serving")  # noqa: B009 (every serving kind has one)
        return serving

    def references(self, spec: SpecT) -> list[Reference]:
        return model_references(
            [
                ModelSource(uri=t.target.uri, model_ref=t.target.model_ref)
                for t in self.targets(spec)
            ]
        )

    async def served(self, ctx: Context, spec: SpecT) -> list[ServedModel]:
        return [await serve(ctx, t.target, t.field, t.name) for t in self.targets(spec)]

    def servers(self, ctx: Context, spec: SpecT, inputs: InputsT) -> list[ServedModel]:
        return inputs.served
