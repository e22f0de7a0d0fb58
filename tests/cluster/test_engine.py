"""The reconcile engine on the real control plane: no run starves another, a chain waiting on
a resource created last starts when it succeeds, running resources can be deleted, inputs that
appear late are picked up, progress shows while running, and an operator that dies right after
any one of its writes loses nothing and duplicates nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from crucible.controllers.kube import Kube
from crucible.devcluster import processes
from crucible.devcluster.cluster import LocalCluster, free_port
from tests.cluster.conftest import (
    HOLD_IMAGE,
    OperatorFactory,
    finish_pod,
    pod_status,
    post,
    push_report,
    ready_condition,
    report_settings,
    report_target,
    running_pod,
    set_pod_status,
    status_of,
    wait_phase,
)
from tests.cluster.test_reconcile import objects
from tests.conftest import wait_for
from tests.manifests import eval_run, finetune, inputs, merge, result

HELD = {"resources": {"gpus": 0, "image": HOLD_IMAGE}}


def test_runs_whose_jobs_never_finish_do_not_starve_the_others(
    cluster: LocalCluster, namespace: str, model_store: str, operator: OperatorFactory
) -> None:
    cluster.kubectl_apply(inputs(), "-n", namespace)
    with operator():
        cluster.kubectl_apply([merge(f"long-{i}", **HELD) for i in range(20)], "-n", namespace)
        # Every one of them gets its Job, not the first few.
        wait_for(
            lambda: len(objects(cluster, namespace, "job")) == 20,
            timeout=30,
            what="all 20 Jobs",
        )
        # Ten fine-tunes waiting on a merge that does not exist yet, then the merge.
        cluster.kubectl_apply(
            [finetune(f"ftj-{i}", base="late", **HELD) for i in range(10)], "-n", namespace
        )
        for i in range(10):
            waiting = wait_phase(cluster, namespace, "ftj", f"ftj-{i}", "Waiting")
            assert ready_condition(waiting)["reason"] == "DependencyNotFound"
        cluster.kubectl_apply([merge("late", **HELD)], "-n", namespace)
        finish_pod(cluster, namespace, running_pod(cluster, namespace, "late-merge"))
        wait_phase(cluster, namespace, "mm", "late", "Succeeded")
        succeeded = time.monotonic()
        wait_for(
            lambda: all(
                status_of(cluster, namespace, "ftj", f"ftj-{i}").get("phase") == "Running"
                for i in range(10)
            ),
            timeout=30,
            what="the ten fine-tunes to start",
        )
        assert time.monotonic() - succeeded < 15
        assert len(objects(cluster, namespace, "job")) == 31


def test_running_resources_can_be_deleted(
    cluster: LocalCluster, namespace: str, model_store: str, operator: OperatorFactory
) -> None:
    with operator():
        old = merge("old", **HELD)
        # A resource made by an operator before the engine still carries its finalizer.
        old["metadata"]["finalizers"] = ["crucible.dev/finalizer"]
        cluster.kubectl_apply([merge("new", **HELD), old], "-n", namespace)
        for name in ("new", "old"):
            wait_phase(cluster, namespace, "mm", name, "Running")
        wait_for(
            lambda: (
                not json.loads(
                    cluster.kubectl("get", "mm", "old", "-n", namespace, "-o", "json").stdout
                )["metadata"].get("finalizers")
            ),
            what="the old finalizer to be dropped",
        )
        started = time.monotonic()
        cluster.kubectl("delete", "mm", "new", "old", "-n", namespace, "--wait=true")
        assert time.monotonic() - started < 10
        wait_for(
            lambda: not objects(cluster, namespace, "job"),
            what="their Jobs to be garbage-collected",
        )


def test_inputs_created_late_are_picked_up(
    cluster: LocalCluster, namespace: str, model_store: str, operator: OperatorFactory
) -> None:
    docs = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "docs"}}
    with operator(CRUCIBLE_RAG_IMAGE=HOLD_IMAGE):
        index = {
            "apiVersion": "crucible.dev/v1alpha1",
            "kind": "RagIndex",
            "metadata": {"name": "docs"},
            "spec": {
                "source": {"configMap": {"name": "docs"}},
                "database": {"connectionSecretRef": {"name": "pg", "key": "uri"}, "table": "docs"},
            },
        }
        cluster.kubectl_apply([merge(), finetune(), index], "-n", namespace)
        waiting = ready_condition(wait_phase(cluster, namespace, "ri", "docs", "Waiting"))
        assert waiting["reason"] == "InputNotFound"
        assert waiting["message"].startswith(
            f"spec.source.configMap.name: ConfigMap 'docs' does not exist in namespace {namespace}"
        )
        tuned = wait_for(
            lambda: (
                (c := ready_condition(status_of(cluster, namespace, "ftj", "tuned")))["reason"]
                == "InputNotFound"
                and c
            ),
            what="the fine-tune to wait for its dataset",
        )
        assert tuned["message"].startswith("spec.dataset.configMap.name: ConfigMap 'qa'")
        # Created later, each run goes on by itself.
        cluster.kubectl_apply([inputs()[0], {**docs, "data": {"a.md": "# A"}}], "-n", namespace)
        wait_phase(cluster, namespace, "ftj", "tuned", "Succeeded")
        pod = running_pod(cluster, namespace, "docs-rag")
        # The kubelet cannot start the container while the Secret it names is missing.
        reason = {"reason": "CreateContainerConfigError", "message": 'secret "pg" not found'}
        set_pod_status(cluster, namespace, pod, pod_status(pod, "Pending", {"waiting": reason}))
        waiting = ready_condition(wait_phase(cluster, namespace, "ri", "docs", "Waiting"))
        assert waiting["reason"] == "InputNotFound"
        assert 'CreateContainerConfigError): secret "pg" not found' in waiting["message"]
        # The Secret appears; the kubelet starts the container and finishes it.
        cluster.kubectl_apply([inputs()[3]], "-n", namespace)
        finish_pod(cluster, namespace, pod, report={"documents": 1, "chunks": 1})
        done = wait_phase(cluster, namespace, "ri", "docs", "Succeeded")
        assert (done["documents"], done["chunks"]) == (1, 1)  # its termination message said so


def test_a_pod_that_cannot_mount_its_volumes_is_explained(
    cluster: LocalCluster, namespace: str, model_store: str, operator: OperatorFactory
) -> None:
    with operator():
        cluster.kubectl_apply([merge(**HELD)], "-n", namespace)
        pod = running_pod(cluster, namespace, "merged-merge")
        set_pod_status(cluster, namespace, pod, pod_status(pod, "Pending", {"waiting": {}}))
        # The kubelet says why only in an Event.
        message = 'MountVolume.SetUp failed for volume "model-store" : claim not bound'
        cluster.kubectl_apply(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Event",
                    "metadata": {"name": f"{pod['metadata']['name']}.mount"},
                    "involvedObject": {
                        "kind": "Pod",
                        "namespace": namespace,
                        "name": pod["metadata"]["name"],
                        "uid": pod["metadata"]["uid"],
                    },
                    "reason": "FailedMount",
                    "type": "Warning",
                    "message": message,
                    "source": {"component": "kubelet"},
                }
            ],
            "-n",
            namespace,
        )
        waiting = ready_condition(wait_phase(cluster, namespace, "mm", "merged", "Waiting"))
        assert waiting["reason"] == "InputNotFound"
        assert f"cannot mount its volumes (FailedMount): {message}" in waiting["message"]
        # Mounted at last: the container starts and the run is Running again.
        running = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
        set_pod_status(cluster, namespace, pod, pod_status(pod, "Running", running))
        wait_phase(cluster, namespace, "mm", "merged", "Running")


def patches_sent() -> float:
    return sum(
        REGISTRY.get_sample_value("crucible_kube_requests_total", {"verb": "PATCH", "code": code})
        or 0.0
        for code in ("200", "201")
    )


@pytest.mark.usefixtures("model_store")
def test_a_run_that_waits_again_keeps_its_progress_and_goes_quiet(
    cluster: LocalCluster, namespace: str, operator: OperatorFactory, tmp_path: Path
) -> None:
    cluster.kubectl_apply(inputs(), "-n", namespace)
    with operator(**report_settings(cluster, tmp_path, "127.0.0.1")):
        tuned = finetune(base="m", resources={"gpus": 0, "image": HOLD_IMAGE})
        tuned["spec"]["baseModel"] = {"uri": "hf://org/base"}
        cluster.kubectl_apply([tuned], "-n", namespace)
        pod = running_pod(cluster, namespace, "tuned-train")
        progress = {"step": 3, "totalSteps": 10, "loss": 1.5}
        push_report(cluster, namespace, "tuned-train", {"progress": progress})
        wait_for(
            lambda: status_of(cluster, namespace, "ftj", "tuned").get("progress") == progress,
            what="the progress",
        )
        # Its pod cannot start again until a Secret exists: the run waits, its progress stays.
        reason = {"reason": "CreateContainerConfigError", "message": 'secret "hf" not found'}
        set_pod_status(cluster, namespace, pod, pod_status(pod, "Pending", {"waiting": reason}))
        waiting = wait_phase(cluster, namespace, "ftj", "tuned", "Waiting")
        assert waiting["progress"] == progress
        # A change to a child that changes nothing in the status writes nothing.
        time.sleep(1)
        before = patches_sent()
        cluster.kubectl("annotate", "pod", pod["metadata"]["name"], "-n", namespace, "seen=1")
        time.sleep(3)
        assert patches_sent() == before


@pytest.mark.usefixtures("model_store")
def test_a_synthetic_dataset_shows_progress_while_it_runs(
    cluster: LocalCluster, namespace: str, operator: OperatorFactory, tmp_path: Path
) -> None:
    cluster.kubectl_apply(inputs(), "-n", namespace)
    dataset = {
        "apiVersion": "crucible.dev/v1alpha1",
        "kind": "SyntheticDataset",
        "metadata": {"name": "qa"},
        "spec": {
            "source": {"configMap": {"name": "docs"}},
            "teacher": {"endpoint": {"url": "https://api.example.com/v1", "model": "gpt-4"}},
        },
    }
    pairs = {
        "generated": 12,
        "kept": 8,
        "train": 7,
        "validation": 1,
        "dropped": {"duplicate": 4},
    }
    with operator(
        CRUCIBLE_EVAL_IMAGE=HOLD_IMAGE, **report_settings(cluster, tmp_path, "127.0.0.1")
    ):
        cluster.kubectl_apply([dataset], "-n", namespace)
        pod = running_pod(cluster, namespace, "qa-synth")
        push_report(cluster, namespace, "qa-synth", {"documents": 1, "chunks": 6, "pairs": pairs})
        running = wait_for(
            lambda: (s := status_of(cluster, namespace, "sds", "qa")).get("pairs") and s,
            what="progress in the status",
        )
        assert running["phase"] == "Running"
        assert (running["chunks"], running["pairs"]["kept"]) == (6, 8)
        finish_pod(cluster, namespace, pod)
        done = wait_phase(cluster, namespace, "sds", "qa", "Succeeded")
        assert done["outputUri"].endswith(f"/{namespace}/syntheticdatasets/qa/")


# -- an operator that dies right after any one of its writes -----------------------------------


class Crashing:
    """Makes the operator in this process "die" right after its next write (create, patch,
    delete) has taken effect: from then on it sends nothing, as a killed process. Its writes
    go one at a time, so each one is a moment it dies at."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.dead = threading.Event()
        self.lock = asyncio.Lock()
        self.writes = 0
        original = Kube.request

        async def request(kube: Kube, method: str, path: str, **kwargs: Any) -> Any:
            if method == "GET":
                return await original(kube, method, path, **kwargs)
            # One write at a time, so that every write is a boundary the operator dies at.
            async with self.lock:
                if self.dead.is_set():
                    await asyncio.Event().wait()  # never answers: the process is gone
                answer = await original(kube, method, path, **kwargs)
                if answer is not None:  # a write that changed something (not a 404 delete)
                    self.writes += 1
                    self.dead.set()
                return answer

        monkeypatch.setattr(Kube, "request", request)
        self.restore = lambda: monkeypatch.setattr(Kube, "request", original)

    @contextlib.contextmanager
    def life(self) -> Iterator[None]:
        self.dead.clear()
        self.lock = asyncio.Lock()  # for the new operator's event loop
        yield


def chain() -> list[dict[str, Any]]:
    """ModelMerge → FineTuneJob (adapter) → EvalRun serving the adapter on its base."""
    run = eval_run()
    run["spec"]["models"] = run["spec"]["models"][1:2]  # the fine-tune, served as an adapter
    run["spec"].pop("rag")
    return [merge(), finetune(), run]


def play_workloads(cluster: LocalCluster, namespace: str) -> None:
    """The eval workload: its report, then its pod's exit (once its pod runs)."""
    pods = objects(cluster, namespace, "pod", "bench")
    for pod in pods:
        if pod["metadata"]["labels"].get("job-name") == "bench-eval" and (
            pod["status"].get("phase") == "Running"
        ):
            finish_pod(
                cluster, namespace, pod, report={"results": [result("tuned", False, [0.5] * 3)]}
            )


def comparable(cluster: LocalCluster, namespace: str) -> dict[str, Any]:
    """What an undisturbed run and a crashed one must agree on."""
    found = {}
    for kind, name in (("mm", "merged"), ("ftj", "tuned"), ("er", "bench")):
        status = status_of(cluster, namespace, kind, name)
        ready = ready_condition(status)
        found[kind] = {
            **{k: v for k, v in status.items() if not k.endswith("Time") and k != "conditions"},
            "reason": ready["reason"],
            "message": ready["message"],
        }
    return found


def children_by_kind(cluster: LocalCluster, namespace: str) -> dict[str, int]:
    """Crucible's children in the namespace, by kind."""
    kinds = ("job", "configmap", "serviceaccount", "role", "rolebinding", "deployment", "service")
    counted = {}
    for kind in kinds:
        listed = cluster.kubectl(
            "get",
            kind,
            "-n",
            namespace,
            "-l",
            "app.kubernetes.io/managed-by=crucible",
            "-o",
            "name",
        )
        counted[kind] = len(listed.stdout.split())
    return counted


@pytest.mark.pod_security_baseline
def test_an_operator_killed_after_any_write_loses_nothing_and_duplicates_nothing(
    cluster: LocalCluster,
    namespace: str,
    model_store: str,
    operator: OperatorFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster.kubectl_apply(inputs(), "-n", namespace)
    held = {"CRUCIBLE_EVAL_IMAGE": HOLD_IMAGE}

    def done() -> bool:
        play_workloads(cluster, namespace)
        return status_of(cluster, namespace, "er", "bench").get("phase") == "Succeeded"

    # Undisturbed, for reference.
    with operator(**held):
        cluster.kubectl_apply(chain(), "-n", namespace)
        wait_for(done, timeout=120, what="the undisturbed chain")
    expected, expected_children = (
        comparable(cluster, namespace),
        children_by_kind(cluster, namespace),
    )
    assert expected["ftj"]["baseModelUri"] == expected["mm"]["outputUri"]
    cluster.kubectl("delete", "er,ftj,mm", "--all", "-n", namespace)
    wait_for(
        lambda: not any(children_by_kind(cluster, namespace).values()),
        what="the reference run's children to go",
    )

    # The same chain, with an operator that dies right after each of its writes.
    crashing = Crashing(monkeypatch)
    cluster.kubectl_apply(chain(), "-n", namespace)
    lives = 0
    while not done():
        lives += 1
        assert lives < 200, f"no progress after {crashing.writes} writes"
        with crashing.life(), operator(**held):
            # Until it dies, or has had nothing to write for a while (waiting on a pod).
            deadline = time.monotonic() + 3
            while not crashing.dead.is_set() and time.monotonic() < deadline:
                time.sleep(0.05)
    crashing.restore()
    with operator(**held):
        time.sleep(2)  # a healthy operator finds nothing left to do
    print(f"chain completed over {lives} operator lives, {crashing.writes} writes")
    # Three runs' Jobs and status writes, the eval's server and Service: 17 writes today.
    assert crashing.writes > 12, "the chain should take many writes, each followed by a crash"
    assert comparable(cluster, namespace) == expected
    assert children_by_kind(cluster, namespace) == expected_children


# -- two replicas, one active ----------------------------------------------------------------


def lease_holder(cluster: LocalCluster, namespace: str) -> str:
    found = cluster.kubectl(
        "get", "lease", "crucible-operator", "-n", namespace, "-o", "json", check=False
    )
    if found.returncode:
        return ""
    holder: str = json.loads(found.stdout)["spec"].get("holderIdentity") or ""
    return holder


def report_slice(cluster: LocalCluster, namespace: str) -> tuple[str, str, int] | None:
    """The address, pod and port the report Service's EndpointSlice names, if it exists."""
    found = cluster.kubectl(
        "get", "endpointslice", "reports", "-n", namespace, "-o", "json", check=False
    )
    if found.returncode:
        return None
    endpoints = json.loads(found.stdout)
    ((endpoint,), (port,)) = endpoints["endpoints"], endpoints["ports"]
    return endpoint["addresses"][0], endpoint["targetRef"]["name"], port["port"]


def push_through_the_service(
    cluster: LocalCluster, namespace: str, pod: dict[str, Any], report: dict[str, Any]
) -> None:
    """A workload's push as the report Service delivers it (kube-proxy's part): to the replica
    its EndpointSlice names (every replica here listens on 127.0.0.1, its own port)."""
    route = report_slice(cluster, namespace)
    assert route is not None
    url, context, token = report_target(cluster, pod)
    path = urllib.parse.urlsplit(url).path
    code, text = post(
        f"https://127.0.0.1:{route[2]}{path}", context, token, json.dumps(report).encode()
    )
    assert code == 202, (code, text)


def test_a_standby_replica_takes_over_when_the_leader_is_killed(
    cluster: LocalCluster, namespace: str, model_store: str, tmp_path: Path
) -> None:
    """The standby takes over the reconciles, and the report Service's endpoint with them: a
    training that pushed its progress to the leader pushes to the standby after the takeover,
    and ends with its results."""
    lease_seconds = 3
    replicas: dict[str, subprocess.Popen[bytes]] = {}
    logs = []
    reports = report_settings(cluster, tmp_path, "127.0.0.1")
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reports"}}
    service["spec"] = {"ports": [{"name": "https", "port": 8443}]}  # no selector
    cluster.kubectl_apply([service, *inputs()], "-n", namespace)
    addresses = {"replica-a": "10.9.0.1", "replica-b": "10.9.0.2"}
    for identity in ("replica-a", "replica-b"):
        log = (tmp_path / f"{identity}.log").open("wb")
        logs.append(log)
        env = {
            **os.environ,
            "KUBECONFIG": str(cluster.kubeconfig),
            "CRUCIBLE_HTTP_ADDRESS": "127.0.0.1",
            "CRUCIBLE_HTTP_PORT": str(free_port()),
            "CRUCIBLE_LEADER_ELECTION_NAMESPACE": namespace,
            "CRUCIBLE_LEASE_DURATION": str(lease_seconds),
            "CRUCIBLE_IDENTITY": identity,
            "CRUCIBLE_REPORT_TLS_DIR": reports["CRUCIBLE_REPORT_TLS_DIR"],
            "CRUCIBLE_REPORT_PORT": str(free_port()),
            "CRUCIBLE_REPORT_SERVICE": f"{namespace}/reports",
            "CRUCIBLE_REPORT_URL": f"https://reports.{namespace}.svc:8443",
            "CRUCIBLE_POD_IP": addresses[identity],
            "CRUCIBLE_PROGRESS_INTERVAL": "1",
        }
        argv = [sys.executable, "-m", "crucible.cli.main", "operator", "--namespace", namespace]
        replicas[identity] = processes.spawn(argv, log, tmp_path, env)
    try:
        leader = wait_for(lambda: lease_holder(cluster, namespace), what="a leader")
        wait_for(
            lambda: (report_slice(cluster, namespace) or ())[:2] == (addresses[leader], leader),
            what="the report Service to name the leader",
        )
        training = finetune("first", **HELD)
        training["spec"]["baseModel"] = {"uri": "hf://org/base"}
        cluster.kubectl_apply([training], "-n", namespace)
        pod = running_pod(cluster, namespace, "first-train")

        def pushed(progress: dict[str, Any]) -> None:
            push_through_the_service(cluster, namespace, pod, {"progress": progress})
            wait_for(
                lambda: status_of(cluster, namespace, "ftj", "first").get("progress") == progress,
                what=f"progress step {progress['step']} in the status",
            )

        pushed({"step": 1, "totalSteps": 4, "loss": 2.0})
        standby = next(name for name in replicas if name != leader)
        # Only the leader reconciles: the standby has logged no transition.
        assert "FineTuneJob" not in (tmp_path / f"{standby}.log").read_text()
        # The leader dies without a word (no Lease given back).
        replicas[leader].send_signal(signal.SIGKILL)
        replicas[leader].wait()
        killed = time.monotonic()
        cluster.kubectl_apply([merge("second", **HELD)], "-n", namespace)
        wait_phase(cluster, namespace, "mm", "second", "Running", timeout=30)
        takeover = time.monotonic() - killed
        print(f"takeover after the leader was killed: {takeover:.1f} s (Lease {lease_seconds} s)")
        assert lease_holder(cluster, namespace) == standby
        assert takeover < 4 * lease_seconds
        assert len(objects(cluster, namespace, "job")) == 2
        assert f"ModelMerge {namespace}/second Running" in (tmp_path / f"{standby}.log").read_text()
        # The workloads' reports go to the new leader: the training goes on reporting there.
        wait_for(
            lambda: (report_slice(cluster, namespace) or ())[:2] == (addresses[standby], standby),
            what="the report Service to name the new leader",
        )
        pushed({"step": 3, "totalSteps": 4, "loss": 1.0})
        final = {
            "progress": {"step": 4, "totalSteps": 4, "loss": 0.5},
            "adapterModules": ["q_proj"],
        }
        push_through_the_service(cluster, namespace, pod, final)
        finish_pod(cluster, namespace, pod, report=final)
        done = wait_phase(cluster, namespace, "ftj", "first", "Succeeded")
        assert done["progress"] == final["progress"]
        assert done["adapterTargetModules"] == final["adapterModules"]
    finally:
        for replica in replicas.values():
            processes.stop(replica)
        for log in logs:
            log.close()
