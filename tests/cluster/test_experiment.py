"""Experiment on the real control plane: the fan-out (names, owner references, labels), the
bound on children at once, a failing child, a restart mid-way that duplicates nothing, the
ranking and the held-out verdict, and deletion. The training and eval images are held: the
test plays the workloads (their reports) and the kubelet (their pods ending)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

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
from tests.manifests import (
    MAX_CONCURRENT_JOBS,
    experiment,
    experiment_inputs,
    judged,
    rank_report,
    task_of,
    verdict_report,
)


def children(cluster: LocalCluster, namespace: str) -> dict[str, dict[str, Any]]:
    """The experiment's child runs and Jobs by name."""
    found = {}
    for kind in ("finetunejobs", "evalruns", "jobs"):
        for item in objects(cluster, namespace, kind, "search"):
            found[f"{item['kind']}/{item['metadata']['name']}"] = item
    return found


def active(found: dict[str, dict[str, Any]]) -> int:
    """Children running: runs not finished, and ranking Jobs not complete."""
    running = 0
    for item in found.values():
        if item["kind"] == "Job":
            conditions = (item.get("status") or {}).get("conditions") or []
            running += not any(c["type"] in ("Complete", "Failed") for c in conditions)
        else:
            running += (item.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    return running


def settle(cluster: LocalCluster, namespace: str, expected: set[str]) -> dict[str, dict[str, Any]]:
    """Wait for exactly `expected` children, then make sure no more come and the bound holds."""
    found = wait_for(
        lambda: (f := children(cluster, namespace)) and set(f) >= expected and f,
        what=f"children {sorted(expected)}",
    )
    time.sleep(1.0)  # room for a reconcile that would wrongly start more
    found = children(cluster, namespace)
    assert set(found) == expected, sorted(set(found) ^ expected)
    assert active(found) <= MAX_CONCURRENT_JOBS, {
        k: (v.get("status") or {}).get("phase") for k, v in found.items()
    }
    return found


def finish_job(
    cluster: LocalCluster,
    namespace: str,
    job: str,
    report: dict[str, Any] | None = None,
    *,
    exit_code: int = 0,
) -> None:
    """The held pod of `job` ends, leaving `report` as its termination message."""
    pod = running_pod(cluster, namespace, job)
    finish_pod(cluster, namespace, pod, exit_code, report=report)


@pytest.mark.pod_security_baseline
def test_an_experiment_fans_out_within_its_bound_and_reaches_a_verdict(  # noqa: PLR0915
    cluster: LocalCluster, namespace: str, model_store: str, operator: OperatorFactory
) -> None:
    cluster.kubectl_apply(experiment_inputs(), "-n", namespace)
    held = {"CRUCIBLE_TRAIN_IMAGE": HOLD_IMAGE, "CRUCIBLE_EVAL_IMAGE": HOLD_IMAGE}
    with operator(**held):
        cluster.kubectl_apply([experiment()], "-n", namespace)
        expected = {"FineTuneJob/search-a-docs", "FineTuneJob/search-b-docs"}
        found = settle(cluster, namespace, expected)
        tuned = found["FineTuneJob/search-a-docs"]
        (reference,) = tuned["metadata"]["ownerReferences"]
        assert (reference["kind"], reference["name"], reference["controller"]) == (
            "Experiment",
            "search",
            True,
        )
        assert tuned["metadata"]["labels"]["crucible.dev/kind"] == "Experiment"
        assert tuned["spec"]["baseModel"] == {"uri": "pvc://crucible-models/models/a"}
        assert tuned["spec"]["dataset"]["configMap"]["name"] == "docs-qa"
        progress = wait_for(
            lambda: (
                (p := status_of(cluster, namespace, "experiment", "search").get("progress"))
                and p["fineTuneJobs"]["notStarted"] == 2
                and p
            ),
            what="the progress counts",
        )
        assert progress["stage"] == "Search" and progress["active"] == MAX_CONCURRENT_JOBS

        # One fine-tune fails, the other succeeds: the task is evaluated without the failed
        # one (against the baseline), and the next task's first fine-tune takes a slot.
        finish_job(cluster, namespace, "search-b-docs-train", exit_code=1)
        finish_job(cluster, namespace, "search-a-docs-train")
        expected |= {"EvalRun/search-docs", "FineTuneJob/search-a-ops"}
        found = settle(cluster, namespace, expected)
        models = found["EvalRun/search-docs"]["spec"]["models"]
        assert [m["name"] for m in models] == ["a", "hosted"]
        assert models[0]["modelRef"] == {"kind": "FineTuneJob", "name": "search-a-docs"}
        uids = {name: item["metadata"]["uid"] for name, item in found.items()}

    # The operator restarts mid-search: it adopts what exists and makes nothing twice.
    with operator(**held):
        found = settle(cluster, namespace, expected)
        assert {name: item["metadata"]["uid"] for name, item in found.items()} == uids
        failure = wait_for(
            lambda: (
                status_of(cluster, namespace, "experiment", "search").get("failures") or [None]
            )[0],
            what="the failed fine-tune to be reported",
        )
        assert (failure["name"], failure["reason"]) == ("search-b-docs", "Error")
        assert failure["consequence"] == "candidate b is not judged on task docs"

        finish_job(cluster, namespace, "search-docs-eval", judged(["a", "hosted"]))
        expected.add("FineTuneJob/search-b-ops")
        settle(cluster, namespace, expected)
        finish_job(cluster, namespace, "search-a-ops-train")
        finish_job(cluster, namespace, "search-b-ops-train")
        expected.add("EvalRun/search-ops")
        settle(cluster, namespace, expected)
        finish_job(cluster, namespace, "search-ops-eval", judged(["b", "a", "hosted"]))

        # The ranking Job pools the verdicts of both tasks from the model store.
        expected.add("Job/search-rank")
        settle(cluster, namespace, expected)
        rank_task = task_of(
            json.loads(
                cluster.kubectl("get", "job", "search-rank", "-n", namespace, "-o", "json").stdout
            )
        )
        assert [t["judgementsPath"] for t in rank_task["tasks"]] == [
            f"/models/{namespace}/evalruns/search-docs/judgements.jsonl",
            f"/models/{namespace}/evalruns/search-ops/judgements.jsonl",
        ]
        finish_job(cluster, namespace, "search-rank", rank_report(namespace))

        # b won: b (the top one) and the baseline candidate a go on to the held-out task.
        expected |= {"FineTuneJob/search-b-faq", "FineTuneJob/search-a-faq"}
        settle(cluster, namespace, expected)
        status = status_of(cluster, namespace, "experiment", "search")
        assert [r["model"] for r in status["ranking"]] == ["b", "a", "hosted"]
        assert status["comparisons"] == 24 and status["progress"]["stage"] == "HeldOut"
        assert [t["task"] for t in status["taskRankings"]] == ["docs", "ops"]
        finish_job(cluster, namespace, "search-b-faq-train")
        finish_job(cluster, namespace, "search-a-faq-train")
        expected.add("EvalRun/search-faq")
        settle(cluster, namespace, expected)
        finish_job(cluster, namespace, "search-faq-eval", judged(["b", "a", "hosted"]))
        expected.add("Job/search-verdict")
        settle(cluster, namespace, expected)
        finish_job(cluster, namespace, "search-verdict", verdict_report())
        done = wait_phase(cluster, namespace, "experiment", "search", "Succeeded")
        assert done["heldOut"]["holds"] is True and done["progress"]["stage"] == "Done"
        assert "on faq its lead over a holds" in done["conditions"][0]["message"]
        settle(cluster, namespace, expected)  # nothing more once done

        # Deleting the experiment takes its children with it.
        cluster.kubectl("delete", "experiment", "search", "-n", namespace)
        wait_for(
            lambda: not children(cluster, namespace), timeout=60, what="the children to be removed"
        )


def small_experiment() -> dict[str, Any]:
    """One candidate, one task and a hosted baseline: the shortest way to a verdict."""
    doc = experiment()
    doc["metadata"]["name"] = "small"
    doc["spec"]["candidates"] = doc["spec"]["candidates"][:1]
    doc["spec"]["tasks"] = doc["spec"]["tasks"][:1]
    return doc


def play_small_experiment(cluster: LocalCluster, namespace: str) -> dict[str, Any]:
    """Run `small_experiment` to its verdict with an operator whose training Jobs complete by
    themselves (kwok) and whose eval-image Jobs are held: end their pods with their reports.
    Returns the final status."""
    cluster.kubectl_apply([*experiment_inputs(), small_experiment()], "-n", namespace)
    models = ["a", "hosted"]
    finish_job(cluster, namespace, "small-docs-eval", judged(models))
    ranking = [
        {"model": m, "baseline": m == "hosted", "rating": r, "ci95Low": r - 40, "ci95High": r + 40}
        for m, r in (("a", 1040.0), ("hosted", 960.0))
    ]
    finish_job(cluster, namespace, "small-rank", {"comparisons": 12, "ranking": ranking})
    finish_job(cluster, namespace, "small-faq-eval", judged(models))
    verdict = {
        "task": "faq",
        "winner": "a",
        "runnerUp": "hosted",
        "ratingDifference": 80.0,
        "ci95Low": -10.0,
        "ci95High": 170.0,
        "comparisons": 12,
        "holds": False,
        "ratings": judged(models)["judgeRatings"],
    }
    finish_job(cluster, namespace, "small-verdict", {"comparisons": 12, "heldOut": verdict})
    return wait_phase(cluster, namespace, "experiment", "small", "Succeeded")
