"""Explaining Job outcomes, and the operator's configuration."""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path
from typing import Any

import kopf
import pytest

from crucible.api.common import Phase
from crucible.api.contract import (
    TERMINATION_MESSAGE_BYTES,
    WorkloadReport,
    pack_report,
    pack_summary,
    unpack_report,
)
from crucible.config import ConfigError, OperatorConfig
from crucible.controllers.kube import Kube, client_configuration
from crucible.controllers.settings import login
from crucible.resources.jobs import job_outcome, packed_report


def job(*conditions: tuple[str, str], suspend: bool = False) -> dict[str, Any]:
    return {
        "metadata": {"name": "j"},
        "spec": {"suspend": suspend},
        "status": {
            "conditions": [{"type": t, "status": "True", "reason": r} for t, r in conditions]
        },
    }


def pod(state: dict[str, Any], phase: str = "Failed", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": {
            "phase": phase,
            **status,
            "containerStatuses": [{"name": "main", "image": "img", "state": state}],
        },
    }


def test_a_report_packs_into_a_termination_message_and_back_exactly() -> None:
    report = WorkloadReport.model_validate(
        {
            "progress": {"step": 120, "totalSteps": 120, "loss": 0.123456789, "epoch": 3.0},
            "adapterModules": [f"model.layers.{i}.self_attn.q_proj" for i in range(200)],
            "message": "trained 120 steps, resumed from step 96 — ünïcode too",
        }
    )
    packed = pack_report(report)
    assert packed is not None and len(packed.encode()) <= TERMINATION_MESSAGE_BYTES
    assert unpack_report(packed) == report
    # An error's message (or its log's tail) is no report; a damaged one is refused.
    assert unpack_report("Traceback (most recent call last): ...") is None
    with pytest.raises(ValueError, match="does not decode"):
        unpack_report(packed[:-7])


def test_a_report_too_large_for_a_termination_message_packs_a_summary_naming_what_it_left() -> None:
    # Random text does not compress: 4 KiB of it cannot fit in 4 KiB of base64.
    noise = base64.b85encode(random.Random(0).randbytes(3200)).decode()[:4096]
    modules = [f"model.layers.{i}.mlp.up_proj" for i in range(200)]
    report = WorkloadReport(message=noise, adapter_modules=modules, chunks=7)
    packed = pack_report(report)
    assert len(packed.encode()) <= TERMINATION_MESSAGE_BYTES
    # The message goes first; the modules, which compress, fit beside the figures.
    assert unpack_report(packed) == WorkloadReport(
        adapter_modules=modules, chunks=7, left_out=["message"]
    )
    assert pack_summary(report) == (unpack_report(packed), packed)


def test_the_packed_report_is_the_newest_succeeded_pod_s() -> None:
    old, new = (
        pack_report(WorkloadReport(message=text)) for text in ("the first try", "the retry")
    )
    first = pod({"terminated": {"exitCode": 0, "message": old}}, "Succeeded")
    second = pod({"terminated": {"exitCode": 0, "message": new}}, "Succeeded")
    second["metadata"]["creationTimestamp"] = "2026-01-01T00:01:00Z"
    failed = pod({"terminated": {"exitCode": 1, "message": new}})
    failed["metadata"]["creationTimestamp"] = "2026-01-01T00:02:00Z"
    running = pod({"running": {}}, "Running")
    assert packed_report([first, second, failed, running]) == new
    assert packed_report([pod({"terminated": {"exitCode": 0, "message": "done"}})]) is None
    assert packed_report([]) is None


def test_complete_job_succeeds() -> None:
    assert job_outcome(job(("Complete", "")), []).phase == Phase.SUCCEEDED


def test_oomkilled_is_named_with_the_fix() -> None:
    outcome = job_outcome(
        job(("Failed", "BackoffLimitExceeded")),
        [pod({"terminated": {"exitCode": 137, "reason": "OOMKilled"}})],
    )
    assert (outcome.phase, outcome.reason) == (Phase.FAILED, "OOMKilled")
    assert "spec.resources.memory" in outcome.message


def test_exit_code_and_termination_message() -> None:
    outcome = job_outcome(
        job(("Failed", "BackoffLimitExceeded")),
        [pod({"terminated": {"exitCode": 2, "reason": "Error", "message": "row 7: no answer"}})],
    )
    assert outcome.reason == "Error"
    assert outcome.message == "container main exited with code 2: row 7: no answer"


UNKNOWN = {
    "terminated": {
        "exitCode": 137,
        "reason": "ContainerStatusUnknown",
        "message": "The container could not be located when the pod was terminated",
    }
}


def test_a_container_the_kubelet_lost_says_less_than_one_that_failed_itself() -> None:
    failed = pod({"terminated": {"exitCode": 1, "reason": "Error", "message": "no host nowhere"}})
    lost = pod(UNKNOWN)
    lost["metadata"]["creationTimestamp"] = "2026-01-01T00:01:00Z"  # newer
    outcome = job_outcome(job(("Failed", "BackoffLimitExceeded")), [lost, failed])
    assert outcome.message == "container main exited with code 1: no host nowhere"


def test_an_evicted_pod_says_why_the_kubelet_stopped_it() -> None:
    evicted = pod(
        UNKNOWN, reason="Evicted", message="The node was low on resource: ephemeral-storage."
    )
    outcome = job_outcome(job(("Failed", "BackoffLimitExceeded")), [evicted])
    assert outcome.message == (
        "container main exited with code 137: "
        "Evicted: The node was low on resource: ephemeral-storage."
    )


def test_a_failed_index_of_a_training_on_several_nodes_is_named() -> None:
    pod = {
        "metadata": {
            "name": "run-train-1-abcde",
            "labels": {"batch.kubernetes.io/job-completion-index": "1"},
        },
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {
                    "name": "train",
                    "state": {"terminated": {"exitCode": 1, "message": "NCCL timeout"}},
                }
            ],
        },
    }
    failed = {"status": {"conditions": [{"type": "Failed", "status": "True"}]}}
    outcome = job_outcome({"metadata": {"name": "run-train"}, **failed}, [pod])
    assert outcome.phase == Phase.FAILED
    assert outcome.message == (
        "index 1 (pod run-train-1-abcde): container train exited with code 1: NCCL timeout"
    )


def test_deadline_exceeded() -> None:
    outcome = job_outcome(job(("Failed", "DeadlineExceeded")), [])
    assert (outcome.phase, outcome.reason) == (Phase.FAILED, "DeadlineExceeded")


def test_image_pull_failure_fails_at_once() -> None:
    outcome = job_outcome(
        job(),
        [pod({"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}, phase="Pending")],
    )
    assert (outcome.phase, outcome.reason) == (Phase.FAILED, "ImagePullFailed")
    assert "img" in outcome.message and "not found" in outcome.message


def test_unschedulable_pod_is_reported() -> None:
    stuck = pod(
        {},
        phase="Pending",
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/2 nodes have enough nvidia.com/gpu",
            }
        ],
    )
    outcome = job_outcome(job(), [stuck])
    assert (outcome.phase, outcome.reason) == (Phase.PENDING, "Unschedulable")
    assert "nvidia.com/gpu" in outcome.message


def test_a_container_waiting_for_its_configuration_outranks_a_stale_failed_mount() -> None:
    """The kubelet's first try of a ConfigMap volume can fail while its cache fills: the event
    stays after the retry that worked. A container waiting for a missing Secret key is what
    holds the pod now, and the status says so."""
    waiting = pod(
        {
            "waiting": {
                "reason": "CreateContainerConfigError",
                "message": "couldn't find key uri in Secret team/pg",
            }
        },
        phase="Pending",
    )
    stale = {waiting["metadata"]["name"]: "failed to sync configmap cache: timed out"}
    outcome = job_outcome(job(), [waiting], stale)
    assert outcome.reason == "InputNotFound"
    assert "(CreateContainerConfigError): couldn't find key uri in Secret team/pg" in (
        outcome.message
    )
    # With the containers not created yet, the mount failure is the news.
    mounting = pod({"waiting": {"reason": "ContainerCreating"}}, phase="Pending")
    outcome = job_outcome(job(), [mounting], {mounting["metadata"]["name"]: "no such ConfigMap"})
    assert "cannot mount its volumes (FailedMount): no such ConfigMap" in outcome.message


def test_failed_attempt_with_retries_left_is_still_running() -> None:
    outcome = job_outcome(job(), [pod({"terminated": {"exitCode": 1, "reason": "Error"}})])
    assert (outcome.phase, outcome.reason) == (Phase.RUNNING, "Retrying")


def test_suspended_job_is_queued() -> None:
    assert job_outcome(job(suspend=True), []).reason == "Queued"


def test_config_defaults_are_valid() -> None:
    config = OperatorConfig.from_env({})
    assert config.gpu_resource == "nvidia.com/gpu"
    assert config.model_store_pvc == "crucible-models"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CRUCIBLE_GPU_RESOURCE", "nvidia gpu"),
        ("CRUCIBLE_MODEL_STORE_PVC", "Models_PVC"),
        ("CRUCIBLE_WATCH_NAMESPACES", "team-a,Team B"),
        ("CRUCIBLE_IMAGE_PULL_POLICY", "Sometimes"),
        ("CRUCIBLE_JOB_BACKOFF_LIMIT", "-1"),
        ("CRUCIBLE_MODEL_STORE_MOUNT", "models"),
    ],
)
def test_bad_settings_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as error:
        OperatorConfig.from_env({variable: value})
    assert variable in str(error.value)


def test_watch_namespaces_split() -> None:
    config = OperatorConfig.from_env({"CRUCIBLE_WATCH_NAMESPACES": "a, b"})
    assert config.watch_namespaces == ("a", "b")


def test_operator_refuses_to_start_with_a_bad_setting() -> None:
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "crucible.cli.main", "operator"],
        env={**os.environ, "CRUCIBLE_GPU_RESOURCE": "nvidia gpu"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "CRUCIBLE_GPU_RESOURCE='nvidia gpu': must be an extended resource name" in (
        result.stderr
    )


def test_readme_lists_every_setting_as_declared() -> None:
    from crucible.config import settings_table
    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    shown = readme.split("<!-- settings: generated from crucible.config.settings_table() -->\n")
    assert len(shown) == 2, "README's settings table lost its markers"
    assert shown[1].split("<!-- /settings -->")[0] == settings_table()
    assert all(field.description for field in OperatorConfig.model_fields.values())


def test_http_settings_are_checked_with_the_others() -> None:
    config = OperatorConfig.from_env({"CRUCIBLE_HTTP_PORT": "9090"})
    assert (config.http_address, config.http_port) == ("0.0.0.0", 9090)
    with pytest.raises(ConfigError, match="CRUCIBLE_HTTP_PORT='http'"):
        OperatorConfig.from_env({"CRUCIBLE_HTTP_PORT": "http"})


def test_kopf_and_the_engine_log_in_with_the_same_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://10.0.0.1:6443"}}],
        "users": [{"name": "u", "user": {"token": "the-token"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    (tmp_path / "config").write_text(json.dumps(kubeconfig))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "config"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    info = login(settings=kopf.OperatorSettings())
    engine = Kube.__new__(Kube)  # its headers only: no session
    engine.configuration = client_configuration()
    assert (info.server, info.scheme, info.token) == (
        "https://10.0.0.1:6443",
        "Bearer",
        "the-token",
    )
    assert engine.configuration.host == info.server
    assert engine._headers()["authorization"] == f"{info.scheme} {info.token}"
