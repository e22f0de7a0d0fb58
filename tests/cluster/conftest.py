"""Fixtures for running the operator against the control plane and playing the parts that
kwok does not: the workload pushing its report, the kubelet finishing a held pod."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kopf.testing import KopfRunner

from crucible.api.contract import WorkloadReport, pack_report
from crucible.devcluster.cluster import LocalCluster, folder_claim, free_port
from crucible.devcluster.pki import issue
from crucible.resources.common import TASK_ANNOTATION
from tests.conftest import wait_for

HOLD_IMAGE = "kwok.crucible.test/hold"
OperatorFactory = Callable[..., contextlib.AbstractContextManager[KopfRunner]]


@pytest.fixture
def model_store_folder(namespace: str, request: pytest.FixtureRequest) -> Path:
    """Where the model store's PersistentVolume is on the host: on a `real_node` test, a folder
    the node sees (and its pods' user may write)."""
    if request.node.get_closest_marker("real_node"):
        folder: Path = request.getfixturevalue("node").volumes[0] / namespace
        folder.mkdir(mode=0o777)
        folder.chmod(0o777)
        return folder
    return Path(f"/tmp/{namespace}")


@pytest.fixture
def model_store(cluster: LocalCluster, namespace: str, model_store_folder: Path) -> str:
    """The model-store PVC, bound to a PersistentVolume so that pods mounting it schedule."""
    cluster.kubectl_apply(folder_claim(namespace, "crucible-models", model_store_folder))
    wait_for(
        lambda: (
            cluster.kubectl(
                "get", "pvc", "crucible-models", "-n", namespace, "-o", "jsonpath={.status.phase}"
            ).stdout
            == "Bound"
        ),
        what="the model store PVC to bind",
    )
    return "crucible-models"


@pytest.fixture
def operator(
    cluster: LocalCluster, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> OperatorFactory:
    """`with operator(**env):` runs the operator (kopf, in this process) on the namespace."""
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))

    @contextlib.contextmanager
    def run(**env: str) -> Iterator[KopfRunner]:
        settings = {
            "CRUCIBLE_ERROR_BACKOFF": "0.3",
            "CRUCIBLE_JOB_BACKOFF_LIMIT": "0",
            # kopf's own scope is -n below; the engine's informers take this one.
            "CRUCIBLE_WATCH_NAMESPACES": namespace,
            **env,
        }
        with monkeypatch.context() as patched:
            for key, value in settings.items():
                patched.setenv(key, value)
            args = ["run", "--standalone", "-n", namespace, "-m", "crucible.controllers"]
            with KopfRunner(args, timeout=60) as runner:
                yield runner
        assert runner.exception is None, runner.output

    return run


def report_settings(cluster: LocalCluster, folder: Path, host: str) -> dict[str, str]:
    """The operator's settings for serving its report endpoint on `host`, where the pods reach
    it, with a certificate the cluster's CA signs (written into `folder`)."""
    assert cluster.pki is not None
    issue(cluster.pki, folder, "tls", "crucible-reports", hosts=[host])
    (folder / "ca.crt").write_bytes(cluster.pki.ca_cert.read_bytes())
    port = free_port()
    return {
        "CRUCIBLE_REPORT_TLS_DIR": str(folder),
        "CRUCIBLE_REPORT_PORT": str(port),
        "CRUCIBLE_HTTP_ADDRESS": host,
        "CRUCIBLE_REPORT_URL": f"https://{host}:{port}",
    }


def status_of(cluster: LocalCluster, namespace: str, kind: str, name: str) -> dict[str, Any]:
    out = cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    if out.returncode:
        return {}
    status: dict[str, Any] = json.loads(out.stdout).get("status") or {}
    return status


def wait_phase(
    cluster: LocalCluster, namespace: str, kind: str, name: str, phase: str, *, timeout: float = 60
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        status = status_of(cluster, namespace, kind, name)
        if status.get("phase") == phase:
            return status
        if status.get("phase") in ("Succeeded", "Failed"):
            raise AssertionError(f"{kind}/{name} ended {status['phase']}, not {phase}: {status}")
        return None

    result: dict[str, Any] = wait_for(reached, timeout=timeout, what=f"{kind}/{name} {phase}")
    return result


def ready_condition(status: dict[str, Any]) -> dict[str, Any]:
    (ready,) = [c for c in status["conditions"] if c["type"] == "Ready"]
    return ready


def running_pod(cluster: LocalCluster, namespace: str, job: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        pods = json.loads(
            cluster.kubectl(
                "get", "pods", "-n", namespace, "-l", f"job-name={job}", "-o", "json"
            ).stdout
        )["items"]
        running = [p for p in pods if p.get("status", {}).get("phase") == "Running"]
        return running[0] if running else None

    pod: dict[str, Any] = wait_for(find, what=f"a running pod of Job {job}")
    return pod


def mint(cluster: LocalCluster, pod: dict[str, Any], audience: str | None) -> str:
    """A token of the pod's ServiceAccount bound to the pod, as the kubelet projects one."""
    meta = pod["metadata"]
    args = [
        "create",
        "token",
        pod["spec"].get("serviceAccountName") or "default",
        "-n",
        meta["namespace"],
        "--bound-object-kind=Pod",
        f"--bound-object-name={meta['name']}",
        f"--bound-object-uid={meta['uid']}",
        "--duration=1h",  # as the projected token of a workload pod lasts
    ]
    if audience is not None:
        args.append(f"--audience={audience}")
    return cluster.kubectl(*args).stdout.strip()


def post(url: str, context: ssl.SSLContext, token: str | None, body: bytes) -> tuple[int, str]:
    """POST `body` to the report endpoint at `url`; its answer's code and text."""
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def report_target(cluster: LocalCluster, pod: dict[str, Any]) -> tuple[str, ssl.SSLContext, str]:
    """Where a workload pod pushes its reports, as its task names it, the TLS context that
    trusts the endpoint's CA, and a token bound to the pod for the audience it projects."""
    task = json.loads(pod["metadata"]["annotations"][TASK_ANNOTATION])
    (audience,) = [
        source["serviceAccountToken"]["audience"]
        for volume in pod["spec"]["volumes"]
        for source in (volume.get("projected") or {}).get("sources", [])
    ]
    context = ssl.create_default_context(cadata=task["reportCa"])
    return task["reportUrl"], context, mint(cluster, pod, audience)


def push_report(cluster: LocalCluster, namespace: str, job: str, report: dict[str, Any]) -> None:
    """What the workload of a running pod of `job` does while it runs: POST its report to the
    endpoint its task names, with its token for that endpoint."""
    url, context, token = report_target(cluster, running_pod(cluster, namespace, job))
    code, text = post(url, context, token, json.dumps(report).encode())
    assert code == 202, (code, text)


@contextlib.contextmanager
def paused(cluster: LocalCluster, component: str) -> Iterator[None]:
    """`component` (kube-apiserver, etcd, ...) hung inside the block: its process is stopped,
    so it holds its connections and answers nothing, and continued after."""
    pid = cluster.pids()[component]
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def pod_status(pod: dict[str, Any], phase: str, state: dict[str, Any]) -> dict[str, Any]:
    """The status the kubelet reports for `pod` whose one container is in `state`."""
    container = pod["spec"]["containers"][0]
    return {
        "phase": phase,
        "containerStatuses": [
            {
                "name": container["name"],
                "image": container["image"],
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": state,
            }
        ],
    }


def set_pod_status(
    cluster: LocalCluster, namespace: str, pod: dict[str, Any], status: dict[str, Any]
) -> None:
    cluster.kubectl(
        "patch",
        "pod",
        pod["metadata"]["name"],
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def exited(exit_code: int = 0, message: str = "") -> dict[str, Any]:
    """A container state: terminated with `exit_code`."""
    terminated = {
        "exitCode": exit_code,
        "reason": "Completed" if exit_code == 0 else "Error",
        "startedAt": "2026-01-01T00:00:00Z",
        "finishedAt": "2026-01-01T00:00:01Z",
        **({"message": message} if message else {}),
    }
    return {"terminated": terminated}


def finish_pod(
    cluster: LocalCluster,
    namespace: str,
    pod: dict[str, Any],
    exit_code: int = 0,
    message: str = "",
    *,
    report: dict[str, Any] | None = None,
) -> None:
    """What the kubelet does when the container exits: its termination message is `message`,
    or the workload's last `report` packed as its Reporter leaves it."""
    if report is not None:
        message = pack_report(WorkloadReport.model_validate(report)) or ""
    phase = "Succeeded" if exit_code == 0 else "Failed"
    set_pod_status(cluster, namespace, pod, pod_status(pod, phase, exited(exit_code, message)))
