"""ModelServing on the real control plane: a spec is promoted only when its gate holds on an
EvalRun's results, a later spec that fails its gate leaves the model promoted before serving,
and what cannot be judged waits or fails naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client import REGISTRY, generate_latest

from crucible.devcluster.cluster import LocalCluster
from tests.cluster.conftest import (
    HOLD_IMAGE,
    OperatorFactory,
    finish_pod,
    running_pod,
    status_of,
    wait_phase,
)
from tests.cluster.test_reconcile import objects
from tests.conftest import wait_for
from tests.manifests import API, gated_serving, inputs, scored_eval_run, scored_report

(MCQ,) = [doc for doc in inputs() if doc["metadata"]["name"] == "mcq"]


def finish_eval(
    cluster: LocalCluster, namespace: str, name: str, tuned: float, p_value: float
) -> None:
    """Play the eval workload: base scores 0.40, tuned `tuned`, with their paired test."""
    pod = running_pod(cluster, namespace, f"{name}-eval")
    finish_pod(cluster, namespace, pod, report=scored_report(tuned, p_value))
    wait_phase(cluster, namespace, "er", name, "Succeeded")


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    (found,) = [c for c in status.get("conditions") or [] if c["type"] == kind]
    return found


def served_model(cluster: LocalCluster, namespace: str) -> tuple[str, list[str]]:
    (deployment,) = objects(cluster, namespace, "deployment", "assistant")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    return deployment["metadata"]["uid"], args


def wait_promoted(
    cluster: LocalCluster, namespace: str, promoted: bool, reason: str
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        status = status_of(cluster, namespace, "msv", "assistant")
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        found = conditions.get("Promoted")
        wanted = "True" if promoted else "False"
        generation = json.loads(
            cluster.kubectl("get", "msv", "assistant", "-n", namespace, "-o", "json").stdout
        )["metadata"]["generation"]
        if (
            found
            and found["status"] == wanted
            and found["reason"] == reason
            and found.get("observedGeneration") == generation
        ):
            return status
        return None

    status: dict[str, Any] = wait_for(reached, what=f"Promoted={promoted} ({reason})")
    return status


@pytest.mark.pod_security_baseline  # vLLM's image runs as root
def test_a_gated_promotion_serves_on_pass_and_keeps_the_previous_model_on_fail(  # noqa: PLR0915
    cluster: LocalCluster, namespace: str, model_store: str, operator: OperatorFactory
) -> None:
    apply = lambda docs: cluster.kubectl_apply(docs, "-n", namespace)  # noqa: E731
    apply([MCQ])
    with operator(CRUCIBLE_EVAL_IMAGE=HOLD_IMAGE):
        # The gate's EvalRun does not exist yet: the ModelServing waits, naming the field.
        apply([gated_serving("hf://org/tuned-v1", "eval-v1")])
        waiting = wait_phase(cluster, namespace, "msv", "assistant", "Waiting")
        ready = condition(waiting, "Ready")
        assert ready["reason"] == "DependencyNotFound"
        assert "spec.gate.evalRunRef.name: EvalRun 'eval-v1' does not exist" in ready["message"]
        assert objects(cluster, namespace, "deployment", "assistant") == []

        # v1 beats the base model: its interval [0.55, 0.65] lies above 0.40, p = 0.001.
        apply([scored_eval_run("eval-v1", "hf://org/tuned-v1")])
        finish_eval(cluster, namespace, "eval-v1", tuned=0.60, p_value=0.001)
        live = wait_phase(cluster, namespace, "msv", "assistant", "Running")
        assert live["promoted"]["generation"] == 1
        assert live["promoted"]["modelUri"] == "hf://org/tuned-v1"
        assert live["promoted"]["gate"]["holds"] is True
        checks = live["promoted"]["gate"]["checks"]
        assert "[0.550, 0.650]" in checks[0]["figures"] and "mean 0.400" in checks[0]["figures"]
        assert "+0.200" in checks[1]["figures"] and "p = 0.001" in checks[1]["figures"]
        assert live["url"] == f"http://assistant-vllm.{namespace}.svc:8000/v1"
        assert live["models"] == ["assistant"]
        assert live["replicas"] == 2
        wait_for(
            lambda: status_of(cluster, namespace, "msv", "assistant").get("readyReplicas") == 2,
            what="both replicas ready",
        )
        assert condition(live, "Ready")["status"] == "True"
        uid, args = served_model(cluster, namespace)
        assert args[:2] == ["--model", "org/tuned-v1"]
        assert args[args.index("--served-model-name") + 1] == "assistant"

        # v2 does not: 0.42 against 0.40, p = 0.6. It is not promoted; v1 keeps serving.
        apply([scored_eval_run("eval-v2", "hf://org/tuned-v2")])
        finish_eval(cluster, namespace, "eval-v2", tuned=0.42, p_value=0.6)
        apply([gated_serving("hf://org/tuned-v2", "eval-v2")])
        held = wait_promoted(cluster, namespace, False, "GateNotMet")
        assert held["phase"] == "Running"
        assert held["promoted"]["generation"] == 1
        assert held["promoted"]["modelUri"] == "hf://org/tuned-v1"
        assert held["gate"]["generation"] == 2 and held["gate"]["holds"] is False
        message = condition(held, "Promoted")["message"]
        assert "generation 2 is not promoted" in message
        assert "[0.370, 0.470]" in message and "mean 0.400" in message
        assert "p = 0.6" in message
        assert "serving assistant (generation 1)" in condition(held, "Ready")["message"]
        assert served_model(cluster, namespace) == (uid, args)
        # /metrics: the live model with its promotion's figures; the current spec failed.
        metrics = generate_latest(REGISTRY).decode()
        live_labels = (
            f'model="assistant",model_uri="hf://org/tuned-v1",modelserving="assistant",'
            f'namespace="{namespace}"'
        )
        assert f'crucible_model_serving_info{{generation="1",{live_labels}}} 1.0' in metrics
        assert (
            f'crucible_model_serving_promoted_gate_value{{evalrun="eval-v1",figure="pValue",'
            f'modelserving="assistant",namespace="{namespace}",rule="rules[1]"}} 0.001'
        ) in metrics
        assert (
            f'crucible_model_serving_gate_holds{{evalrun="eval-v2",generation="2",'
            f'modelserving="assistant",namespace="{namespace}"}} 0.0'
        ) in metrics

        # A gate on a model the EvalRun did not score cannot be judged: it says which field
        # and what the EvalRun has; v1 still serves.
        apply([gated_serving("hf://org/tuned-v2", "eval-v2", candidate="tuned-v3")])
        unjudged = wait_promoted(cluster, namespace, False, "InvalidReference")
        message = condition(unjudged, "Promoted")["message"]
        assert message.startswith("spec.gate.candidate: EvalRun 'eval-v2' has no result for")
        assert "base (rag: false), tuned (rag: false)" in message
        assert unjudged["promoted"]["generation"] == 1

        # A gate whose candidate is another model than the one served refuses to promote it.
        apply([gated_serving("hf://org/tuned-v3", "eval-v1")])
        other = wait_promoted(cluster, namespace, False, "InvalidReference")
        assert (
            "scored 'tuned' from another source than spec.model"
            in condition(other, "Promoted")["message"]
        )

        # Back to v1's own evaluation with two replicas more: promoted in place, same object.
        spec = gated_serving("hf://org/tuned-v1", "eval-v1")
        spec["spec"]["replicas"] = 3
        apply([spec])
        again = wait_promoted(cluster, namespace, True, "Promoted")
        assert again["promoted"]["generation"] == 5
        assert again["promoted"]["promotedAt"] == live["promoted"]["promotedAt"]
        assert served_model(cluster, namespace)[0] == uid

        # Without a gate the spec is promoted as it is, and the last verdict leaves the status
        # and /metrics (a merge of the new status alone would have kept it).
        assert again["gate"]["holds"] is True
        del spec["spec"]["gate"]
        apply([spec])
        ungated = wait_promoted(cluster, namespace, True, "Promoted")
        assert ungated["promoted"]["generation"] == 6 and "gate" not in ungated["promoted"]
        assert "gate" not in ungated
        metrics = generate_latest(REGISTRY).decode()
        assert f'crucible_model_serving_info{{generation="6",{live_labels}}} 1.0' in metrics
        assert not [
            line
            for line in metrics.splitlines()
            if line.startswith("crucible_model_serving_gate_holds{") and namespace in line
        ]

    # The runtime cannot change under a live server.
    refused = cluster.kubectl(
        "patch", "msv", "assistant", "-n", namespace, "--type=merge",
        "-p", '{"spec": {"runtime": "KServe"}}', check=False,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "spec.runtime cannot change" in refused.stderr


@pytest.mark.pod_security_baseline
def test_a_restart_keeps_serving_the_promoted_model(
    cluster: LocalCluster, namespace: str, model_store: str, operator: OperatorFactory
) -> None:
    spec = {
        "apiVersion": API,
        "kind": "ModelServing",
        "metadata": {"name": "assistant"},
        "spec": {"model": {"uri": "hf://org/base"}, "serving": {"resources": {"gpus": 0}}},
    }
    with operator():
        cluster.kubectl_apply([spec], "-n", namespace)
        before = wait_phase(cluster, namespace, "msv", "assistant", "Running")
        uid, args = served_model(cluster, namespace)
        assert before["promoted"]["generation"] == 1 and "gate" not in before["promoted"]
        # The status is lost (a restore from backup, say): it is derived again from the
        # Deployment, which is left as it is.
        cluster.kubectl(
            "patch", "msv", "assistant", "-n", namespace, "--subresource=status",
            "--type=json", "-p", '[{"op": "remove", "path": "/status"}]',
        )  # fmt: skip
    with operator():
        after = wait_phase(cluster, namespace, "msv", "assistant", "Running")
        assert after["promoted"] == before["promoted"]
        assert served_model(cluster, namespace) == (uid, args)


def test_what_cannot_be_served_yet_waits_naming_the_field(
    cluster: LocalCluster, namespace: str, operator: OperatorFactory
) -> None:
    adapter = {
        "apiVersion": API,
        "kind": "ModelServing",
        "metadata": {"name": "adapter"},
        "spec": {"model": {"modelRef": {"kind": "FineTuneJob", "name": "tuned"}}},
    }
    kserve = {
        "apiVersion": API,
        "kind": "ModelServing",
        "metadata": {"name": "kserve"},
        "spec": {"model": {"uri": "hf://org/base"}, "runtime": "KServe"},
    }
    with operator():
        cluster.kubectl_apply([adapter, kserve], "-n", namespace)
        waiting = wait_phase(cluster, namespace, "msv", "adapter", "Waiting")
        message = condition(waiting, "Ready")["message"]
        assert message.startswith("spec.model.modelRef: FineTuneJob 'tuned' does not exist")
        no_kserve = wait_phase(cluster, namespace, "msv", "kserve", "Waiting")
        ready = condition(no_kserve, "Ready")
        assert ready["reason"] == "RuntimeNotInstalled"
        assert "serving.kserve.io/v1alpha2" in ready["message"]
