"""A real Prometheus scrapes the operator after EvalRuns, and every Grafana panel's query
returns data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crucible.devcluster.cluster import LocalCluster, free_port
from crucible.metrics.dashboards import render_dashboards
from tests.cluster.conftest import (
    HOLD_IMAGE,
    finish_pod,
    running_pod,
    wait_phase,
)
from tests.cluster.test_experiment import play_small_experiment
from tests.conftest import wait_for
from tests.manifests import inputs, result

# Grafana's variables, as "All" and the default range interval would fill them in.
VARIABLES = {"$namespace": ".*", "$evalrun": ".*", "$__rate_interval": "1m"}


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture
def operator_port(cluster: LocalCluster, namespace: str, tmp_path: Path) -> Iterator[int]:
    port = free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "CRUCIBLE_HTTP_PORT": str(port),
        "CRUCIBLE_HTTP_ADDRESS": "127.0.0.1",
        "CRUCIBLE_EVAL_IMAGE": HOLD_IMAGE,
        "CRUCIBLE_ERROR_BACKOFF": "0.3",
        "CRUCIBLE_JOB_BACKOFF_LIMIT": "0",
    }
    with (tmp_path / "operator.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "crucible.cli.main", "operator", "-n", namespace],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield port
        finally:
            process.terminate()
            process.wait(30)


@pytest.fixture
def prometheus(operator_port: int, tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus missing: run hack/setup.sh (Debian's prometheus package)"
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "crucible",
                        "static_configs": [{"targets": [f"127.0.0.1:{operator_port}"]}],
                    }
                ],
            }
        )
    )
    port = free_port()
    with (tmp_path / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(30)


def endpoint_eval(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "crucible.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": name},
        "spec": {
            "models": [
                {
                    "name": "gpt",
                    "endpoint": {
                        "url": "https://api.example.com/v1",
                        "model": "gpt-4",
                        "apiKeySecretRef": {"name": "openai", "key": "apiKey"},
                    },
                }
            ],
            "dataset": {"configMap": {"name": "mcq", "key": "mcq.csv"}},
            "repeats": 3,
        },
    }


def run_eval(
    cluster: LocalCluster,
    namespace: str,
    name: str,
    report: dict[str, Any] | None,
) -> None:
    cluster.kubectl_apply([endpoint_eval(name)], "-n", namespace)
    pod = running_pod(cluster, namespace, f"{name}-eval")
    if report is None:
        finish_pod(cluster, namespace, pod, exit_code=1, message="endpoint unreachable")
        wait_phase(cluster, namespace, "er", name, "Failed")
        return
    finish_pod(cluster, namespace, pod, report=report)
    wait_phase(cluster, namespace, "er", name, "Succeeded")


def query(prometheus_url: str, expr: str) -> list[dict[str, Any]]:
    url = f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    answer = http_json(url)
    assert answer["status"] == "success", answer
    results: list[dict[str, Any]] = answer["data"]["result"]
    return results


@pytest.mark.pod_security_baseline
def test_every_dashboard_panel_returns_data(
    cluster: LocalCluster, namespace: str, model_store: str, prometheus: str
) -> None:
    cluster.kubectl_apply(inputs(), "-n", namespace)
    run_eval(
        cluster,
        namespace,
        "monday",
        {
            "results": [
                result("gpt", True, [0.62, 0.64, 0.66]),
                result("gpt", False, [0.55, 0.56, 0.57]),
                {
                    **result("base", False, [0.5]),
                    "scoring": "LogLikelihood",
                    "accuracyStddev": None,
                    "accuracyNorm": 0.54,
                },
            ],
            "pairedTests": [
                {
                    "a": "gpt",
                    "aRag": True,
                    "b": "gpt",
                    "bRag": False,
                    "difference": 0.08,
                    "ci95Low": 0.02,
                    "ci95High": 0.14,
                    "test": "PairedT",
                    "pValue": 0.01,
                }
            ],
        },
    )
    run_eval(
        cluster,
        namespace,
        "tuesday",
        {
            "results": [
                result("gpt", True, [0.52, 0.53, 0.54]),
                result("gpt", False, [0.55, 0.55, 0.56]),
            ],
            "judgeRatings": [
                {"model": "gpt", "rating": 1000.0, "ci95Low": 980.0, "ci95High": 1020.0}
            ],
        },
    )
    run_eval(cluster, namespace, "broken", None)
    play_small_experiment(cluster, namespace)
    # A model served through a gate on monday's figures.
    gate = {
        "evalRunRef": {"name": "monday"},
        "candidate": {"model": "base"},
        "rules": [{"minimumAccuracy": 0.4}],
    }
    served = {
        "apiVersion": "crucible.dev/v1alpha1",
        "kind": "ModelServing",
        "metadata": {"name": "assistant"},
        "spec": {"model": {"uri": "hf://org/base"}, "gate": gate},
    }
    cluster.kubectl_apply([served], "-n", namespace)

    wait_for(
        lambda: (
            query(prometheus, "count_over_time(crucible_eval_accuracy[1m]) > 3")
            and query(prometheus, "crucible_experiment_held_out_holds")
            and query(prometheus, "crucible_model_serving_ready_replicas > 0")
        ),
        timeout=60,
        what="several scrapes of the operator, the last after the experiment's verdict",
    )
    exprs = [
        (name, panel["title"], target["expr"])
        for name, text in render_dashboards().items()
        for panel in json.loads(text)["panels"]
        for target in panel["targets"]
    ]
    assert len(exprs) >= 12
    empty = []
    for name, title, template in exprs:
        expr = template
        for variable, value in VARIABLES.items():
            expr = expr.replace(variable, value)
        if not query(prometheus, expr):
            empty.append(f"{name} / {title}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    # The regression alert's expression sees tuesday's drop with RAG (0.11 > stddev 0.02).
    dropped = query(
        prometheus, "crucible_eval_accuracy_delta < -crucible_eval_accuracy_previous_stddev"
    )
    assert [(r["metric"]["model"], r["metric"]["rag"]) for r in dropped] == [("gpt", "true")]
