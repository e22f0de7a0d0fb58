"""ModelServing: a model promoted to long-lived serving once an evaluation says it may be.

The spec names what to serve (a model source, with LoRA adapters on it), how (replicas, vLLM
settings, the runtime: a vLLM Deployment or KServe's LLMInferenceService) and, optionally, a
gate: an EvalRun and rules over its results that must all hold. A spec that passes its gate
is promoted as a whole; one that fails it is not, and the model promoted before keeps
serving."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import Field

from crucible.api.base import ApiModel, api_config, cel, defaulted
from crucible.api.common import (
    EXACTLY_ONE_MODEL,
    MAX_NAME,
    MAX_URI,
    ModelSource,
    RunStatus,
    Serving,
)
from crucible.api.formats import DNS_LABEL, OBJECT_NAME, DnsLabel, ObjectName

MAX_ADAPTERS = 16
MAX_RULES = 8


class ServingRuntime(StrEnum):
    VLLM = "vLLM"
    KSERVE = "KServe"


class ServedAdapter(ModelSource):
    """A LoRA adapter loaded on the served model: a FineTuneJob's adapter (modelRef) or a
    stored one (uri)."""

    model_config = api_config(
        EXACTLY_ONE_MODEL,
        cel(
            "!has(self.modelRef) || self.modelRef.kind == 'FineTuneJob'",
            "an adapter's modelRef must name a FineTuneJob (a ModelMerge writes full weights: "
            "serve it as spec.model instead)",
            reason="FieldValueInvalid",
        ),
    )

    name: DnsLabel = DNS_LABEL.field(
        description="Name the adapter answers to (the `model` of a request).",
        min_length=1,
        max_length=63,
    )


class EvalRunRef(ApiModel):
    """An EvalRun in this namespace."""

    name: ObjectName = OBJECT_NAME.about("the name of an EvalRun").field(
        description="Name of the EvalRun.", min_length=1, max_length=MAX_NAME
    )


class ResultRef(ApiModel):
    """One result of the EvalRun: a model of its spec.models, with or without RAG."""

    model: DnsLabel = DNS_LABEL.field(
        description="Name of the model in the EvalRun's spec.models.",
        min_length=1,
        max_length=40,
    )
    rag: bool = Field(default=False, description="The result with retrieved context.")


class PairedRule(ResultRef):
    """The paired test between the candidate and another result says the candidate is better."""

    alpha: float = Field(
        default=0.05,
        gt=0,
        lt=1,
        description="Level of the test: the candidate must be ahead and the p-value below it.",
    )


EXACTLY_ONE_RULE = cel(
    "[has(self.intervalAboveMean), has(self.pairedBetter), has(self.minimumAccuracy)]"
    ".filter(x, x).size() == 1",
    "set exactly one of intervalAboveMean ({model, rag}), pairedBetter ({model, rag, alpha}) "
    "or minimumAccuracy (a number in [0, 1]) in each rule",
    reason="FieldValueInvalid",
)


class GateRule(ApiModel):
    """One condition on the EvalRun's figures for the candidate's result."""

    model_config = api_config(EXACTLY_ONE_RULE)

    interval_above_mean: ResultRef | None = Field(
        default=None,
        description="The candidate's 95% interval over questions lies entirely above this "
        "result's mean accuracy (e.g. the base model, or a hosted baseline).",
    )
    paired_better: PairedRule | None = Field(
        default=None,
        description="The EvalRun's paired test over the same questions (McNemar) between the "
        "candidate and this result: the candidate is ahead and p < alpha. The EvalRun pairs "
        "results of the same RAG setting or of the same model.",
    )
    minimum_accuracy: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="The lower bound of the candidate's 95% interval is at least this.",
    )


class Gate(ApiModel):
    """What must hold before the spec is promoted: every rule, on the EvalRun's results."""

    eval_run_ref: EvalRunRef = Field(
        description="The EvalRun whose results decide; the gate waits until it has succeeded."
    )
    candidate: ResultRef = Field(description="The EvalRun's result for the model this spec serves.")
    rules: list[GateRule] = Field(
        min_length=1, max_length=MAX_RULES, description="Conditions that must all hold."
    )


class ModelServingSpec(ApiModel):
    """What to serve, how, and when it may be promoted."""

    model_config = api_config(
        cel(
            "!has(self.adapters) || !has(self.servedModelName) || "
            "!self.adapters.exists(a, a.name == self.servedModelName)",
            "spec.adapters: an adapter cannot answer to spec.servedModelName; rename one",
            field_path=".adapters",
            reason="FieldValueInvalid",
        ),
    )

    model: ModelSource = Field(
        description="The model to serve: a stored model (uri), a ModelMerge, or a FineTuneJob "
        "(its merged weights, or its LoRA adapter served on its base model)."
    )
    served_model_name: DnsLabel | None = DNS_LABEL.field(
        default=None,
        description="Name the model answers to (the `model` of a request); defaults to the "
        "ModelServing's name.",
        min_length=1,
        max_length=63,
    )
    adapters: list[ServedAdapter] = Field(
        default_factory=list,
        max_length=MAX_ADAPTERS,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description="LoRA adapters of the served model to load beside it, each answering to "
        "its own name; names must be unique.",
    )
    replicas: int = Field(default=1, ge=0, le=1000, description="Server replicas.")
    runtime: ServingRuntime = Field(
        default=ServingRuntime.VLLM,
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self == oldSelf",
                    "spec.runtime cannot change: create another ModelServing for the other "
                    "runtime, then delete this one",
                )
            ]
        },
        description="vLLM: a Deployment and Service of the upstream vLLM image. KServe: a "
        "KServe LLMInferenceService (serving.kserve.io/v1alpha2); needs KServe's CRDs in the "
        "cluster and the chart's kserve.enabled.",
    )
    serving: Serving = defaulted(
        Serving(),
        description="vLLM settings and compute of each replica; startupTimeoutSeconds bounds "
        "how long a replica may load before its startup probe fails it.",
    )
    gate: Gate | None = Field(
        default=None,
        description="Promote only when these rules hold on an EvalRun's results; without a "
        "gate every spec is promoted once its model exists.",
    )


GateRuleType = Literal["intervalAboveMean", "pairedBetter", "minimumAccuracy"]


class GateCheck(ApiModel):
    """One rule of the gate, with the figures it compared."""

    type: GateRuleType = Field(description="Which rule of spec.gate.rules[] this is.")
    rule: str = Field(description="The rule, in words.", max_length=1024)
    holds: bool = Field(description="Whether it holds.")
    figures: str = Field(description="The figures compared, in words.", max_length=1024)
    values: dict[str, float] = Field(
        default_factory=dict,
        description="The same figures as numbers: candidateCi95Lower, referenceMean, "
        "difference, pValue, alpha, minimum (those the rule compares).",
    )


class GateVerdict(ApiModel):
    """The gate judged for one generation of the spec."""

    generation: int = Field(ge=0, description="metadata.generation of the spec judged.")
    eval_run: str = Field(description="The EvalRun whose results were compared.")
    holds: bool = Field(description="Whether every rule holds.")
    checks: list[GateCheck] = Field(max_length=MAX_RULES, description="Each rule's outcome.")


class PromotedModel(ApiModel):
    """What is served: the spec generation promoted, and on what evidence."""

    generation: int = Field(ge=0, description="metadata.generation of the spec promoted.")
    model_uri: str = Field(description="The full weights served.", max_length=MAX_URI)
    served_model_name: str = Field(description="Name the model answers to.")
    weights_names: list[str] = Field(
        default_factory=list,
        description="Names the full weights answer to: the served name, or `<served name>-base` "
        "when the model served is a LoRA adapter (which then answers to the served name).",
    )
    adapters: list[str] = Field(
        default_factory=list,
        description="Names of the LoRA adapters loaded on the weights, the model's own first "
        "when it is one.",
    )
    adapter_uris: list[str] = Field(
        default_factory=list, description="Where those adapters are, in the same order."
    )
    promoted_at: datetime = Field(description="When it was promoted.")
    gate: GateVerdict | None = Field(
        default=None, description="The gate it passed; absent when the spec had none."
    )


class ModelServingStatus(RunStatus):
    """Observed state of a ModelServing."""

    promoted: PromotedModel | None = Field(
        default=None,
        description="The model being served; kept when a newer spec fails its gate.",
    )
    gate: GateVerdict | None = Field(
        default=None, description="The gate as judged for the current spec."
    )
    server: str | None = Field(
        default=None, description="The Deployment or LLMInferenceService serving it."
    )
    url: str | None = Field(
        default=None, description="Base URL of its OpenAI-compatible API inside the cluster."
    )
    models: list[str] | None = Field(
        default=None, description="Names it answers to: the model, then its adapters."
    )
    replicas: int | None = Field(default=None, ge=0, description="Replicas asked for.")
    ready_replicas: int | None = Field(default=None, ge=0, description="Replicas ready.")
