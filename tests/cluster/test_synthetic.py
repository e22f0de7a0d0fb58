"""SyntheticDataset → FineTuneJob(datasetRef) on the real control plane: the teacher is served
for the run and removed after it, the counts reach the status, the fine-tune trains on the
train split, and a failed or mismatched dataset fails the fine-tune saying why."""

from __future__ import annotations

from typing import Any

import pytest

from crucible.devcluster.cluster import LocalCluster
from tests.cluster.conftest import (
    HOLD_IMAGE,
    OperatorFactory,
    finish_pod,
    ready_condition,
    running_pod,
    wait_phase,
)
from tests.cluster.test_reconcile import objects
from tests.conftest import wait_for
from tests.manifests import COUNTS, finetune_on, inputs, synthetic, task_of

FAIL_IMAGE = "kwok.crucible.test/fail:error"


def rendered_task(cluster: LocalCluster, namespace: str, owner: str, job: str) -> dict[str, Any]:
    """The task the operator rendered for a run's Job."""
    (found,) = [
        j for j in objects(cluster, namespace, "job", owner) if j["metadata"]["name"] == job
    ]
    return task_of(found)


@pytest.mark.pod_security_baseline
def test_synthetic_dataset_feeds_a_fine_tune(
    cluster: LocalCluster, namespace: str, model_store: str, operator: OperatorFactory
) -> None:
    apply = lambda docs: cluster.kubectl_apply(docs, "-n", namespace)  # noqa: E731
    apply(inputs())
    with operator(CRUCIBLE_EVAL_IMAGE=HOLD_IMAGE):
        apply([finetune_on("qa", "tuned")])
        waiting = wait_phase(cluster, namespace, "ftj", "tuned", "Waiting")
        assert ready_condition(waiting)["message"] == (
            f"spec.dataset.datasetRef: SyntheticDataset 'qa' does not exist in namespace "
            f"{namespace}; create it or correct spec.dataset.datasetRef"
        )
        apply([synthetic()])

        # The teacher is served for the run; the generation Job asks it.
        pod = running_pod(cluster, namespace, "qa-synth")
        (deployment,) = objects(cluster, namespace, "deployment", "qa")
        assert deployment["metadata"]["name"] == "qa-vllm-teacher"
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[:2] == ["--model", "org/teacher"]
        task = rendered_task(cluster, namespace, "qa", "qa-synth")
        assert task["teacher"]["baseUrl"] == f"http://qa-vllm-teacher.{namespace}.svc:8000/v1"
        assert task["tokenizerUri"] == "hf://org/teacher"
        waiting = wait_phase(cluster, namespace, "ftj", "tuned", "Waiting")
        assert "waiting for SyntheticDataset 'qa' to succeed" in ready_condition(waiting)["message"]

        finish_pod(
            cluster,
            namespace,
            pod,
            report={"documents": 1, "chunks": 4, "pairs": COUNTS, "contentHash": "sha256:abc"},
        )
        done = wait_phase(cluster, namespace, "sds", "qa", "Succeeded")
        assert done["outputUri"] == f"pvc://crucible-models/{namespace}/syntheticdatasets/qa/"
        assert (done["documents"], done["chunks"], done["contentHash"]) == (1, 4, "sha256:abc")
        assert done["pairs"]["kept"] == 9
        assert done["pairs"]["dropped"] == {
            "unparsed": 1,
            "empty": 0,
            "duplicate": 2,
            "tooLong": 0,
            "ungrounded": 1,
            "noContrast": 0,
        }
        wait_for(
            lambda: not objects(cluster, namespace, "deployment", "qa"),
            what="the teacher's Deployment to be removed",
        )
        assert not objects(cluster, namespace, "service", "qa")

        wait_phase(cluster, namespace, "ftj", "tuned", "Succeeded")
        train_task = rendered_task(cluster, namespace, "tuned", "tuned-train")
        assert train_task["dataset"]["path"] == (
            f"/models/{namespace}/syntheticdatasets/qa/train.jsonl"
        )
        assert train_task["dataset"]["format"] == "chat"
        pairs = cluster.kubectl("get", "sds", "qa", "-n", namespace).stdout.splitlines()
        assert pairs[1].split()[1:3] == ["Succeeded", "9"]


def test_a_failed_or_mismatched_dataset_fails_the_fine_tune(
    cluster: LocalCluster, namespace: str, model_store: str, operator: OperatorFactory
) -> None:
    apply = lambda docs: cluster.kubectl_apply(docs, "-n", namespace)  # noqa: E731
    apply(inputs())
    teacher = {"endpoint": {"url": "https://api.example.com/v1", "model": "gpt-4"}}
    with operator(CRUCIBLE_EVAL_IMAGE=HOLD_IMAGE):
        apply(
            [
                synthetic("broken", teacher=teacher, resources={"image": FAIL_IMAGE}),
                synthetic("chat", teacher=teacher),
                finetune_on("broken", "on-broken"),
                finetune_on(
                    "chat",
                    "dpo-on-chat",
                    method="dpo",
                    dataset={"datasetRef": {"name": "chat"}, "format": "preference"},
                ),
            ]
        )
        broken = wait_phase(cluster, namespace, "sds", "broken", "Failed")
        assert not objects(cluster, namespace, "deployment", "broken")  # endpoint: nothing served
        failed = wait_phase(cluster, namespace, "ftj", "on-broken", "Failed")
        assert ready_condition(failed)["reason"] == "DependencyFailed"
        assert ready_condition(failed)["message"].startswith(
            "spec.dataset.datasetRef: SyntheticDataset 'broken' failed: "
        )
        assert ready_condition(broken)["message"] in ready_condition(failed)["message"]

        pod = running_pod(cluster, namespace, "chat-synth")
        finish_pod(cluster, namespace, pod, report={"chunks": 4, "pairs": COUNTS})
        wait_phase(cluster, namespace, "sds", "chat", "Succeeded")
        mismatch = wait_phase(cluster, namespace, "ftj", "dpo-on-chat", "Failed")
        assert ready_condition(mismatch)["reason"] == "InvalidReference"
        assert (
            "SyntheticDataset 'chat' writes chat rows but spec.dataset.format is preference"
            in (ready_condition(mismatch)["message"])
        )
        assert not objects(cluster, namespace, "job", "dpo-on-chat")  # no GPU spent on it
