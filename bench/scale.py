"""Benchmark the reconcile engine on the real control plane (printed, not asserted).

One LocalCluster (etcd, kube-apiserver, controller manager, scheduler, kwok nodes), the
operator as its own process (`crucible operator`), and one client for both sides:

0. before the operator starts, the client alone: N ModelMerges created one after another,
   and N runs' API writes made by the client itself one after another (the run's creation,
   then its Job and its status as the operator makes them): the API server's share of a run,
   and of the operator's two writes alone;
   then an operator started with those N ModelMerges waiting (a backlog: the operator's two
   writes a run, with no client writing beside it): the time to its first Job, and runs/s
   from then until all N have their Job and their first status; that operator stops;
1. raw: the client creates N Jobs one after another → Jobs/s;
2. the same client creates N ModelMerges one after another → child Jobs/s (all N exist),
   against the raw Jobs and against step 0's runs (the backlog's rate against the raw Jobs
   too), the operator's reconciles per run, and
   with each run's first-status latency (from its create call returning to the first watch
   event carrying a status), p50/p99;
3. operator RSS at rest, with N and with 2N live runs (their pods keep running);
4. the operator's own API requests/s (its crucible_kube_requests_total) at steady state with
   2N runs waiting on running Jobs;
5. 20 runs whose Jobs never finish: the time until all 20 have their Job;
6. 10 FineTuneJobs waiting on a ModelMerge created last: the time from its success until all
   10 have their Jobs;
7. N finished ModelMerges deleted against N finished bare Jobs: the time until the garbage
   collector has removed all their children;
8. 20 FineTuneJobs whose workloads push their progress to the report endpoint every second
   for --progress-seconds (600: a 10-minute training): the status writes per run, against
   the pushes taken;
9. --live-runs runs in all (10,000: the goal of ≤ 300 MB) waiting on running Jobs: the
   operator's RSS.

The operator serves its report endpoint throughout, as the chart deploys it.

    .venv/bin/python bench/scale.py [--runs 500] [--progress-seconds 600] [--live-runs 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests' helpers playing the kubelet
HOLD = "kwok.crucible.test/hold"
DONE = "kwok.crucible.test/done"  # kwok completes the pods of any image but its fail and hold
API = "crucible.dev/v1alpha1"
PODS_PER_NODE = 110


def modelmerge(name: str, namespace: str, image: str = HOLD) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "ModelMerge",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "method": "linear",
            "models": [{"uri": "hf://org/a"}, {"uri": "hf://org/b"}],
            "resources": {"gpus": 0, "image": image},
        },
    }


def finetune(name: str, namespace: str, base: str) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "baseModel": {"modelRef": {"kind": "ModelMerge", "name": base}},
            "dataset": {"uri": "s3://bucket/qa.jsonl"},
            "resources": {"gpus": 0, "image": HOLD},
        },
    }


def raw_job(name: str, namespace: str, image: str = HOLD) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "w", "image": image}],
                }
            },
        },
    }


def merge_children(owner: Any) -> list[dict[str, Any]]:
    """The children the operator makes for one of these ModelMerges (`owner`, an Owner), by
    its own builders."""
    from crucible.api.modelmerge import ModelMergeSpec
    from crucible.config import OperatorConfig
    from crucible.resources import modelmerge as builders

    spec = ModelMergeSpec.model_validate(modelmerge(owner.name, owner.namespace)["spec"])
    inputs = builders.MergeInputs(models=["hf://org/a", "hf://org/b"], base_model=None)
    return builders.build(owner, spec, inputs, OperatorConfig())


def run_children(namespace: str) -> list[dict[str, Any]]:
    """The children the operator makes for one of these ModelMerges, without an owner."""
    from crucible.api.kinds import MODEL_MERGE
    from crucible.resources.common import Owner

    owner = Owner(MODEL_MERGE, "m", namespace, "00000000-0000-0000-0000-000000000000")
    manifests = merge_children(owner)
    for manifest in manifests:
        manifest["metadata"].pop("ownerReferences")
    return manifests


def renamed(manifest: dict[str, Any], prefix: str) -> dict[str, Any]:
    text = json.dumps(manifest).replace('"m-', f'"{prefix}m-')
    renamed: dict[str, Any] = json.loads(text)
    return renamed


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds each process of the benchmark spent between start() and report()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before: dict[str, float] = {}

    def start(self) -> None:
        self.before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def report(self) -> str:
        spent = {name: cpu_seconds(pid) - self.before[name] for name, pid in self.pids.items()}
        return ", ".join(f"{name} {seconds:.1f}" for name, seconds in spent.items())


WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE")


def scrape_requests(port: int, verbs: tuple[str, ...] = ()) -> float:
    """The operator's API requests so far (of `verbs` only, if given)."""
    return scrape(port, "crucible_kube_requests_total", "verb", verbs)


def scrape(port: int, counter: str, label: str = "", values: tuple[str, ...] = ()) -> float:
    """The sum of the operator's `counter` series (those whose `label` is one of `values`, if
    given)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    series = rf"^{counter}\{{([^}}]*)\}} (\S+)$"
    wanted = {f'{label}="{value}"' for value in values}
    return sum(
        float(m.group(2))
        for m in re.finditer(series, text, re.M)
        if not wanted or wanted & set(m.group(1).split(","))
    )


# Longer than any step: a watch of the benchmark's ends with the step that opened it.
WATCH_SECONDS = "7200"


class Watcher:
    """Times when each object of a kind was first seen with a status (or at all, or in a
    given phase)."""

    def __init__(
        self, kube: Any, path: str, *, needs_status: bool, phase: str | None = None
    ) -> None:
        self.kube, self.path, self.needs_status, self.phase = kube, path, needs_status, phase
        self.seen: dict[str, float] = {}
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for event in self.kube.watch(
            self.path, {"allowWatchBookmarks": "false", "timeoutSeconds": WATCH_SECONDS}
        ):
            obj = event["object"]
            name = obj["metadata"]["name"]
            if name in self.seen or (self.needs_status and not obj.get("status")):
                continue
            if self.phase and (obj.get("status") or {}).get("phase") != self.phase:
                continue
            self.seen[name] = time.monotonic()

    async def until(self, names: set[str], timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while not names <= self.seen.keys():
            if time.monotonic() > deadline:
                missing = len(names - self.seen.keys())
                raise TimeoutError(f"{missing} of {len(names)} not seen in {timeout} s")
            await asyncio.sleep(0.05)
        return max(self.seen[n] for n in names)

    def stop(self) -> None:
        self.task.cancel()


async def create_all(kube: Any, manifests: list[dict[str, Any]]) -> dict[str, float]:
    """One after another, as one client thread would; when each create returned."""
    returned = {}
    for manifest in manifests:
        await kube.create(manifest)
        returned[manifest["metadata"]["name"]] = time.monotonic()
    return returned


async def settle(port: int, seconds: float) -> float:
    """The operator's API requests per second over a quiet window."""
    before = scrape_requests(port)
    await asyncio.sleep(seconds)
    return (scrape_requests(port) - before) / seconds


async def quiet(port: int) -> None:
    """Until the operator has sent no request for 5 s (pods started, events settled)."""
    last = scrape_requests(port)
    while True:
        await asyncio.sleep(5)
        now = scrape_requests(port)
        if now == last:
            return
        last = now


@dataclass
class Bench:
    cluster: Any
    kube: Any
    cpu: CpuMeter
    runs: int
    operator_port: int
    operator_pid: int
    alone_rate: float  # a run's API writes made by the client itself, no operator running
    backlog_rate: float  # runs/s of an operator started with N runs waiting


JOBS = "/apis/batch/v1/namespaces/{}/jobs"
MODELMERGES = f"/apis/{API}/namespaces/{{}}/modelmerges"


async def raw_rates(b: Bench) -> tuple[float, float]:
    """Jobs/s, and runs/s when a run's children are created by the client itself."""
    b.cpu.start()
    start = time.monotonic()
    await create_all(b.kube, [raw_job(f"raw-{i}", "raw") for i in range(b.runs)])
    seconds = time.monotonic() - start
    raw_rate = b.runs / seconds
    print(f"raw: {b.runs} Jobs created in {seconds:.2f} s = {raw_rate:.0f} Jobs/s")
    print(f"  CPU s while creating: {b.cpu.report()}")
    # The same objects a ModelMerge's reconcile creates, created directly: the API server's
    # share of a run.
    per_run = run_children("raw")
    b.cpu.start()
    start = time.monotonic()
    for i in range(b.runs):
        await create_all(b.kube, [renamed(m, f"r{i}-") for m in per_run])
    children_rate = b.runs / (time.monotonic() - start)
    print(
        f"raw, a run's {len(per_run)} children created directly: {children_rate:.0f} runs/s "
        f"({children_rate * len(per_run):.0f} objects/s)"
    )
    print(f"  CPU s while creating: {b.cpu.report()}")
    b.cluster.kubectl("delete", "namespace", "raw", "--wait=false")
    await asyncio.sleep(10)  # the raw Jobs' pods come and go
    return raw_rate, children_rate


async def operator_rate(b: Bench, raw_rate: float, children_rate: float) -> None:
    """ModelMerges → child Jobs, first-status latencies, then 2N live runs at rest."""
    ns = "bench"
    statuses = Watcher(b.kube, MODELMERGES.format(ns), needs_status=True)
    children = Watcher(b.kube, JOBS.format(ns), needs_status=False)
    names = [f"mm-{i}" for i in range(b.runs)]
    writes_before = scrape_requests(b.operator_port, WRITE_VERBS)
    reconciles_before = scrape(b.operator_port, "crucible_reconcile_total")
    b.cpu.start()
    start = time.monotonic()
    returned = await create_all(b.kube, [modelmerge(n, ns) for n in names])
    created_seconds = time.monotonic() - start
    last_job = await children.until({f"{n}-merge" for n in names}, timeout=600)
    await statuses.until(set(names), timeout=600)
    seconds = last_job - start
    rate = b.runs / seconds
    latencies = sorted(statuses.seen[n] - returned[n] for n in names)
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    print(
        f"operator: {b.runs} ModelMerges created in {created_seconds:.2f} s; all {b.runs} child "
        f"Jobs within {seconds:.2f} s = {rate:.0f} runs/s; ratio to raw Jobs "
        f"{rate / raw_rate:.2f}, to raw children {rate / children_rate:.2f}, to a run's writes "
        f"by the client alone {rate / b.alone_rate:.2f}"
    )
    print(f"  CPU s until then: {b.cpu.report()}")
    print(
        f"  the backlog of step 0 ({b.backlog_rate:.0f} runs/s, no client writing beside the "
        f"operator): ratio to raw Jobs {b.backlog_rate / raw_rate:.2f}"
    )
    print(f"first-status latency: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
    await quiet(b.operator_port)
    writes = scrape_requests(b.operator_port, WRITE_VERBS) - writes_before
    reconciles = scrape(b.operator_port, "crucible_reconcile_total") - reconciles_before
    rbac = 0
    for api_version, kind in (
        ("v1", "ServiceAccount"),
        ("rbac.authorization.k8s.io/v1", "Role"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ):
        managed = {"app.kubernetes.io/managed-by": "crucible"}
        rbac += len(await b.kube.list(api_version, kind, ns, managed))
    print(
        f"API writes per run while starting: {writes / b.runs:.2f} (creates, status patches and "
        f"Events); RBAC objects per run: {rbac / b.runs:.2f}; reconciles per run: "
        f"{reconciles / b.runs:.2f}"
    )
    print(f"operator RSS with {b.runs} live runs: {rss_mib(b.operator_pid):.0f} MiB")

    more = [f"mm-{i}" for i in range(b.runs, 2 * b.runs)]
    await create_all(b.kube, [modelmerge(n, ns) for n in more])
    await children.until({f"{n}-merge" for n in more}, timeout=600)
    await quiet(b.operator_port)
    requests = await settle(b.operator_port, 30)
    print(
        f"operator RSS with {2 * b.runs} live runs: {rss_mib(b.operator_pid):.0f} MiB; "
        f"API requests at steady state: {requests:.3f}/s "
        f"({requests / (2 * b.runs):.5f}/s per run)"
    )
    statuses.stop()
    children.stop()


async def no_starvation(b: Bench) -> None:
    """20 runs whose Jobs never finish; 10 FineTuneJobs waiting on a ModelMerge made last."""
    ns = "starve"
    jobs = Watcher(b.kube, JOBS.format(ns), needs_status=False)
    start = time.monotonic()
    await create_all(b.kube, [modelmerge(f"long-{i}", ns) for i in range(20)])
    done = await jobs.until({f"long-{i}-merge" for i in range(20)}, timeout=120)
    print(f"20 runs whose Jobs never finish: all 20 Jobs within {done - start:.2f} s")

    merged = Watcher(b.kube, MODELMERGES.format(ns), needs_status=True, phase="Succeeded")
    await create_all(b.kube, [finetune(f"ftj-{i}", ns, "late") for i in range(10)])
    await create_all(b.kube, [modelmerge("late", ns)])
    await jobs.until({"late-merge"}, timeout=120)
    await finish(b.kube, ns, await wait_pod(b.kube, ns, "late-merge"))
    succeeded = await merged.until({"late"}, timeout=600)
    done = await jobs.until({f"ftj-{i}-train" for i in range(10)}, timeout=120)
    print(
        f"10 FineTuneJobs waiting on a ModelMerge: all 10 Jobs {done - succeeded:.2f} s after "
        "it succeeded"
    )
    jobs.stop()
    merged.stop()


async def collected(
    b: Bench, namespace: str, kind: tuple[str, str], manifests: list[dict[str, Any]]
) -> float:
    """Create `manifests`, wait until every Job in `namespace` completed, then delete them
    one after another: the seconds until no Job and no pod is left."""
    await create_all(b.kube, manifests)
    while True:
        jobs = await b.kube.list("batch/v1", "Job", namespace, {})
        complete = [j for j in jobs if (j.get("status") or {}).get("succeeded")]
        if len(complete) == len(manifests):
            break
        await asyncio.sleep(0.5)
    await quiet(b.operator_port)
    start = time.monotonic()
    for manifest in manifests:
        await b.kube.delete(*kind, namespace, manifest["metadata"]["name"])
    while await b.kube.list("batch/v1", "Job", namespace, {}) or await b.kube.list(
        "v1", "Pod", namespace, {}
    ):
        await asyncio.sleep(0.5)
    return time.monotonic() - start


async def garbage_collection(b: Bench) -> None:
    raw = await collected(
        b, "gc-raw", ("batch/v1", "Job"), [raw_job(f"j-{i}", "gc-raw", DONE) for i in range(b.runs)]
    )
    runs = await collected(
        b,
        "gc-runs",
        (API, "ModelMerge"),
        [modelmerge(f"mm-{i}", "gc-runs", DONE) for i in range(b.runs)],
    )
    print(
        f"{b.runs} finished runs deleted: their children gone in {runs:.1f} s; {b.runs} "
        f"finished bare Jobs deleted: their pods gone in {raw:.1f} s"
    )


PROGRESS_RUNS = 20


def training(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "baseModel": {"uri": "hf://org/base"},
            "dataset": {"uri": "s3://bucket/qa.jsonl"},
            "resources": {"gpus": 0, "image": HOLD},
        },
    }


async def status_writes(kube: Any, path: str, counts: dict[str, int]) -> None:
    """Count each object's MODIFIED events from now on: for a run whose spec stays, each is a
    status write."""
    listed = await kube.request("GET", path)
    version = listed["metadata"]["resourceVersion"]
    params = {"resourceVersion": version, "timeoutSeconds": WATCH_SECONDS}
    async for event in kube.watch(path, params):
        if event["type"] == "MODIFIED":
            name = event["object"]["metadata"]["name"]
            counts[name] = counts.get(name, 0) + 1


async def progress_writes(b: Bench, seconds: int) -> None:
    import aiohttp
    from tests.cluster.conftest import report_target

    from crucible.config import OperatorConfig

    ns = "progress"
    names = [f"train-{i}" for i in range(PROGRESS_RUNS)]
    await create_all(b.kube, [training(name, ns) for name in names])
    pods = {name: await wait_pod(b.kube, ns, f"{name}-train") for name in names}
    targets = {name: report_target(b.cluster, pod) for name, pod in pods.items()}
    await quiet(b.operator_port)
    counts: dict[str, int] = {}
    watch = asyncio.create_task(
        status_writes(b.kube, f"/apis/{API}/namespaces/{ns}/finetunejobs", counts)
    )
    answers: dict[int, int] = {}
    b.cpu.start()
    async with aiohttp.ClientSession() as session:

        async def push(name: str, step: int) -> None:
            url, context, token = targets[name]
            progress = {"step": step, "totalSteps": seconds, "loss": round(2 / step, 4)}
            async with session.post(
                url, json={"progress": progress}, ssl=context,
                headers={"Authorization": f"Bearer {token}"},
            ) as answer:  # fmt: skip
                answers[answer.status] = answers.get(answer.status, 0) + 1

        start = time.monotonic()
        for step in range(1, seconds + 1):
            await asyncio.gather(*(push(name, step) for name in names))
            await asyncio.sleep(max(0.0, start + step - time.monotonic()))
    interval = OperatorConfig().progress_interval
    await asyncio.sleep(interval + 5)  # the last progress, folded at the interval's end
    watch.cancel()
    writes = [counts.get(name, 0) for name in names]
    print(
        f"progress: {PROGRESS_RUNS} trainings pushing every 1 s for {seconds} s: "
        f"{statistics.mean(writes):.1f} status writes per run (max {max(writes)}; "
        f"CRUCIBLE_PROGRESS_INTERVAL {interval:.0f} s), against {seconds} pushes each; "
        f"answers {dict(sorted(answers.items()))}"
    )
    print(f"  CPU s while pushing: {b.cpu.report()}")


async def live_rss(b: Bench, live: int) -> None:
    """Add ModelMerges beside the 2N live runs of step 3 until `live` runs wait on running
    Jobs: the operator's RSS then."""
    ns = "bench"
    children = Watcher(b.kube, JOBS.format(ns), needs_status=False)
    more = [f"mm-{i}" for i in range(2 * b.runs, live)]
    for start in range(0, len(more), 1000):  # in batches: the client's own memory stays small
        await create_all(b.kube, [modelmerge(n, ns) for n in more[start : start + 1000]])
    await children.until({f"{n}-merge" for n in more}, timeout=1800)
    await quiet(b.operator_port)
    children.stop()
    runs = len(await b.kube.list(API, "ModelMerge", ns, {}))
    print(f"operator RSS with {runs} live runs: {rss_mib(b.operator_pid):.0f} MiB")


async def bench(
    cluster: Any,
    runs: int,
    operator_port: int,
    operator_pid: int,
    *,
    alone_rate: float,
    backlog_rate: float,
    progress_seconds: int,
    live_runs: int,
) -> None:
    from crucible.controllers.kube import Kube, client_configuration

    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    pids = cluster.pids()
    cpu = CpuMeter({"operator": operator_pid, **pids, "benchmark": os.getpid()})
    kube = Kube(client_configuration())
    b = Bench(cluster, kube, cpu, runs, operator_port, operator_pid, alone_rate, backlog_rate)
    print(f"operator RSS at rest: {rss_mib(operator_pid):.0f} MiB")
    raw_rate, children_rate = await raw_rates(b)
    await operator_rate(b, raw_rate, children_rate)
    await no_starvation(b)
    await garbage_collection(b)
    if progress_seconds:
        await progress_writes(b, progress_seconds)
    if live_runs > 2 * runs:
        await live_rss(b, live_runs)
    await b.kube.close()


async def wait_pod(kube: Any, namespace: str, job: str) -> dict[str, Any]:
    while True:
        pods = await kube.list("v1", "Pod", namespace, {"job-name": job})
        running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
        if running:
            return running[0]
        await asyncio.sleep(0.1)


async def finish(kube: Any, namespace: str, pod: dict[str, Any]) -> None:
    """What the kubelet does when the container exits 0."""
    from tests.cluster.conftest import exited, pod_status

    await kube.request(
        "PATCH",
        f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}/status",
        body={"status": pod_status(pod, "Succeeded", exited())},
        content_type="application/merge-patch+json",
    )


def starting_status(job: str) -> dict[str, Any]:
    """The status the operator writes when a ModelMerge's Job starts, from its own code."""
    from datetime import UTC, datetime

    from crucible.api.common import Phase, Reason, RunStatus
    from crucible.api.kinds import MODEL_MERGE
    from crucible.resources.status import phase_fields

    fields = phase_fields(
        RunStatus(), Phase.RUNNING, Reason.JOB_RUNNING, f"Job {job} is running", 1
    )
    status = MODEL_MERGE.status.model_validate(
        {**fields, "job_name": job, "start_time": datetime.now(UTC)}
    )
    return status.to_api()


async def client_alone(cluster: Any, runs: int) -> tuple[float, float, float]:
    """With no operator running: how fast the client creates ModelMerges (which stay, the
    backlog of the next step), and how fast it makes a run's API writes itself (its creation,
    then its Job and its status as the operator makes them), in all and the Job and status
    alone: the API server's share of a run, which bounds the operator's rate."""
    from crucible.api.kinds import MODEL_MERGE
    from crucible.controllers.kube import Kube, client_configuration
    from crucible.resources.common import Owner

    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    kube = Kube(client_configuration())
    start = time.monotonic()
    await create_all(kube, [modelmerge(f"mm-{i}", "backlog") for i in range(runs)])
    crs = runs / (time.monotonic() - start)
    start = time.monotonic()
    operators_share = 0.0  # seconds in the Job's and the status's writes
    for i in range(runs):
        created = await kube.create(modelmerge(f"w-{i}", "writes"))
        owner = Owner.of(MODEL_MERGE, created)
        (job,) = merge_children(owner)
        started = time.monotonic()
        await kube.create(job)
        await kube.patch_status(
            "ModelMerge", "writes", owner.name, starting_status(job["metadata"]["name"])
        )
        operators_share += time.monotonic() - started
    writes = runs / (time.monotonic() - start)
    await kube.close()
    cluster.kubectl("delete", "namespace", "writes", "--wait=true")
    return crs, writes, runs / operators_share


async def backlog(cluster: Any, runs: int, start_operator: Callable[[], Any]) -> float:
    """An operator started with step 0's N ModelMerges waiting: its runs/s from its first Job
    until all N have their Job and their first status. The runs are deleted and that operator
    stopped afterwards."""
    from crucible.controllers.kube import Kube, client_configuration
    from crucible.devcluster import processes

    kube = Kube(client_configuration())
    jobs = Watcher(kube, JOBS.format("backlog"), needs_status=False)
    statuses = Watcher(kube, MODELMERGES.format("backlog"), needs_status=True)
    await asyncio.sleep(1)  # both watches open before the operator can write
    names = {f"mm-{i}" for i in range(runs)}
    start = time.monotonic()
    operator = await asyncio.to_thread(start_operator)
    try:
        last_job = await jobs.until({f"{n}-merge" for n in names}, timeout=600)
        done = max(last_job, await statuses.until(names, timeout=600))
        first = min(jobs.seen.values())
        rate = runs / (done - first)
        print(
            f"an operator started with {runs} ModelMerges waiting: its first Job "
            f"{first - start:.2f} s after its start, all {runs} Jobs and first statuses "
            f"{done - first:.2f} s later = {rate:.0f} runs/s"
        )
        cluster.kubectl("delete", "namespace", "backlog", "--wait=true")
    finally:
        jobs.stop()
        statuses.stop()
        await kube.close()
        processes.stop(operator)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--progress-seconds", type=int, default=600, help="0: no step 8")
    parser.add_argument("--live-runs", type=int, default=10_000, help="at most 2 * runs: no step 9")
    args = parser.parse_args()

    from tests.cluster.conftest import report_settings

    from crucible.devcluster import processes
    from crucible.devcluster.cluster import LocalCluster, folder_claim, free_port

    workdir = Path(tempfile.mkdtemp(prefix="crucible-scale-"))
    pods = max(3 * args.runs, args.live_runs) + 40 + PROGRESS_RUNS
    nodes = pods // PODS_PER_NODE + 1
    with LocalCluster(workdir / "cluster", nodes=nodes) as cluster:
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all")
        for ns in ("raw", "bench", "starve", "backlog", "writes", "gc-raw", "gc-runs", "progress"):
            cluster.kubectl("create", "namespace", ns)
        for ns in ("bench", "starve", "backlog", "gc-runs", "progress"):
            cluster.kubectl_apply(folder_claim(ns, "crucible-models", workdir / ns))
        for ns in ("raw", "bench", "starve", "backlog", "gc-raw", "gc-runs", "progress"):
            while cluster.kubectl("get", "sa", "default", "-n", ns, check=False).returncode:
                time.sleep(0.2)
        crs, alone, operators_share = asyncio.run(client_alone(cluster, args.runs))
        print(
            f"no operator running, the client alone: ModelMerges created at {crs:.0f}/s; a "
            f"run's writes (its creation, its Job, its status) at {alone:.0f} runs/s, its Job "
            f"and its status alone at {operators_share:.0f} runs/s"
        )
        port = free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(cluster.kubeconfig),
            **report_settings(cluster, workdir, "127.0.0.1"),
            "CRUCIBLE_HTTP_PORT": str(port),
            "CRUCIBLE_JOB_BACKOFF_LIMIT": "0",
        }
        logs: list[IO[bytes]] = []

        def start_operator(name: str = "operator") -> subprocess.Popen[bytes]:
            """`crucible operator` as the chart runs it, once its metrics answer."""
            logs.append((workdir / f"{name}.log").open("wb"))
            argv = [sys.executable, "-m", "crucible.cli.main", "operator", "--all-namespaces"]
            operator = processes.spawn(argv, logs[-1], workdir, env)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    scrape_requests(port)
                    break
                except OSError:
                    time.sleep(0.5)
            return operator

        backlog_rate = asyncio.run(
            backlog(cluster, args.runs, lambda: start_operator("operator-backlog"))
        )
        operator = start_operator()
        try:
            time.sleep(3)
            print(f"control plane: {nodes} kwok nodes; machine: {os.cpu_count()} cores")
            asyncio.run(
                bench(
                    cluster,
                    args.runs,
                    port,
                    operator.pid,
                    alone_rate=alone,
                    backlog_rate=backlog_rate,
                    progress_seconds=args.progress_seconds,
                    live_runs=args.live_runs,
                )
            )
        finally:
            processes.stop(operator)
            for log in logs:
                log.close()
            print(f"operator logs: {workdir}/operator*.log")


if __name__ == "__main__":
    main()
