"""The report endpoint on the real control plane: a report pushed with a token the API server
minted for the run's pod and audience reaches the status; a token of another run, of another
namespace, for another audience, expired, of a deleted pod, or forged is refused, and nothing
is written. A run whose last push is lost (the operator down, the API server hung) gets its
results from its pod's termination message."""

from __future__ import annotations

import base64
import json
import ssl
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from prometheus_client import REGISTRY

from crucible.api.kinds import FINE_TUNE_JOB
from crucible.devcluster.cluster import LocalCluster
from crucible.resources.common import Owner, report_audience, report_path
from crucible.resources.reports import MAX_REPORT_BYTES
from tests.cluster.conftest import (
    HOLD_IMAGE,
    OperatorFactory,
    finish_pod,
    mint,
    paused,
    post,
    report_settings,
    report_target,
    running_pod,
    status_of,
    wait_phase,
)
from tests.conftest import wait_for
from tests.manifests import finetune, inputs

HELD = {"resources": {"gpus": 0, "image": HOLD_IMAGE}}


@pytest.fixture
def other_namespace(cluster: LocalCluster) -> Iterator[str]:
    name = f"t-other-{time.monotonic_ns() % 10**8}"
    cluster.kubectl("create", "namespace", name)
    wait_for(
        lambda: not cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode,
        what=f"the default ServiceAccount of {name}",
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def resigned(token: str, key: rsa.RSAPrivateKey, **claims: Any) -> str:
    """`token`'s claims, changed by `claims`, signed RS256 by `key`."""
    header, payload, _ = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body = f"{header}.{_b64(json.dumps({**decoded, **claims}).encode())}"
    signature = key.sign(body.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{body}.{_b64(signature)}"


def push(port: int, ca: Path, path: str, token: str | None, body: bytes) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(ca))
    return post(f"https://127.0.0.1:{port}{path}", context, token, body)


def answered(code: int) -> float:
    sample = REGISTRY.get_sample_value("crucible_report_requests_total", {"code": str(code)})
    return sample or 0.0


@pytest.mark.usefixtures("model_store")
def test_only_the_runs_own_pod_reports_to_the_endpoint(
    cluster: LocalCluster,
    namespace: str,
    other_namespace: str,
    operator: OperatorFactory,
    tmp_path: Path,
) -> None:
    assert cluster.pki is not None
    env = report_settings(cluster, tmp_path, "127.0.0.1")
    port, tls_dir = int(env["CRUCIBLE_REPORT_PORT"]), tmp_path
    cluster.kubectl_apply(inputs(), "-n", namespace)
    with operator(**env):
        runs = [finetune(name, base="m", **HELD) for name in ("tuned", "other")]
        for run in runs:
            run["spec"]["baseModel"] = {"uri": "hf://org/base"}
        cluster.kubectl_apply(runs, "-n", namespace)
        pod, other_pod = (running_pod(cluster, namespace, f"{n}-train") for n in ("tuned", "other"))
        run = json.loads(
            cluster.kubectl("get", "ftj", "tuned", "-n", namespace, "-o", "json").stdout
        )
        owner = Owner(FINE_TUNE_JOB, "tuned", namespace, run["metadata"]["uid"])
        audience, path = report_audience(owner), report_path(owner)
        stranger = json.loads(
            cluster.kubectl(
                "run", "stranger", "-n", other_namespace, f"--image={HOLD_IMAGE}", "-o", "json"
            ).stdout
        )
        real = mint(cluster, pod, audience)
        signing_key = serialization.load_pem_private_key(
            cluster.pki.service_account_key.read_bytes(), password=None
        )
        assert isinstance(signing_key, rsa.RSAPrivateKey)
        past = int(time.time()) - 3600
        other_audience = audience.replace("/tuned", "/other")
        # Each with the reason the API server or the bound-pod check gives.
        refused = {
            "another run's": (mint(cluster, other_pod, other_audience), "invalid for the target"),
            "another run's pod's": (mint(cluster, other_pod, audience), "is not one of"),
            "another namespace's": (mint(cluster, stranger, audience), "is of namespace"),
            "the API server's": (mint(cluster, pod, None), "invalid for the target audiences"),
            "an expired": (
                resigned(real, signing_key, iat=past - 600, nbf=past - 600, exp=past),
                "expired",
            ),
            "a forged": (
                resigned(real, rsa.generate_private_key(public_exponent=65537, key_size=2048)),
                "invalid bearer token",
            ),
        }
        # The forging itself is sound: the same claims re-signed by the API server's key pass.
        assert push(port, tls_dir / "ca.crt", path, resigned(real, signing_key), b"{}")[0] == 202
        refusals = answered(401) + answered(403)
        report = json.dumps({"progress": {"step": 9, "totalSteps": 10, "loss": 9.0}}).encode()
        for what, (token, why) in refused.items():
            code, text = push(port, tls_dir / "ca.crt", path, token, report)
            assert code in (401, 403) and why in text, f"{what} token: {code} {text}"
        assert answered(401) + answered(403) == refusals + len(refused)
        # A deleted pod's token, for its own run ("other").
        deleted = mint(cluster, other_pod, other_audience)
        cluster.kubectl("delete", "pod", other_pod["metadata"]["name"], "-n", namespace)
        code, text = push(
            port, tls_dir / "ca.crt", path.replace("/tuned", "/other"), deleted, report
        )
        assert code == 401 and "invalidated" in text, (code, text)
        # No token, and a report past the size limit.
        assert push(port, tls_dir / "ca.crt", path, None, b"{}")[0] == 401
        huge = b" " * (MAX_REPORT_BYTES + 1)
        assert push(port, tls_dir / "ca.crt", path, real, huge)[0] == 413
        time.sleep(2)
        assert "progress" not in status_of(cluster, namespace, "ftj", "tuned")
        assert "progress" not in status_of(cluster, namespace, "ftj", "other")
        # The run's own pod's token: its progress is the status's.
        progress = {"step": 3, "totalSteps": 10, "loss": 1.5}
        code, text = push(
            port, tls_dir / "ca.crt", path, real, json.dumps({"progress": progress}).encode()
        )
        assert code == 202, text
        wait_for(
            lambda: status_of(cluster, namespace, "ftj", "tuned").get("progress") == progress,
            what="the pushed progress in the status",
        )
        # A flood is cut at the run's budget, before any token is reviewed.
        codes = [push(port, tls_dir / "ca.crt", path, "x", b"{}")[0] for _ in range(12)]
        assert 429 in codes, codes


def held_training(name: str) -> dict[str, Any]:
    run = finetune(name, **HELD)
    run["spec"]["baseModel"] = {"uri": "hf://org/base"}
    return run


@pytest.mark.usefixtures("model_store")
def test_the_results_reach_the_status_when_the_last_push_is_lost(
    cluster: LocalCluster, namespace: str, operator: OperatorFactory, tmp_path: Path
) -> None:
    """A workload ends while the operator is down, then while the API server answers nothing:
    its last push is lost or refused each time, and the status gets its exact results from its
    pod's termination message all the same."""
    env = report_settings(cluster, tmp_path, "127.0.0.1")
    cluster.kubectl_apply(inputs(), "-n", namespace)
    final = {
        "progress": {"step": 8, "totalSteps": 8, "loss": 0.25},
        "adapterModules": ["q_proj", "v_proj"],
    }

    def ended_with_the_results(name: str) -> None:
        done = wait_phase(cluster, namespace, "ftj", name, "Succeeded")
        assert done["progress"] == final["progress"]
        assert done["adapterTargetModules"] == final["adapterModules"]

    with operator(**env):
        cluster.kubectl_apply([held_training("down")], "-n", namespace)
        pod = running_pod(cluster, namespace, "down-train")
        url, context, token = report_target(cluster, pod)
        progress = {"step": 1, "totalSteps": 8, "loss": 2.0}
        assert post(url, context, token, json.dumps({"progress": progress}).encode())[0] == 202
        wait_for(
            lambda: status_of(cluster, namespace, "ftj", "down").get("progress") == progress,
            what="the pushed progress",
        )
    # The operator is gone when the workload ends: its last push finds no one.
    with pytest.raises(urllib.error.URLError):
        post(url, context, token, json.dumps(final).encode())
    finish_pod(cluster, namespace, pod, report=final)
    with operator(**env):
        ended_with_the_results("down")

        cluster.kubectl_apply([held_training("hung")], "-n", namespace)
        pod = running_pod(cluster, namespace, "hung-train")
        url, context, token = report_target(cluster, pod)
        unavailable = answered(503)
        with paused(cluster, "kube-apiserver"):
            code, text = post(url, context, token, json.dumps(final).encode())
        # Answered before the workload stops waiting (10 s), and nothing taken.
        assert code == 503 and "nothing is taken" in text, (code, text)
        assert answered(503) == unavailable + 1
        assert "progress" not in status_of(cluster, namespace, "ftj", "hung")
        # The kubelet writes the pod's end once the API server answers again.
        finish_pod(cluster, namespace, pod, report=final)
        ended_with_the_results("hung")
