"""The operator entrypoint: kopf handlers registered for the four kinds, /healthz, /metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kopf.testing import KopfRunner

from crucible.devcluster.cluster import LocalCluster, free_port
from tests.conftest import EXAMPLES, wait_for


@pytest.fixture
def kubeconfig_env(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    return cluster.kubeconfig


def _phase(cluster: LocalCluster, namespace: str, kind: str, name: str) -> dict:
    obj = json.loads(cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout)
    status: dict = obj.get("status", {})
    return status


def test_every_kind_is_reconciled(
    cluster: LocalCluster, namespace: str, kubeconfig_env: Path
) -> None:
    args = ["run", "--standalone", "-n", namespace, "-m", "crucible.controllers"]
    with KopfRunner(args, timeout=60) as runner:
        cluster.kubectl("create", "-n", namespace, "-f", str(EXAMPLES / "nitro"))
        for kind, name, phase in [
            ("mm", "mistral-wizardmath", "Pending"),
            ("mm", "stealth-merge", "Waiting"),
            ("ftj", "nitro-sft", "Waiting"),
            ("ri", "nitro-docs", "Pending"),
            ("er", "nitro-benchmark", "Waiting"),
        ]:
            status = wait_for(
                lambda k=kind, n=name, p=phase: (
                    _phase(cluster, namespace, k, n).get("phase") == p
                    and _phase(cluster, namespace, k, n)
                ),
                what=f"{kind}/{name} to be {phase}",
            )
            assert status["observedGeneration"] == 1
            (ready,) = status["conditions"]
            assert (ready["type"], ready["status"]) == ("Ready", "False")
            assert ready["observedGeneration"] == 1
        # No model store in this namespace: the merge's pod cannot be scheduled, and says so.
        wait_for(
            lambda: (
                _phase(cluster, namespace, "mm", "mistral-wizardmath")["conditions"][0]["reason"]
                == "Unschedulable"
            ),
            what="the Unschedulable reason",
        )
        message = _phase(cluster, namespace, "mm", "mistral-wizardmath")["conditions"][0]["message"]
        assert 'persistentvolumeclaim "crucible-models" not found' in message
        cluster.kubectl("delete", "-n", namespace, "-f", str(EXAMPLES / "nitro"))
    assert runner.exception is None
    assert runner.exit_code == 0


@pytest.fixture
def operator_process(
    cluster: LocalCluster, namespace: str, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    log = (tmp_path / "operator.log").open("wb")
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "CRUCIBLE_HTTP_ADDRESS": "127.0.0.1",
        "CRUCIBLE_HTTP_PORT": str(port),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "crucible.cli.main", "operator", "-n", namespace],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    yield process, port
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""
    except OSError:
        return 0, ""


def test_operator_command_serves_health_and_metrics(
    cluster: LocalCluster,
    namespace: str,
    operator_process: tuple[subprocess.Popen[bytes], int],
) -> None:
    process, port = operator_process
    wait_for(
        lambda: _get(f"http://127.0.0.1:{port}/healthz")[0] == 200,
        timeout=60,
        what="/healthz to report ok",
    )
    status, body = _get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200 and "python_info" in body
    cluster.kubectl("create", "-n", namespace, "-f", str(EXAMPLES / "nitro" / "03-rag.yaml"))
    wait_for(
        lambda: _phase(cluster, namespace, "ri", "nitro-docs").get("phase") == "Pending",
        what="the operator process to take the RagIndex in",
    )
    cluster.kubectl("delete", "ri", "nitro-docs", "-n", namespace)
    assert process.poll() is None


def test_the_cli_reads_the_cluster_with_the_operators_credentials(
    cluster: LocalCluster, namespace: str
) -> None:
    """`crucible status` builds its client as the operator does, from the kubeconfig given."""
    cluster.kubectl("create", "-n", namespace, "-f", str(EXAMPLES / "nitro"))
    shown = subprocess.run(
        [
            sys.executable, "-m", "crucible.cli.main", "status", "-n", namespace,
            f"--kubeconfig={cluster.kubeconfig}",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "KUBECONFIG"},
    ).stdout  # fmt: skip
    rows = {tuple(line.split()[:2]) for line in shown.splitlines()[1:]}
    assert {("SyntheticDataset", "nitro-qa"), ("ModelMerge", "stealth-merge")} <= rows
