"""ModelServing, pure: the gate judged on an EvalRun's results, and the objects that serve a
promoted spec (a vLLM Deployment + Service, or a KServe LLMInferenceService).

What is served is recorded on the serving object itself (the `crucible.dev/promoted`
annotation): the status is derived from it, so a crash between promoting and writing the
status loses nothing, and a spec that fails its gate leaves the object, and the model it
serves, as it is."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from crucible.api import GROUP
from crucible.api.common import ModelSource
from crucible.api.evalrun import EvalModel, EvalRunStatus, ModelResult, PairedTest
from crucible.api.modelserving import (
    Gate,
    GateCheck,
    GateRule,
    GateVerdict,
    ModelServingSpec,
    PromotedModel,
    ResultRef,
    ServingRuntime,
)
from crucible.config import OperatorConfig
from crucible.resources.common import Owner, child_name, container_resources, metadata, scheduling
from crucible.resources.serving import SERVER_ROLE, VLLM_PORT, Server, server

PROMOTED_ANNOTATION = f"{GROUP}/promoted"
KSERVE_API_VERSION = "serving.kserve.io/v1alpha2"
KSERVE_KIND = "LLMInferenceService"


class GateUnevaluableError(Exception):
    """A rule names a result the EvalRun does not have: the message names the field and
    the fix."""


# -- the gate --------------------------------------------------------------------------------


def _label(ref: ResultRef) -> str:
    return f"{ref.model}{' (RAG)' if ref.rag else ''}"


def _result(status: EvalRunStatus, ref: ResultRef, field: str, eval_run: str) -> ModelResult:
    for result in status.results or []:
        if result.model == ref.model and result.rag == ref.rag:
            return result
    scored = ", ".join(f"{r.model} (rag: {str(r.rag).lower()})" for r in status.results or [])
    raise GateUnevaluableError(
        f"{field}: EvalRun {eval_run!r} has no result for model {ref.model!r} with rag: "
        f"{str(ref.rag).lower()} (it scored: {scored or 'nothing'}); name one of those, or add "
        "the model to the EvalRun"
    )


def _paired(status: EvalRunStatus, a: ResultRef, b: ResultRef) -> tuple[PairedTest, bool] | None:
    """The EvalRun's paired test between a and b, and whether it was run as b against a."""
    for test in status.paired_tests or []:
        if (test.a, test.a_rag, test.b, test.b_rag) == (a.model, a.rag, b.model, b.rag):
            return test, False
        if (test.b, test.b_rag, test.a, test.a_rag) == (a.model, a.rag, b.model, b.rag):
            return test, True
    return None


def _check(
    rule: GateRule,
    field: str,
    status: EvalRunStatus,
    candidate: tuple[ResultRef, ModelResult],
    eval_run: str,
) -> GateCheck:
    candidate_ref, mine = candidate
    name = _label(candidate_ref)
    interval = f"{name}: 95% interval [{mine.ci95_low:.3f}, {mine.ci95_high:.3f}]"
    if rule.interval_above_mean is not None:
        ref = rule.interval_above_mean
        other = _result(status, ref, f"{field}.intervalAboveMean", eval_run)
        return GateCheck(
            type="intervalAboveMean",
            rule=f"{name}'s 95% interval lies above {_label(ref)}'s mean",
            holds=mine.ci95_low > other.accuracy_mean,
            figures=f"{interval}; {_label(ref)}: mean {other.accuracy_mean:.3f}",
            values={"candidateCi95Lower": mine.ci95_low, "referenceMean": other.accuracy_mean},
        )
    if rule.paired_better is not None:
        ref = rule.paired_better
        _result(status, ref, f"{field}.pairedBetter", eval_run)
        found = _paired(status, candidate_ref, ref)
        if found is None:
            raise GateUnevaluableError(
                f"{field}.pairedBetter: EvalRun {eval_run!r} has no paired test between "
                f"{name} and {_label(ref)}; it pairs results with the same RAG setting or of "
                "the same model: compare against one of those"
            )
        test, flipped = found
        lead = -test.difference if flipped else test.difference
        low, high = (
            (-test.ci95_high, -test.ci95_low) if flipped else (test.ci95_low, test.ci95_high)
        )
        return GateCheck(
            type="pairedBetter",
            values={"difference": lead, "pValue": test.p_value, "alpha": ref.alpha},
            rule=f"{name} is better than {_label(ref)} by the paired test at level {ref.alpha:g}",
            holds=lead > 0 and test.p_value < ref.alpha,
            figures=f"{name} minus {_label(ref)}: {lead:+.3f}, 95% interval "
            f"[{low:+.3f}, {high:+.3f}], {test.test} p = {test.p_value:.3g}",
        )
    assert rule.minimum_accuracy is not None
    return GateCheck(
        type="minimumAccuracy",
        values={"candidateCi95Lower": mine.ci95_low, "minimum": rule.minimum_accuracy},
        rule=f"{name}'s 95% interval lies at or above {rule.minimum_accuracy:.3f}",
        holds=mine.ci95_low >= rule.minimum_accuracy,
        figures=interval,
    )


def same_source(served: ModelSource, evaluated: EvalModel) -> bool:
    """Whether the EvalRun's model is the model the spec serves."""
    if served.uri is not None:
        return bool(evaluated.uri == served.uri)
    ref, other = served.model_ref, evaluated.model_ref
    return (
        ref is not None
        and other is not None
        and (ref.kind, ref.name)
        == (
            other.kind,
            other.name,
        )
    )


def judge(
    gate: Gate,
    served: ModelSource,
    models: list[EvalModel],
    status: EvalRunStatus,
    generation: int,
) -> GateVerdict:
    """Every rule of the gate on the EvalRun's results. The candidate must be the model the
    spec serves: a gate that judged another model would promote on someone else's figures."""
    eval_run = gate.eval_run_ref.name
    evaluated = next((m for m in models if m.name == gate.candidate.model), None)
    if evaluated is not None and not same_source(served, evaluated):
        raise GateUnevaluableError(
            f"spec.gate.candidate.model: EvalRun {eval_run!r} scored {gate.candidate.model!r} "
            "from another source than spec.model; name the EvalRun's model that is spec.model "
            "(the same uri or modelRef)"
        )
    mine = (gate.candidate, _result(status, gate.candidate, "spec.gate.candidate", eval_run))
    checks = [
        _check(rule, f"spec.gate.rules[{i}]", status, mine, eval_run)
        for i, rule in enumerate(gate.rules)
    ]
    return GateVerdict(
        generation=generation,
        eval_run=eval_run,
        holds=all(c.holds for c in checks),
        checks=checks,
    )


# -- what serves it ----------------------------------------------------------------------------


def server_name(owner: Owner) -> str:
    return child_name(owner.name, "vllm")


def served_name(owner: Owner, spec: ModelServingSpec) -> str:
    return spec.served_model_name or owner.name


def url(owner: Owner) -> str:
    return f"http://{server_name(owner)}.{owner.namespace}.svc:{VLLM_PORT}/v1"


def promoted_of(body: dict[str, Any] | None) -> PromotedModel | None:
    """What a serving object serves, from its annotation."""
    text = ((body or {}).get("metadata", {}).get("annotations") or {}).get(PROMOTED_ANNOTATION)
    return PromotedModel.model_validate_json(text) if text else None


def promotion(  # noqa: PLR0917 (one call site, every argument a different thing)
    owner: Owner,
    spec: ModelServingSpec,
    served: Server,
    generation: int,
    verdict: GateVerdict | None,
    at: datetime,
) -> PromotedModel:
    return PromotedModel(
        generation=generation,
        model_uri=served.model_uri,
        served_model_name=served_name(owner, spec),
        adapters=[name for name, _ in served.adapters],
        adapter_uris=[uri for _, uri in served.adapters],
        weights_names=list(served.base_names),
        promoted_at=at,
        gate=verdict,
    )


def _annotate(body: dict[str, Any], promoted: PromotedModel) -> dict[str, Any]:
    body["metadata"].setdefault("annotations", {})[PROMOTED_ANNOTATION] = json.dumps(
        promoted.to_api(), sort_keys=True
    )
    return body


def vllm_objects(
    owner: Owner,
    spec: ModelServingSpec,
    served: Server,
    promoted: PromotedModel,
    config: OperatorConfig,
) -> list[dict[str, Any]]:
    """A Deployment of `replicas` vLLM servers and its Service. A promotion rolls out one new
    replica before an old one goes (maxSurge 1, maxUnavailable 0): the model promoted before
    answers until its successor is ready."""
    deployment, service = server(owner, served, spec.serving, config, server_name(owner))
    deployment["spec"]["replicas"] = spec.replicas
    deployment["spec"]["strategy"] = {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    return [_annotate(deployment, promoted), service]


def kserve_object(
    owner: Owner,
    spec: ModelServingSpec,
    served: Server,
    promoted: PromotedModel,
    config: OperatorConfig,
) -> dict[str, Any]:
    """KServe's LLMInferenceService for the promoted spec: the model and its adapters by URI
    (KServe's storage initializer fetches hf:// and s3://; pvc:// is mounted), the replicas,
    and the main container's compute. vLLM's own settings come from KServe's
    LLMInferenceServiceConfig presets."""
    main: dict[str, Any] = {"name": "main"}
    if resources := container_resources(spec.serving.resources, config):
        main["resources"] = resources
    model: dict[str, Any] = {"uri": served.model_uri, "name": served.base_names[0]}
    if served.adapters:
        model["lora"] = {"adapters": [{"uri": uri, "name": name} for name, uri in served.adapters]}
    body = {
        "apiVersion": KSERVE_API_VERSION,
        "kind": KSERVE_KIND,
        "metadata": metadata(owner, server_name(owner), SERVER_ROLE),
        "spec": {
            "model": model,
            "replicas": spec.replicas,
            "template": {"containers": [main], **scheduling(spec.serving.resources, config)},
        },
    }
    return _annotate(body, promoted)


def serving_objects(
    owner: Owner,
    spec: ModelServingSpec,
    served: Server,
    promoted: PromotedModel,
    config: OperatorConfig,
) -> list[dict[str, Any]]:
    """The objects that serve the promoted spec, the one carrying the promotion first."""
    if spec.runtime == ServingRuntime.KSERVE:
        return [kserve_object(owner, spec, served, promoted, config)]
    return vllm_objects(owner, spec, served, promoted, config)


@dataclass(frozen=True)
class Rollout:
    replicas: int
    ready: int
    url: str | None
    serving: bool  # at least one replica answers


def rollout(owner: Owner, body: dict[str, Any]) -> Rollout:
    """How far a serving object has rolled out, read from its status."""
    status = body.get("status") or {}
    wanted = int((body.get("spec") or {}).get("replicas") or 0)
    if body.get("kind") == KSERVE_KIND:
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        return Rollout(wanted, wanted if ready else 0, status.get("url"), ready)
    ready_replicas = int(status.get("readyReplicas") or 0)
    return Rollout(wanted, ready_replicas, url(owner), ready_replicas > 0)
