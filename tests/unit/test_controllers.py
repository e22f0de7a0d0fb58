"""Every kind's reconcile flow on the in-memory API server (tests/unit/fakeapi.py): waiting on
what a spec names, children created once, status from the children and the workload's
report, failures explained, deletion, and an operator killed after any of its writes. The
same stories run on the real control plane in tests/cluster/, which witnesses this tier."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY, generate_latest

from crucible.api.contract import unpack_report
from crucible.api.kinds import KINDS_BY_NAME
from tests.manifests import (
    API,
    COUNTS,
    MAX_CONCURRENT_JOBS,
    eval_run,
    experiment,
    experiment_inputs,
    finetune,
    finetune_on,
    gated_serving,
    inputs,
    judged,
    merge,
    rag_index,
    rank_report,
    result,
    scored_eval_run,
    scored_report,
    synthetic,
    task_of,
    verdict_report,
)
from tests.unit.fakeapi import FakeApiServer, Operator, OperatorGoneError

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
    assert owned(api, "ConfigMap", "merged") == []  # its task rides in the Job
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
    api.rolled_out("bench-vllm-merged")
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
    assert "JobRunning" not in {e["reason"] for e in events}  # the status says it


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
async def test_a_run_ends_with_its_exact_results_from_the_termination_message_alone(
    api: FakeApiServer, operator: Operator
) -> None:
    """An EvalRun whose workload could not push its final report (the operator was away at
    that moment) has the same results from its pod's termination message. One whose report
    outgrew a termination message leaves a summary there, and has the rest from its push; if
    that push was lost too, the summary's results alone."""
    for doc in inputs():
        api.apply(doc)
    for name in ("lost", "large", "summary"):
        run = eval_run(name)
        run["spec"]["models"] = run["spec"]["models"][2:]  # an endpoint: nothing to serve
        del run["spec"]["rag"]
        api.apply(run)
    await operator.settle()
    exact = [{**result("gpt", False, [0.5, 0.52, 0.54]), "scoring": "Generation"}]
    api.report("lost", {"results": exact}, written=False)
    api.job_ends("lost-eval")
    # Paired tests of many models, too many for 4 KiB even compressed.
    many = [
        {
            "a": f"model-{i}",
            "aRag": False,
            "b": f"model-{j}",
            "bRag": True,
            "difference": (i - j) / 50,
            "ci95Low": (i - j) / 50 - 0.1,
            "ci95High": (i - j) / 50 + 0.1,
            "test": "McNemar",
            "pValue": (i * 31 + j) / 997,
        }
        for i in range(32)
        for j in range(i + 1, 32)
    ][:400]
    api.report("large", {"results": exact, "pairedTests": many})
    api.job_ends("large-eval")
    api.report("summary", {"results": exact, "pairedTests": many}, written=False)
    api.job_ends("summary-eval")
    await operator.settle()
    lost = status(api, "EvalRun", "lost")
    assert lost["phase"] == "Succeeded" and lost["results"] == exact
    (large_pod,) = [p for p in api.named("Pod") if p.startswith("large-eval")]
    terminated = api.read("Pod", large_pod)["status"]["containerStatuses"][0]["state"]
    left = unpack_report(terminated["terminated"]["message"])
    assert left is not None and left.left_out == ["pairedTests"] and left.results
    large = status(api, "EvalRun", "large")
    assert large["phase"] == "Succeeded" and large["results"] == exact
    assert large["pairedTests"] == many
    summary = status(api, "EvalRun", "summary")
    assert summary["phase"] == "Succeeded" and summary["results"] == exact
    assert "pairedTests" not in summary


@story
async def test_progress_is_folded_into_one_status_write_per_interval(
    api: FakeApiServer, operator: Operator
) -> None:
    """A fine-tune reporting every second has its progress written at most once per
    CRUCIBLE_PROGRESS_INTERVAL (30 s): the first at once, the latest when the interval ends,
    and the run's end at once."""
    now = [1000.0]
    operator.engine.clock = lambda: now[0]
    for doc in inputs():
        api.apply(doc)
    api.apply(finetune(baseModel={"uri": "hf://org/base"}))
    await operator.settle()
    api.job_pod("tuned-train")
    key = ("FineTuneJob", "ns", "tuned")

    def step(n: int) -> dict[str, Any]:
        return {"progress": {"step": n, "totalSteps": 100, "loss": 2.0 - n / 100}}

    def status_writes() -> int:
        return sum(w.endswith("/finetunejobs/tuned/status") for w in api.writes)

    api.report("tuned", step(1))
    await operator.settle()
    assert status(api, "FineTuneJob", "tuned")["progress"]["step"] == 1
    written = status_writes()
    for n in range(2, 12):  # ten more reports, a second apart
        now[0] += 1
        api.report("tuned", step(n))
        await operator.settle()
    assert status_writes() == written
    assert status(api, "FineTuneJob", "tuned")["progress"]["step"] == 1
    # The reconcile asks to look again when the interval ends, and then writes the latest.
    assert await operator.engine.reconcile(key) == pytest.approx(20)
    now[0] += 20
    await operator.engine.reconcile(key)
    assert status_writes() == written + 1
    assert status(api, "FineTuneJob", "tuned")["progress"]["step"] == 11
    now[0] += 1
    api.report("tuned", step(100))
    api.job_ends("tuned-train")
    await operator.settle()
    done = status(api, "FineTuneJob", "tuned")
    assert done["phase"] == "Succeeded" and done["progress"]["step"] == 100


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
    api.rolled_out("qa-vllm-teacher")
    await operator.settle()
    task = task_of(api.read("Job", "qa-synth"))
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
    train = task_of(api.read("Job", "tuned-train"))
    assert train["dataset"]["path"] == "/models/ns/syntheticdatasets/qa/train.jsonl"


def promoted(api: FakeApiServer) -> dict[str, Any]:
    (found,) = [
        c for c in status(api, "ModelServing", "assistant")["conditions"] if c["type"] == "Promoted"
    ]
    return found


async def evaluated(
    api: FakeApiServer, operator: Operator, name: str, report: dict[str, Any]
) -> None:
    """An EvalRun plays out: its vLLM servers roll out, its workload reports and exits."""
    for server in owned(api, "Deployment", name):
        api.rolled_out(server)
    await operator.settle()
    api.report(name, report)
    api.job_ends(f"{name}-eval")
    await operator.settle()
    assert status(api, "EvalRun", name)["phase"] == "Succeeded"


async def scored(api: FakeApiServer, operator: Operator, name: str, tuned: float, p: float) -> None:
    """An EvalRun of base against `tuned` that has succeeded."""
    api.apply(scored_eval_run(name, f"hf://org/{name}"))
    await operator.settle()
    await evaluated(api, operator, name, scored_report(tuned, p))


@story
async def test_a_gated_model_serving_promotes_on_pass_keeps_the_last_on_fail_and_clears_the_gate(
    api: FakeApiServer, operator: Operator
) -> None:
    (mcq,) = [doc for doc in inputs() if doc["metadata"]["name"] == "mcq"]
    api.apply(mcq)
    api.apply(gated_serving("hf://org/eval-v1", "eval-v1"))
    await operator.settle()
    assert status(api, "ModelServing", "assistant")["phase"] == "Waiting"
    assert ready(api, "ModelServing", "assistant")["message"].startswith(
        "spec.gate.evalRunRef.name: EvalRun 'eval-v1' does not exist"
    )
    assert owned(api, "Deployment", "assistant") == []

    await scored(api, operator, "eval-v1", tuned=0.60, p=0.001)
    live = status(api, "ModelServing", "assistant")
    assert live["phase"] == "Pending" and live["promoted"]["generation"] == 1
    assert live["promoted"]["gate"]["holds"] is True
    assert live["url"] == "http://assistant-vllm.ns.svc:8000/v1"
    (server,) = owned(api, "Deployment", "assistant")
    api.rolled_out(server)
    await operator.settle()
    live = status(api, "ModelServing", "assistant")
    assert (live["phase"], live["readyReplicas"]) == ("Running", 2)
    uid = api.read("Deployment", server)["metadata"]["uid"]

    # v2 does not pass: it is not promoted, and v1 keeps serving from the same Deployment.
    await scored(api, operator, "eval-v2", tuned=0.42, p=0.6)
    api.apply(gated_serving("hf://org/eval-v2", "eval-v2"))
    await operator.settle()
    held = status(api, "ModelServing", "assistant")
    assert promoted(api)["reason"] == "GateNotMet" and promoted(api)["status"] == "False"
    assert held["promoted"]["modelUri"] == "hf://org/eval-v1"
    assert held["gate"]["generation"] == 2 and held["gate"]["holds"] is False
    assert "p = 0.6" in promoted(api)["message"]
    assert api.read("Deployment", server)["metadata"]["uid"] == uid

    # Without a gate the spec is promoted as it is, and the last verdict leaves the status.
    ungated = gated_serving("hf://org/eval-v2", "eval-v2")
    del ungated["spec"]["gate"]
    api.apply(ungated)
    await operator.settle()
    after = status(api, "ModelServing", "assistant")
    assert promoted(api)["reason"] == "Promoted"
    assert after["promoted"]["generation"] == 3 and "gate" not in after["promoted"]
    assert "gate" not in after
    assert api.read("Deployment", server)["metadata"]["uid"] == uid

    # A status lost (a restore from backup) is derived again from the Deployment.
    api.set_status("ModelServing", "assistant", dict.fromkeys(after))
    await Operator(api).settle()
    assert status(api, "ModelServing", "assistant")["promoted"] == after["promoted"]


@story
async def test_a_model_serving_on_kserve_waits_until_its_api_is_installed(
    api: FakeApiServer, operator: Operator
) -> None:
    api.apply(
        {
            "apiVersion": API,
            "kind": "ModelServing",
            "metadata": {"name": "kserve"},
            "spec": {"model": {"uri": "hf://org/base"}, "runtime": "KServe"},
        }
    )
    await operator.settle()
    assert ready(api, "ModelServing", "kserve")["reason"] == "RuntimeNotInstalled"
    api.api_groups.add("/apis/serving.kserve.io/v1alpha2")
    operator.engine.queue.add(("ModelServing", "ns", "kserve"))  # the resync's next pass
    await operator.settle()
    assert status(api, "ModelServing", "kserve")["phase"] != "Waiting"
    assert api.named("LLMInferenceService") == ["kserve-vllm"]


def runs_of(api: FakeApiServer, owner: str) -> set[str]:
    """The experiment's child runs and Jobs, as kind/name."""
    return {
        f"{k}/{n}"
        for (_, k, _, n), o in api.objects.items()
        if k in ("FineTuneJob", "EvalRun", "Job")
        and (o["metadata"].get("labels") or {}).get("crucible.dev/name") == owner
    }


@story
async def test_an_experiment_fans_out_within_its_bound_survives_a_restart_and_reaches_a_verdict(  # noqa: PLR0915 (one story, told whole)
    api: FakeApiServer, operator: Operator
) -> None:
    for doc in [*experiment_inputs(), experiment()]:
        api.apply(doc)
    await operator.settle()
    expected = {"FineTuneJob/search-a-docs", "FineTuneJob/search-b-docs"}
    assert runs_of(api, "search") == expected
    tuned = api.read("FineTuneJob", "search-a-docs")
    (reference,) = tuned["metadata"]["ownerReferences"]
    assert (reference["kind"], reference["name"], reference["controller"]) == (
        "Experiment",
        "search",
        True,
    )
    assert tuned["spec"]["baseModel"] == {"uri": "pvc://crucible-models/models/a"}
    progress = status(api, "Experiment", "search")["progress"]
    assert progress["stage"] == "Search" and progress["active"] == MAX_CONCURRENT_JOBS
    assert progress["fineTuneJobs"]["notStarted"] == 2

    # One fine-tune fails, the other succeeds: the task is judged without the failed one, and
    # the next task's first fine-tune takes the slot.
    api.job_ends("search-b-docs-train", exit_code=1)
    api.job_ends("search-a-docs-train")
    await operator.settle()
    expected |= {"EvalRun/search-docs", "FineTuneJob/search-a-ops"}
    assert runs_of(api, "search") == expected
    models = api.read("EvalRun", "search-docs")["spec"]["models"]
    assert [m["name"] for m in models] == ["a", "hosted"]
    (failure,) = status(api, "Experiment", "search")["failures"]
    assert (failure["name"], failure["reason"]) == ("search-b-docs", "Error")
    assert failure["consequence"] == "candidate b is not judged on task docs"

    # A restart mid-search adopts what exists and makes nothing twice.
    uids = {n: o["metadata"]["uid"] for (_, _, _, n), o in api.objects.items()}
    operator = Operator(api)
    await operator.settle()
    assert runs_of(api, "search") == expected
    assert {n: u for n, u in uids.items() if n in api.named("FineTuneJob")} == {
        n: api.read("FineTuneJob", n)["metadata"]["uid"] for n in api.named("FineTuneJob")
    }

    await evaluated(api, operator, "search-docs", judged(["a", "hosted"]))
    api.job_ends("search-a-ops-train")
    await operator.settle()
    api.job_ends("search-b-ops-train")
    await operator.settle()
    await evaluated(api, operator, "search-ops", judged(["b", "a", "hosted"]))
    expected |= {"FineTuneJob/search-b-ops", "EvalRun/search-ops", "Job/search-rank"}
    assert runs_of(api, "search") == expected
    rank = task_of(api.read("Job", "search-rank"))
    assert [t["judgementsPath"] for t in rank["tasks"]] == [
        "/models/ns/evalruns/search-docs/judgements.jsonl",
        "/models/ns/evalruns/search-ops/judgements.jsonl",
    ]
    api.report("search-rank", rank_report("ns"))
    api.job_ends("search-rank")
    await operator.settle()

    # b won: b and the baseline candidate a go on to the held-out task.
    expected |= {"FineTuneJob/search-b-faq", "FineTuneJob/search-a-faq"}
    assert runs_of(api, "search") == expected
    ranked = status(api, "Experiment", "search")
    assert [r["model"] for r in ranked["ranking"]] == ["b", "a", "hosted"]
    assert ranked["progress"]["stage"] == "HeldOut"
    api.job_ends("search-b-faq-train")
    api.job_ends("search-a-faq-train")
    await operator.settle()
    await evaluated(api, operator, "search-faq", judged(["b", "a", "hosted"]))
    api.report("search-verdict", verdict_report())
    api.job_ends("search-verdict")
    await operator.settle()
    done = status(api, "Experiment", "search")
    assert done["phase"] == "Succeeded" and done["heldOut"]["holds"] is True
    assert "on faq its lead over a holds" in ready(api, "Experiment", "search")["message"]

    # Deleting the experiment takes its children with it.
    api.remove("Experiment", "search")
    await operator.settle()
    assert runs_of(api, "search") == set()


@story
async def test_a_training_on_several_nodes_names_the_index_that_failed(
    api: FakeApiServer, operator: Operator
) -> None:
    for doc in inputs():
        api.apply(doc)
    api.apply(finetune(baseModel={"uri": "hf://org/base"}, resources={"nodes": 2, "gpus": 0}))
    await operator.settle()
    assert owned(api, "Service", "tuned") == owned(api, "Job", "tuned") == ["tuned-train"]
    api.job_pod("tuned-train", index=0)
    await operator.settle()
    assert status(api, "FineTuneJob", "tuned")["phase"] == "Running"
    # Index 1's rank fails for good: the Job controller fails the Job (maxFailedIndexes: 0).
    api.job_pod("tuned-train", index=1)
    api.job_ends("tuned-train", exit_code=1, message="RuntimeError: NCCL timeout")
    await operator.settle()
    failed = ready(api, "FineTuneJob", "tuned")
    assert failed["reason"] == "Error"
    assert failed["message"].startswith("index 1 (pod tuned-train-")
    assert failed["message"].endswith("exited with code 1: RuntimeError: NCCL timeout")
    api.remove("FineTuneJob", "tuned")
    await operator.settle()
    assert owned(api, "Service", "tuned") == owned(api, "Job", "tuned") == []


@story
async def test_a_training_on_jobset_or_trainer_waits_for_its_crds_then_follows_its_conditions(
    api: FakeApiServer, operator: Operator
) -> None:
    for doc in inputs():
        api.apply(doc)
    runs = {"on-jobset": "JobSet", "on-trainer": "KubeflowTrainer"}
    for name, runtime in runs.items():
        spec = {"baseModel": {"uri": "hf://org/base"}, "resources": {"nodes": 2, "gpus": 0}}
        api.apply(finetune(name, **spec, runtime=runtime))
    await operator.settle()
    assert ready(api, "FineTuneJob", "on-trainer")["message"] == (
        "spec.runtime: the TrainJob kind (trainer.kubeflow.org/v1alpha1) is not installed in "
        "this cluster; install Kubeflow Trainer, or train with spec.runtime: Job in a new "
        "FineTuneJob"
    )
    for name in runs:
        assert status(api, "FineTuneJob", name)["phase"] == "Waiting"
        assert ready(api, "FineTuneJob", name)["reason"] == "RuntimeNotInstalled"
    assert api.named("JobSet") == api.named("TrainJob") == api.named("Job") == []
    api.api_groups |= {"/apis/jobset.x-k8s.io/v1alpha2", "/apis/trainer.kubeflow.org/v1alpha1"}
    for name in runs:
        operator.engine.queue.add(("FineTuneJob", "ns", name))  # the recheck's turn
    await operator.settle()
    assert api.named("JobSet") == ["on-jobset-train"]
    assert api.named("TrainJob") == ["on-trainer-train"]
    assert api.named("Job") == api.named("Service") == []
    assert ready(api, "FineTuneJob", "on-jobset")["message"] == "JobSet on-jobset-train is running"
    api.set_status(
        "JobSet", "on-jobset-train", {"conditions": [{"type": "Completed", "status": "True"}]}
    )
    api.set_status(
        "TrainJob",
        "on-trainer-train",
        {
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "JobSetFailed",
                    "message": "node-1 failed",
                }
            ]
        },
    )
    for name in runs:
        operator.engine.queue.add(("FineTuneJob", "ns", name))
    await operator.settle()
    done = status(api, "FineTuneJob", "on-jobset")
    assert done["phase"] == "Succeeded"
    assert done["adapterUri"] == "pvc://crucible-models/ns/finetunejobs/on-jobset/adapter/"
    failed = ready(api, "FineTuneJob", "on-trainer")
    assert failed["message"] == "TrainJob on-trainer-train failed (JobSetFailed: node-1 failed)"
    for name in runs:
        api.remove("FineTuneJob", name)
    await operator.settle()
    assert api.named("JobSet") == api.named("TrainJob") == []


# -- an operator killed after each of its writes, and deletion while running -------------------

ReportFor = Callable[[FakeApiServer, dict[str, Any]], tuple[str, dict[str, Any]] | None]


def play(api: FakeApiServer, report_for: ReportFor) -> None:
    """The cluster's turn: servers roll out, Jobs report (the run and report `report_for`
    names, if any) and end."""
    for (_, kind, _, name), obj in list(api.objects.items()):
        done = (obj.get("status") or {}).get("conditions")
        if kind == "Deployment" and not done:
            api.rolled_out(name)
        elif kind == "Job" and not done:
            if (found := report_for(api, obj)) is not None:
                api.report(*found)
            api.job_ends(name)


async def drive(
    api: FakeApiServer, done: Callable[[], bool], report_for: ReportFor, *, crashing: bool
) -> int:
    """Reconcile, and let the cluster play whenever the operator has nothing left to write,
    until `done`; with `crashing`, each operator dies right after its first write and a new
    one starts. How many operators it took."""
    lives = 0
    while not done():
        lives += 1
        assert lives < 300, f"no progress after {len(api.writes)} writes"
        api.writes_left = 1 if crashing else None
        with contextlib.suppress(OperatorGoneError):
            await Operator(api).settle()
        if not crashing or api.writes_left:
            play(api, report_for)
    api.writes_left = None
    await Operator(api).settle()  # a healthy operator finds nothing left to do
    return lives


def timeless(value: Any) -> Any:
    """`value` without its timestamps (fields ending in Time or At)."""
    if isinstance(value, dict):
        return {k: timeless(v) for k, v in value.items() if not k.endswith(("Time", "At"))}
    if isinstance(value, list):
        return [timeless(v) for v in value]
    return value


def managed(obj: dict[str, Any]) -> bool:
    labels = obj["metadata"].get("labels") or {}
    return labels.get("app.kubernetes.io/managed-by") == "crucible"


def ending(api: FakeApiServer, runs: list[tuple[str, str]]) -> dict[str, Any]:
    """What an undisturbed play and a crashed one must agree on: the runs' statuses (but
    their timestamps) and Crucible's children, by kind."""
    children: dict[str, int] = {}
    for (_, kind, _, _), obj in api.objects.items():
        if managed(obj):
            children[kind] = children.get(kind, 0) + 1
    return {
        "statuses": {f"{kind}/{name}": timeless(status(api, kind, name)) for kind, name in runs},
        "children": children,
    }


def crash_chain() -> list[dict[str, Any]]:
    """ModelMerge → FineTuneJob (adapter) → EvalRun serving the adapter on its base."""
    run = eval_run()
    run["spec"]["models"] = run["spec"]["models"][1:2]
    del run["spec"]["rag"]
    return [*inputs(), merge(), finetune(), run]


CHAIN = [("ModelMerge", "merged"), ("FineTuneJob", "tuned"), ("EvalRun", "bench")]


def chain_report(api: FakeApiServer, job: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    if job["metadata"]["name"] == "bench-eval":
        return "bench", {"results": [result("tuned", False, [0.5] * 3)]}
    return None


@story
async def test_an_operator_killed_after_any_write_loses_nothing_and_duplicates_nothing(
    api: FakeApiServer, operator: Operator
) -> None:
    undisturbed = FakeApiServer()
    for doc in crash_chain():
        undisturbed.apply(doc)
    chain_done = lambda on: lambda: status(on, "EvalRun", "bench").get("phase") == "Succeeded"  # noqa: E731
    await drive(undisturbed, chain_done(undisturbed), chain_report, crashing=False)
    expected = ending(undisturbed, CHAIN)
    statuses = expected["statuses"]
    assert (
        statuses["FineTuneJob/tuned"]["baseModelUri"] == statuses["ModelMerge/merged"]["outputUri"]
    )

    # The same chain, with an operator that dies right after each of its writes.
    for doc in crash_chain():
        api.apply(doc)
    lives = await drive(api, chain_done(api), chain_report, crashing=True)
    print(f"chain completed over {lives} operator lives, {len(api.writes)} writes")
    assert lives > 20, "the chain takes many writes, each followed by a crash"
    assert ending(api, CHAIN) == expected


# Every kind on its own: a resource named "one" and what its workloads report.
KIND_RUNS: dict[str, dict[str, Any]] = {
    "ModelMerge": merge("one"),
    "FineTuneJob": finetune("one", baseModel={"uri": "hf://org/base"}),
    "RagIndex": rag_index("one"),
    "EvalRun": scored_eval_run("one", "hf://org/tuned"),
    "SyntheticDataset": synthetic("one"),
    "ModelServing": {
        "apiVersion": API,
        "kind": "ModelServing",
        "metadata": {"name": "one"},
        "spec": {"model": {"uri": "hf://org/base"}, "serving": {"resources": {"gpus": 0}}},
    },
    "Experiment": {**experiment(), "metadata": {"name": "one"}},
}
KIND_REPORTS: dict[str, dict[str, Any]] = {
    "RagIndex": {"documents": 1, "chunks": 3, "contentHash": "sha256:abc"},
    "EvalRun": scored_report(0.6, 0.01),
    "SyntheticDataset": {"documents": 1, "chunks": 4, "pairs": COUNTS},
}


def kind_report(kind: str) -> ReportFor:
    """What the Jobs of a `kind` named "one" report: its workload's report, or for an
    Experiment its tasks' judgings, its ranking and its verdict."""

    def report_for(api: FakeApiServer, job: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        labels = job["metadata"]["labels"]
        if kind != "Experiment":
            return ("one", KIND_REPORTS[kind]) if kind in KIND_REPORTS else None
        if labels.get("crucible.dev/kind") == "EvalRun":  # a task's judging
            run = labels["crucible.dev/name"]
            models = [m["name"] for m in api.read("EvalRun", run)["spec"]["models"]]
            return run, judged(models)
        role = labels.get("crucible.dev/role")
        if role == "rank":
            return "one-rank", rank_report("ns")
        return ("one-verdict", verdict_report()) if role == "verdict" else None

    return report_for


async def play_out(api: FakeApiServer, kind: str, *, crashing: bool) -> dict[str, Any]:
    """The kind's resource, played until it has settled; what it ends with."""
    for doc in [*inputs(), *experiment_inputs(), KIND_RUNS[kind]]:
        api.apply(doc)
    settled = lambda: KINDS_BY_NAME[kind].settled(status(api, kind, "one").get("phase"))  # noqa: E731
    await drive(api, settled, kind_report(kind), crashing=crashing)
    return ending(api, [(kind, "one")])


@pytest.mark.parametrize("kind", sorted(KIND_RUNS))
def test_every_kind_killed_after_each_write_ends_as_undisturbed(kind: str) -> None:
    async def main() -> None:
        expected = await play_out(FakeApiServer(), kind, crashing=False)
        crashed_api = FakeApiServer()
        crashed = await play_out(crashed_api, kind, crashing=True)
        assert KINDS_BY_NAME[kind].succeeded(expected["statuses"][f"{kind}/one"]["phase"])
        assert crashed == expected
        assert crashed_api.writes, "the crashing operator wrote nothing"

    asyncio.run(main())


@pytest.mark.parametrize("kind", sorted(KIND_RUNS))
def test_every_kind_deleted_while_it_runs_leaves_nothing(kind: str) -> None:
    async def main() -> None:
        api = FakeApiServer()
        operator = Operator(api)
        for doc in [*inputs(), *experiment_inputs(), KIND_RUNS[kind]]:
            api.apply(doc)
        await operator.settle()
        assert any(managed(o) for o in api.objects.values()), f"a {kind} makes children"
        api.remove(kind, "one")
        await operator.settle()
        assert (kind, "ns", "one") not in operator.engine.runs
        assert [n for (_, _, _, n), o in api.objects.items() if managed(o)] == []

    asyncio.run(main())
