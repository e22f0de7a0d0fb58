"""Every kind's reconcile flow on the in-memory API server (tests/unit/fakeapi.py): waiting on
what a spec names, children created once, status from the children and the workload's
report, failures explained, deletion, and an operator killed after any of its writes. The
same stories run on the real control plane in tests/cluster/, which witnesses this tier."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import REGISTRY, generate_latest

from tests.manifests import (
    COUNTS,
    eval_run,
    finetune,
    finetune_on,
    inputs,
    merge,
    rag_index,
    result,
    synthetic,
)
from tests.unit.fakeapi import FakeApiServer, Operator

Story = Callable[[FakeApiServer, Operator], Awaitable[None]]


def story(told: Story) -> Callable[[], None]:
    """A test told as a story on a fresh API server, with an operator running on it."""

    def test() -> None:
        async def main() -> None:
            api = FakeApiServer()
            await told(api, Operator(api))

        asyncio.run(main())

    test.__doc__ = told.__doc__
    return test


def status(api: FakeApiServer, kind: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = api.read(kind, name).get("status") or {}
    return found


def ready(api: FakeApiServer, kind: str, name: str) -> dict[str, Any]:
    (found,) = [c for c in status(api, kind, name)["conditions"] if c["type"] == "Ready"]
    return found


def owned(api: FakeApiServer, kind: str, owner: str) -> list[str]:
    return sorted(
        n
        for (_, k, _, n), o in api.objects.items()
        if k == kind and (o["metadata"].get("labels") or {}).get("crucible.dev/name") == owner
    )


def conflicts(api: FakeApiServer) -> int:
    """Creates the API server refused because the name was taken."""
    return sum(1 for refused in api.refused if refused.startswith("409 POST"))


@story
async def test_a_chain_waits_for_its_inputs_then_runs_each_step_once_with_lineage(  # noqa: PLR0915 (one story, told whole)
    api: FakeApiServer, operator: Operator
) -> None:
    for doc in inputs():
        api.apply(doc)
    # Applied in the "wrong" order: each waits for what it references.
    api.apply(eval_run())
    api.apply(finetune())
    await operator.settle()
    assert status(api, "FineTuneJob", "tuned")["phase"] == "Waiting"
    assert ready(api, "FineTuneJob", "tuned")["reason"] == "DependencyNotFound"
    assert "ModelMerge 'merged' does not exist" in ready(api, "FineTuneJob", "tuned")["message"]
    assert status(api, "EvalRun", "bench")["phase"] == "Waiting"
    assert owned(api, "Job", "tuned") == owned(api, "Job", "bench") == []

    api.apply(merge())
    api.apply(rag_index())
    await operator.settle()
    assert status(api, "ModelMerge", "merged")["phase"] == "Running"
    assert owned(api, "Job", "merged") == ["merged-merge"]
    assert owned(api, "ConfigMap", "merged") == ["merged-merge", "merged-report"]
    # Reconciling again, with nothing changed, writes nothing.
    writes = len(api.writes)
    operator.engine.lead(False)
    operator.engine.lead(True)  # a new leader looks at every run once
    await operator.settle()
    assert api.writes[writes:] == []

    api.job_ends("merged-merge")
    await operator.settle()
    merged = status(api, "ModelMerge", "merged")
    assert merged["phase"] == "Succeeded"
    assert merged["outputUri"] == "pvc://crucible-models/ns/modelmerges/merged/"
    assert merged["jobName"] == "merged-merge" and merged["startTime"]
    assert merged["observedGeneration"] == 1 and merged["completionTime"]

    # The fine-tune starts on the merge's output, and reports progress while it trains.
    tuned = status(api, "FineTuneJob", "tuned")
    assert tuned["phase"] == "Running" and tuned["baseModelUri"] == merged["outputUri"]
    api.job_pod("tuned-train")
    api.report("tuned", {"progress": {"step": 5, "totalSteps": 10, "loss": 1.5}})
    await operator.settle()
    assert status(api, "FineTuneJob", "tuned")["progress"]["step"] == 5
    api.job_ends("tuned-train")
    await operator.settle()
    tuned = status(api, "FineTuneJob", "tuned")
    assert tuned["phase"] == "Succeeded"
    assert tuned["adapterUri"].endswith("/finetunejobs/tuned/adapter/")
    assert tuned["outputUri"] == tuned["adapterUri"]

    api.report("docs", {"documents": 1, "chunks": 3, "contentHash": "sha256:abc"})
    api.job_ends("docs-rag")
    await operator.settle()
    docs = status(api, "RagIndex", "docs")
    assert (docs["phase"], docs["documents"], docs["chunks"]) == ("Succeeded", 1, 3)
    assert docs["contentHash"] == "sha256:abc" and docs["lastIndexedTime"]

    # The EvalRun serves merged with vLLM, tuned as an adapter on the same server; its Job
    # starts once the server is Available.
    bench = status(api, "EvalRun", "bench")
    assert bench["phase"] == "Running" and bench["servers"] == ["bench-vllm-merged"]
    assert ready(api, "EvalRun", "bench")["reason"] == "StartingServers"
    assert owned(api, "Deployment", "bench") == owned(api, "Service", "bench")
    assert owned(api, "Job", "bench") == []
    args = api.read("Deployment", "bench-vllm-merged")["spec"]["template"]["spec"]["containers"][0][
        "args"
    ]
    assert args[:2] == ["--model", "/models/ns/modelmerges/merged"]
    assert "tuned=/models/ns/finetunejobs/tuned/adapter" in args
    api.set_status(
        "Deployment",
        "bench-vllm-merged",
        {"conditions": [{"type": "Available", "status": "True"}]},
    )
    await operator.settle()
    assert owned(api, "Job", "bench") == ["bench-eval"]
    api.report(
        "bench",
        {
            "results": [
                result("merged", True, [0.46, 0.48, 0.49]),
                result("tuned", True, [0.56, 0.58, 0.59]),
                result("gpt", True, [0.55, 0.57, 0.58]),
            ],
            "resultsUri": "pvc://crucible-models/ns/evalruns/bench/",
        },
    )
    api.job_ends("bench-eval")
    await operator.settle()
    bench = status(api, "EvalRun", "bench")
    assert bench["phase"] == "Succeeded"
    assert bench["bestModel"] == "tuned (RAG)"
    assert bench["bestAccuracy"] == round((0.56 + 0.58 + 0.59) / 3, 4)
    assert [r["model"] for r in bench["results"]] == ["merged", "tuned", "gpt"]
    # The servers were the run's alone: gone once it is done.
    assert owned(api, "Deployment", "bench") == owned(api, "Service", "bench") == []
    # Children were created once, then only read: no create met a taken name.
    assert conflicts(api) == 0
    events = [o for o in api.objects.values() if o["kind"] == "Event"]
    assert {e["reason"] for e in events} >= {"DependencyNotFound", "Succeeded"}


@story
async def test_failed_jobs_say_why_from_what_the_kubelet_reports(
    api: FakeApiServer, operator: Operator
) -> None:
    for name in ("oom", "crash", "nopull"):
        api.apply(merge(name))
    await operator.settle()
    api.job_ends("oom-merge", exit_code=137, reason="OOMKilled")
    api.job_ends("crash-merge", exit_code=3, message="simulated failure")
    api.job_pod(
        "nopull-merge",
        waiting={"reason": "ErrImagePull", "message": "not found"},
    )
    await operator.settle()
    oom = ready(api, "ModelMerge", "oom")
    assert oom["reason"] == "OOMKilled" and "spec.resources.memory" in oom["message"]
    crash = ready(api, "ModelMerge", "crash")
    assert crash["reason"] == "Error"
    assert crash["message"] == "container merge exited with code 3: simulated failure"
    nopull = status(api, "ModelMerge", "nopull")
    assert (nopull["phase"], ready(api, "ModelMerge", "nopull")["reason"]) == (
        "Failed",
        "ImagePullFailed",
    )
    assert nopull["completionTime"]
    # A Job that can never pull its image would hold a GPU: it is removed, its pod with it.
    assert owned(api, "Job", "nopull") == owned(api, "Pod", "nopull") == []
    assert owned(api, "Job", "crash") == ["crash-merge"]  # kept, for its logs


@story
async def test_lineage_failures_name_the_field_and_a_missing_key_waits(
    api: FakeApiServer, operator: Operator
) -> None:
    for doc in inputs():
        api.apply(doc)
    api.apply(merge("broken"))
    api.apply(finetune("on-broken", base="broken"))
    api.apply(merge("ok"))
    api.apply(finetune("no-key", base="ok", dataset={"configMap": {"name": "qa", "key": "x.csv"}}))
    api.apply(finetune("adapter", base="ok"))
    models = [{"modelRef": {"kind": "FineTuneJob", "name": "adapter"}}, {"uri": "hf://o/b"}]
    api.apply(merge("of-adapter", models=models))
    await operator.settle()
    api.job_ends("broken-merge", exit_code=2, message="no such model")
    api.job_ends("ok-merge")
    await operator.settle()
    failed = ready(api, "FineTuneJob", "on-broken")
    assert failed["reason"] == "DependencyFailed"
    assert failed["message"] == (
        "spec.baseModel.modelRef: ModelMerge 'broken' failed: container merge exited with "
        "code 2: no such model"
    )
    waiting = ready(api, "FineTuneJob", "no-key")
    assert (status(api, "FineTuneJob", "no-key")["phase"], waiting["reason"]) == (
        "Waiting",
        "InputNotFound",
    )
    assert "ConfigMap 'qa' has no key 'x.csv' (it has: qa.csv)" in waiting["message"]
    api.job_ends("adapter-train")
    await operator.settle()
    refused = ready(api, "ModelMerge", "of-adapter")
    assert refused["reason"] == "InvalidReference"
    assert "produces a LoRA adapter, not full weights" in refused["message"]
    assert owned(api, "Job", "of-adapter") == []

    # The key the spec names appears: the waiting run goes on, woken by the ConfigMap.
    qa = api.read("ConfigMap", "qa")
    api.apply({**qa, "data": {**qa["data"], "x.csv": "question,answer\nQ,A\n"}})
    await operator.settle()
    assert status(api, "FineTuneJob", "no-key")["phase"] == "Running"
    assert owned(api, "Job", "no-key") == ["no-key-train"]


@story
async def test_a_deleted_run_takes_its_children_and_its_series_with_it(
    api: FakeApiServer, operator: Operator
) -> None:
    for doc in inputs():
        api.apply(doc)
    hosted = eval_run("hosted")
    hosted["spec"]["models"] = hosted["spec"]["models"][2:]  # an endpoint: nothing to serve
    del hosted["spec"]["rag"]
    api.apply(hosted)
    await operator.settle()
    assert owned(api, "Job", "hosted") == ["hosted-eval"]
    api.report("hosted", {"results": [result("gpt", False, [0.5])]})
    api.job_ends("hosted-eval")
    await operator.settle()
    assert status(api, "EvalRun", "hosted")["phase"] == "Succeeded"
    series = 'crucible_eval_accuracy{dataset="configmap/mcq/mcq.csv",evalrun="hosted"'
    assert series in generate_latest(REGISTRY).decode()
    api.remove("EvalRun", "hosted")
    await operator.settle()
    assert ("EvalRun", "ns", "hosted") not in operator.engine.runs
    # Its Events stay, as they do on a real cluster until they expire.
    assert [n for (_, k, _, n) in api.objects if n.startswith("hosted") and k != "Event"] == []
    assert series not in generate_latest(REGISTRY).decode()


@story
async def test_a_child_name_someone_else_holds_fails_the_run_and_leaves_theirs(
    api: FakeApiServer, operator: Operator
) -> None:
    theirs = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "merged-merge"}}
    api.apply({**theirs, "spec": {"template": {"spec": {"containers": []}}}})
    api.apply(merge())
    await operator.settle()
    failed = ready(api, "ModelMerge", "merged")
    assert failed["reason"] == "ChildConflict"
    assert "Job merged-merge already exists and is not owned by this resource" in failed["message"]
    assert "ownerReferences" not in api.read("Job", "merged-merge")["metadata"]
    assert conflicts(api) == 1


@story
async def test_a_synthetic_dataset_serves_its_teacher_reports_progress_and_feeds_a_fine_tune(
    api: FakeApiServer, operator: Operator
) -> None:
    for doc in inputs():
        api.apply(doc)
    api.apply(finetune_on("qa", "tuned"))
    await operator.settle()
    assert ready(api, "FineTuneJob", "tuned")["message"] == (
        "spec.dataset.datasetRef: SyntheticDataset 'qa' does not exist in namespace ns; "
        "create it or correct spec.dataset.datasetRef"
    )
    api.apply(synthetic())
    await operator.settle()
    assert owned(api, "Deployment", "qa") == ["qa-vllm-teacher"]
    api.set_status(
        "Deployment", "qa-vllm-teacher", {"conditions": [{"type": "Available", "status": "True"}]}
    )
    await operator.settle()
    task = json.loads(api.read("ConfigMap", "qa-synth")["data"]["task.json"])
    assert task["teacher"]["baseUrl"] == "http://qa-vllm-teacher.ns.svc:8000/v1"
    assert (
        "waiting for SyntheticDataset 'qa' to succeed"
        in ready(api, "FineTuneJob", "tuned")["message"]
    )
    api.job_pod("qa-synth")
    api.report("qa", {"documents": 1, "chunks": 4})
    await operator.settle()
    running = status(api, "SyntheticDataset", "qa")
    assert (running["phase"], running["chunks"]) == ("Running", 4)
    api.report("qa", {"documents": 1, "chunks": 4, "pairs": COUNTS, "contentHash": "sha256:abc"})
    api.job_ends("qa-synth")
    await operator.settle()
    done = status(api, "SyntheticDataset", "qa")
    assert done["phase"] == "Succeeded" and done["outputUri"] == (
        "pvc://crucible-models/ns/syntheticdatasets/qa/"
    )
    assert done["pairs"]["kept"] == 9 and done["pairs"]["dropped"]["duplicate"] == 2
    assert owned(api, "Deployment", "qa") == owned(api, "Service", "qa") == []
    train = json.loads(api.read("ConfigMap", "tuned-train")["data"]["task.json"])
    assert train["dataset"]["path"] == "/models/ns/syntheticdatasets/qa/train.jsonl"
