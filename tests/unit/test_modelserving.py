"""ModelServing's pure parts: the gate judged on an EvalRun's figures, and the objects that
serve a promoted spec — the KServe one checked against KServe's own Python SDK types."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from crucible.api.evalrun import EvalModel, EvalRunStatus
from crucible.api.kinds import MODEL_SERVING
from crucible.api.modelserving import ModelServingSpec
from crucible.config import OperatorConfig
from crucible.devcluster.binaries import cache_dir, versions
from crucible.resources import modelserving as ms
from crucible.resources.common import Owner
from crucible.resources.serving import ServedModel, Server, servers_for

OWNER = Owner(MODEL_SERVING, "assistant", "team", "uid-1")


def figures(tuned: float, p_value: float, *, paired_as: str = "tuned") -> EvalRunStatus:
    """base 0.40 and tuned `tuned`, each with a ±0.05 interval, and their paired test run as
    `paired_as` minus the other."""
    results = [
        {
            "model": model,
            "rag": False,
            "n": 1,
            "questions": 100,
            "accuracyMean": mean,
            "ci95Low": mean - 0.05,
            "ci95High": mean + 0.05,
            "rounds": [mean],
        }
        for model, mean in (("base", 0.40), ("tuned", tuned))
    ]
    a, b = ("tuned", "base") if paired_as == "tuned" else ("base", "tuned")
    sign = 1 if paired_as == "tuned" else -1
    paired = {
        "a": a,
        "aRag": False,
        "b": b,
        "bRag": False,
        "difference": sign * (tuned - 0.40),
        "ci95Low": sign * (tuned - 0.40) - 0.08,
        "ci95High": sign * (tuned - 0.40) + 0.08,
        "test": "McNemar",
        "pValue": p_value,
    }
    return EvalRunStatus.model_validate({"results": results, "pairedTests": [paired]})


def spec(rules: list[dict[str, Any]], candidate: str = "tuned") -> ModelServingSpec:
    gate = {"evalRunRef": {"name": "eval"}, "candidate": {"model": candidate}, "rules": rules}
    return ModelServingSpec.model_validate({"model": {"uri": "hf://org/tuned"}, "gate": gate})


MODELS = [
    EvalModel.model_validate({"name": "base", "uri": "hf://org/base"}),
    EvalModel.model_validate({"name": "tuned", "uri": "hf://org/tuned"}),
]


def judge(rules: list[dict[str, Any]], status: EvalRunStatus, candidate: str = "tuned") -> Any:
    wanted = spec(rules, candidate)
    assert wanted.gate is not None
    return ms.judge(wanted.gate, wanted.model, MODELS, status, generation=3)


def test_the_interval_must_lie_above_the_reference_mean() -> None:
    rule = [{"intervalAboveMean": {"model": "base"}}]
    passed = judge(rule, figures(0.50, 0.01))
    assert passed.holds and passed.generation == 3 and passed.eval_run == "eval"
    (check,) = passed.checks
    assert check.values == pytest.approx({"candidateCi95Lower": 0.45, "referenceMean": 0.40})
    assert check.figures == "tuned: 95% interval [0.450, 0.550]; base: mean 0.400"
    # 0.44 - 0.05 = 0.39 is below 0.40: an overlap is not a win.
    assert not judge(rule, figures(0.44, 0.01)).holds


@pytest.mark.parametrize("paired_as", ["tuned", "base"])
def test_the_paired_test_is_read_in_either_order(paired_as: str) -> None:
    rule = [{"pairedBetter": {"model": "base", "alpha": 0.05}}]
    ahead = judge(rule, figures(0.50, 0.01, paired_as=paired_as))
    assert ahead.holds
    assert ahead.checks[0].values["difference"] == pytest.approx(0.10)
    assert "tuned minus base: +0.100, 95% interval [+0.020, +0.180]" in ahead.checks[0].figures
    assert not judge(rule, figures(0.50, 0.2, paired_as=paired_as)).holds  # not significant
    assert not judge(rule, figures(0.30, 0.01, paired_as=paired_as)).holds  # significantly worse


def test_every_rule_must_hold() -> None:
    rules: list[dict[str, Any]] = [{"minimumAccuracy": 0.4}, {"pairedBetter": {"model": "base"}}]
    verdict = judge(rules, figures(0.50, 0.2))
    assert [c.holds for c in verdict.checks] == [True, False] and not verdict.holds


def test_a_rule_the_eval_run_cannot_answer_names_the_field_and_the_fix() -> None:
    with pytest.raises(
        ms.GateUnevaluableError, match=r"^spec\.gate\.rules\[0\]\.intervalAboveMean"
    ):
        judge([{"intervalAboveMean": {"model": "gpt", "rag": True}}], figures(0.5, 0.01))
    with pytest.raises(ms.GateUnevaluableError, match=r"it scored: base \(rag: false\), tuned"):
        judge([{"minimumAccuracy": 0.1}], figures(0.5, 0.01), candidate="base-v2")
    # The EvalRun pairs results of one RAG setting or one model: not tuned with RAG and base.
    without_rag_pair = EvalRunStatus.model_validate(
        {**figures(0.5, 0.01).to_api(), "pairedTests": []}
    )
    with pytest.raises(ms.GateUnevaluableError, match="same RAG setting or of the same model"):
        judge([{"pairedBetter": {"model": "base"}}], without_rag_pair)


def test_the_candidate_must_be_the_model_served() -> None:
    wanted = spec([{"minimumAccuracy": 0.1}], candidate="base")
    assert wanted.gate is not None
    with pytest.raises(ms.GateUnevaluableError, match=r"from another source than spec\.model"):
        ms.judge(wanted.gate, wanted.model, MODELS, figures(0.5, 0.01), generation=1)


def promoted_spec() -> tuple[ModelServingSpec, Server, Any]:
    wanted = ModelServingSpec.model_validate(
        {
            "model": {"modelRef": {"kind": "FineTuneJob", "name": "tuned"}},
            "servedModelName": "docs",
            "replicas": 2,
            "serving": {
                "resources": {"gpus": 1, "tolerations": [{"key": "gpu", "operator": "Exists"}]}
            },
        }
    )
    # The model is the FineTuneJob's adapter, answering to the served name; faq rides along.
    (served,) = servers_for(
        [
            ServedModel(
                "docs", "hf://org/base", "pvc://models/team/tuned/adapter", ("q_proj", "v_proj")
            ),
            ServedModel("faq", "hf://org/base", "s3://bucket/faq", ("v_proj",)),
        ]
    )
    at = datetime(2026, 11, 23, tzinfo=UTC)
    return wanted, served, ms.promotion(OWNER, wanted, served, 4, None, at)


def test_a_promoted_adapter_answers_to_the_served_name_on_its_base() -> None:
    wanted, resolved, promoted = promoted_spec()
    deployment, service = ms.serving_objects(OWNER, wanted, resolved, promoted, OperatorConfig())
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--served-model-name") + 1] == "docs-base"
    assert "docs=/mnt/pvc/models/team/tuned/adapter" in args
    assert args[args.index("--lora-target-modules") + 1 :][:2] == ["q_proj", "v_proj"]
    assert service["metadata"]["name"] == deployment["metadata"]["name"] == "assistant-vllm"
    assert ms.promoted_of(deployment) == promoted


def kserve_check(value: Any, type_name: str) -> dict[str, list[str]]:
    python = cache_dir() / f"kserve-sdk-{versions()['KSERVE_SDK_VERSION']}" / "bin" / "python"
    if not python.exists():
        pytest.fail(f"KServe's SDK is not installed at {python}: run hack/setup.sh")
    checked = subprocess.run(
        [str(python), str(Path(__file__).with_name("kserve_types.py"))],
        input=json.dumps({"object": value, "type": type_name}),
        capture_output=True,
        text=True,
        check=True,
    )
    found: dict[str, list[str]] = json.loads(checked.stdout)
    return found


def test_the_kserve_object_matches_kserves_api_types() -> None:
    wanted, resolved, promoted = promoted_spec()
    wanted = wanted.model_copy(update={"runtime": "KServe"})
    (body,) = ms.serving_objects(OWNER, wanted, resolved, promoted, OperatorConfig())
    whole = kserve_check(body, "V1alpha2LLMInferenceService")
    assert whole["problems"] == []
    # The SDK names the spec's type but does not ship it (0.18.1 to 0.21.0): its pod
    # template is a core/v1 PodSpec (LLMInferenceServiceSpec's WorkloadSpec), checked as one.
    assert whole["unchecked"] == [".spec (V1alpha2LLMInferenceServiceSpec)"]
    assert kserve_check(body["spec"]["template"], "V1PodSpec") == {"problems": [], "unchecked": []}
    # LLMModelSpec (llm_inference_service_types.go): uri, name, lora.adapters[] of the same.
    model = body["spec"]["model"]
    assert model == {
        "uri": "hf://org/base",
        "name": "docs-base",
        "lora": {
            "adapters": [
                {"uri": "pvc://models/team/tuned/adapter", "name": "docs"},
                {"uri": "s3://bucket/faq", "name": "faq"},
            ]
        },
    }
    assert body["spec"]["replicas"] == 2
    assert ms.promoted_of(body) == promoted


def test_the_kserve_check_catches_a_misspelt_field() -> None:
    wrong = {"containers": [{"name": "main", "resource": {}}], "tolerations": [{"key": 1}]}
    found = kserve_check(wrong, "V1PodSpec")
    assert found["problems"] == [
        ".containers[0].resource: Extra inputs are not permitted",
        ".tolerations[0].key: Input should be a valid string",
    ]
    assert kserve_check({"containers": [{}]}, "V1PodSpec")["problems"] == [
        ".containers[0].name: Field required"
    ]
    # KServe's own types are walked field by field.
    top = {"apiVersion": "serving.kserve.io/v1alpha2", "kind": "LLMInferenceService", "spek": {}}
    assert kserve_check(top, "V1alpha2LLMInferenceService")["problems"] == [
        ".spek: not a field of V1alpha2LLMInferenceService"
    ]
