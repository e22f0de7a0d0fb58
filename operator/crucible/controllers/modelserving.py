"""ModelServing: a long-lived kind. Each reconcile judges the current spec (its model resolved,
its gate on the EvalRun's results) and promotes it when it passes: the serving object is
created, or replaced in place, carrying what it serves in an annotation. A spec that waits or
fails its gate is not promoted; the object, and the model it serves, stay as they are. The
status is derived from the object and the judgement, so a crash at any instant loses
nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from crucible.api.common import (
    Condition,
    ConditionType,
    Phase,
    Reason,
    RunStatus,
)
from crucible.api.kinds import EVAL_RUN, MODEL_SERVING
from crucible.api.modelserving import GateVerdict, ModelServingSpec, ServingRuntime
from crucible.controllers.lifecycle import (
    UNWATCHED_RECHECK_SECONDS,
    Context,
    Controller,
    FailedError,
    Reference,
    Result,
    WaitingError,
    create_one,
    dependency,
    status_of,
)
from crucible.controllers.modelmerge import model_references
from crucible.controllers.registry import register
from crucible.controllers.serving import serve
from crucible.resources import modelserving as ms
from crucible.resources.serving import ServedModel, Server, servers_for
from crucible.resources.status import describe_validation_error, now, set_condition

KSERVE_DISCOVERY = f"/apis/{ms.KSERVE_API_VERSION}"


async def resolve(ctx: Context, spec: ModelServingSpec) -> Server:
    """The one server of the spec: the weights, answering to the served name (or, when the
    model is an adapter, its base under `<name>-base`), with every adapter on them. Waits for
    a modelRef that has not succeeded."""
    served = ms.served_name(ctx.owner, spec)
    model = await serve(ctx, spec.model, "spec.model", served)
    models = [model]
    for i, adapter in enumerate(spec.adapters):
        if adapter.uri is not None:  # a stored adapter: what it adapts is not known
            models.append(ServedModel(adapter.name, model.model_uri, adapter.uri))
            continue
        assert adapter.model_ref is not None
        field, tuned = f"spec.adapters[{i}].modelRef", adapter.model_ref.name
        loaded = await serve(ctx, adapter, f"spec.adapters[{i}]", adapter.name)
        if loaded.adapter_uri is None:
            raise FailedError(
                Reason.INVALID_REFERENCE,
                f"{field}: FineTuneJob {tuned!r} writes full weights (mergeAdapter); serve it "
                "as spec.model of its own ModelServing",
            )
        if loaded.model_uri != model.model_uri:
            raise FailedError(
                Reason.INVALID_REFERENCE,
                f"{field}: FineTuneJob {tuned!r}'s adapter was trained on {loaded.model_uri}, "
                f"not on the weights served ({model.model_uri}); load it on its own base model",
            )
        models.append(loaded)
    (server,) = servers_for(models)
    return server


async def judge_gate(ctx: Context, spec: ModelServingSpec) -> GateVerdict | None:
    """The gate on the EvalRun's results; waits while the EvalRun has not succeeded."""
    if spec.gate is None:
        return None
    evaluated, status = await dependency(
        ctx, EVAL_RUN, spec.gate.eval_run_ref.name, "spec.gate.evalRunRef.name"
    )
    try:
        return ms.judge(spec.gate, spec.model, evaluated.models, status, ctx.generation)
    except ms.GateUnevaluableError as error:
        raise FailedError(Reason.INVALID_REFERENCE, str(error)) from None


async def current_object(ctx: Context, spec: ModelServingSpec) -> dict[str, Any] | None:
    """The serving object as it is, or None."""
    name = ms.server_name(ctx.owner)
    if spec.runtime == ServingRuntime.KSERVE:
        if await ctx.kube.request("GET", KSERVE_DISCOVERY) is None:
            raise WaitingError(
                Reason.RUNTIME_NOT_INSTALLED,
                f"spec.runtime: KServe's {ms.KSERVE_KIND} ({ms.KSERVE_API_VERSION}) is not "
                "installed in this cluster; install KServe, or serve with spec.runtime: vLLM "
                "in a new ModelServing",
            )
        return await ctx.kube.get(ms.KSERVE_API_VERSION, ms.KSERVE_KIND, ctx.owner.namespace, name)
    return ctx.children.get("Deployment", name)


async def promote(
    ctx: Context, objects: list[dict[str, Any]], existing: dict[str, Any] | None, *, change: bool
) -> dict[str, Any] | None:
    """With `change`, create the serving objects, or replace the one that carries the
    promotion (its Service, when there is one, never changes). Either way, create the others
    where they are missing: a crash may have come between the first and its Service. Returns
    the object that carries the promotion."""
    first, *rest = objects
    if change and existing is None:
        existing = await create_one(ctx, first)
    elif change:
        assert existing is not None
        first["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
        existing = await ctx.kube.replace(first)
        ctx.created(existing)
    for manifest in rest:
        if ctx.children.get(manifest["kind"], manifest["metadata"]["name"]) is None:
            await create_one(ctx, manifest)
    return existing


class ModelServingController(Controller[ModelServingSpec]):
    kind = MODEL_SERVING

    def references(self, spec: ModelServingSpec) -> list[Reference]:
        refs = model_references([spec.model, *spec.adapters])
        if spec.gate is not None:
            refs.append(Reference(EVAL_RUN.kind, spec.gate.eval_run_ref.name))
        return refs

    async def reconcile(self, ctx: Context) -> Result:
        try:
            spec = ModelServingSpec.model_validate(ctx.body.get("spec") or {})
        except ValidationError as error:
            judged = Judged(False, Reason.INVALID_SPEC, describe_validation_error(error))
            return Result(serving_status(ctx, None, None, judged))
        requeue = UNWATCHED_RECHECK_SECONDS if spec.runtime == ServingRuntime.KSERVE else None
        existing: dict[str, Any] | None = None
        verdict: GateVerdict | None = None
        try:
            existing = await current_object(ctx, spec)
            server = await resolve(ctx, spec)
            verdict = await judge_gate(ctx, spec)
            if verdict is not None and not verdict.holds:
                raise FailedError(
                    Reason.GATE_NOT_MET,
                    f"generation {ctx.generation} is not promoted: EvalRun "
                    f"{verdict.eval_run!r}: "
                    + "; ".join(
                        f"{c.rule} does not hold ({c.figures})"
                        for c in verdict.checks
                        if not c.holds
                    ),
                )
            promoted = ms.promoted_of(existing)
            change = promoted is None or promoted.generation != ctx.generation
            if change:
                # The same weights and adapters promoted again (a changed gate or replica
                # count) have been live since they were first promoted.
                same = promoted is not None and (promoted.model_uri, promoted.adapter_uris) == (
                    server.model_uri,
                    [uri for _, uri in server.adapters],
                )
                at = promoted.promoted_at if promoted is not None and same else now()
                promoted = ms.promotion(ctx.owner, spec, server, ctx.generation, verdict, at)
            assert promoted is not None
            objects = ms.serving_objects(ctx.owner, spec, server, promoted, ctx.config)
            existing = await promote(ctx, objects, existing, change=change)
            judged = Judged(True, Reason.PROMOTED, f"generation {ctx.generation} is served")
        except (WaitingError, FailedError) as error:
            judged = Judged(False, error.reason, error.message)
        return Result(serving_status(ctx, existing, verdict, judged), requeue)


@dataclass(frozen=True)
class Judged:
    """Whether the current spec is the one served, and if not why."""

    promoted: bool
    reason: Reason
    message: str


def serving_status(
    ctx: Context, existing: dict[str, Any] | None, verdict: GateVerdict | None, judged: Judged
) -> RunStatus:
    """Ready says whether the promoted model answers; Promoted whether the current spec is
    the one served, with the gate's figures when it is not."""
    promoted = ms.promoted_of(existing)
    fields: dict[str, Any] = ctx.current.model_dump(
        exclude_none=True, exclude={"phase", "conditions", "gate"}
    )
    fields["gate"] = verdict
    if existing is None or promoted is None:
        phase = Phase.WAITING if judged.reason in WAITING_REASONS else Phase.FAILED
        reason, message = judged.reason, judged.message
    else:
        state = ms.rollout(ctx.owner, existing)
        fields.update(
            promoted=promoted,
            server=existing["metadata"]["name"],
            url=state.url,
            models=[*promoted.weights_names, *promoted.adapters],
            replicas=state.replicas,
            ready_replicas=state.ready,
            start_time=ctx.current.start_time or promoted.promoted_at,
        )
        phase, reason = (
            (Phase.RUNNING, Reason.SERVING)
            if state.serving
            else (Phase.PENDING, Reason.ROLLING_OUT)
        )
        message = (
            f"serving {promoted.served_model_name} (generation {promoted.generation}) at "
            f"{state.url}: {state.ready}/{state.replicas} replicas ready"
        )
        if not judged.promoted:
            message += f"; {judged.message}"
    status = status_of(ctx, phase, reason, message, fields)
    condition = Condition(
        type=ConditionType.PROMOTED,
        status="True" if judged.promoted else "False",
        reason=judged.reason,
        message=judged.message,
        last_transition_time=now(),
        observed_generation=ctx.generation,
    )
    return status.model_copy(update={"conditions": set_condition(status.conditions, condition)})


WAITING_REASONS = (
    Reason.DEPENDENCY_NOT_FOUND,
    Reason.WAITING_FOR_DEPENDENCY,
    Reason.INPUT_NOT_FOUND,
    Reason.RUNTIME_NOT_INSTALLED,
)

register(ModelServingController())
