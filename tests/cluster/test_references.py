"""References that can never resolve fail at once, on the real control plane: a reference
cycle of any length, across kinds, fails every run in it with InvalidReference and the whole
cycle named, including one that only closes when its last resource is created. (A resource
naming itself is refused by the API server: tests/invalid/.)"""

from __future__ import annotations

from typing import Any

from crucible.devcluster.cluster import LocalCluster
from tests.cluster.conftest import OperatorFactory, ready_condition, wait_phase

API = "crucible.dev/v1alpha1"
QA = {"configMap": {"name": "qa", "key": "qa.jsonl"}}


def fine_tune(name: str, kind: str, target: str) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {"baseModel": {"modelRef": {"kind": kind, "name": target}}, "dataset": QA},
    }


def merge(name: str, kind: str, target: str) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "ModelMerge",
        "metadata": {"name": name},
        "spec": {
            "method": "linear",
            "models": [{"uri": "hf://org/a"}, {"modelRef": {"kind": kind, "name": target}}],
        },
    }


def invalid_reference(cluster: LocalCluster, namespace: str, kind: str, name: str) -> str:
    status = wait_phase(cluster, namespace, kind, name, "Failed", timeout=30)
    ready = ready_condition(status)
    assert ready["reason"] == "InvalidReference", ready
    message: str = ready["message"]
    return message


def test_a_two_cycle_fails_both_runs_naming_the_cycle(
    cluster: LocalCluster, namespace: str, operator: OperatorFactory
) -> None:
    with operator():
        cluster.kubectl_apply(
            [fine_tune("a", "FineTuneJob", "b"), fine_tune("b", "FineTuneJob", "a")],
            "-n",
            namespace,
        )
        assert invalid_reference(cluster, namespace, "finetunejob", "a").startswith(
            "spec.baseModel.modelRef: a reference cycle, FineTuneJob 'a' → FineTuneJob 'b' → "
            "FineTuneJob 'a': each would wait for the other for ever; remove one of these "
            "references"
        )
        assert "FineTuneJob 'b' → FineTuneJob 'a' → FineTuneJob 'b'" in invalid_reference(
            cluster, namespace, "finetunejob", "b"
        )


def test_a_three_cycle_across_kinds_and_one_closed_late_fail_at_once(
    cluster: LocalCluster, namespace: str, operator: OperatorFactory
) -> None:
    """m merges f, f fine-tunes g, g merges m. Created in two steps: m and f wait for what
    is missing (DependencyNotFound), and the cycle is found once g exists."""
    with operator():
        cluster.kubectl_apply(
            [merge("m", "FineTuneJob", "f"), fine_tune("f", "ModelMerge", "g")],
            "-n",
            namespace,
        )
        waiting = wait_phase(cluster, namespace, "finetunejob", "f", "Waiting", timeout=30)
        assert ready_condition(waiting)["reason"] == "DependencyNotFound"
        assert (
            ready_condition(
                wait_phase(cluster, namespace, "modelmerge", "m", "Waiting", timeout=30)
            )["reason"]
            == "WaitingForDependency"
        )

        cluster.kubectl_apply([merge("g", "ModelMerge", "m")], "-n", namespace)
        assert (
            "ModelMerge 'm' → FineTuneJob 'f' → ModelMerge 'g' → ModelMerge 'm'"
            in invalid_reference(cluster, namespace, "modelmerge", "m")
        )
        assert (
            "FineTuneJob 'f' → ModelMerge 'g' → ModelMerge 'm' → FineTuneJob 'f'"
            in invalid_reference(cluster, namespace, "finetunejob", "f")
        )
        assert (
            "ModelMerge 'g' → ModelMerge 'm' → FineTuneJob 'f' → ModelMerge 'g'"
            in invalid_reference(cluster, namespace, "modelmerge", "g")
        )
