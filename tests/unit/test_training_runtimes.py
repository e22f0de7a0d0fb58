"""FineTuneJob's other runtimes, for clusters that have them: the JobSet and the Kubeflow
Trainer TrainJob it renders, checked against the API types PyPI's kubeflow-trainer-api ships
(JobSet v1alpha2, Trainer v1alpha1 and the Kubernetes types they embed), and their conditions
read as a run's phase. Neither controller runs here (their Go modules are refused by the
module proxy): the control-plane tests take these objects as far as the API server."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubeflow_trainer_api.models import (
    IoK8sApiCoreV1PodSpec,
    JobsetV1alpha2JobSet,
    TrainerV1alpha1TrainJob,
)

from crucible.api.common import Phase, Reason
from crucible.api.kinds import FINE_TUNE_JOB
from crucible.config import OperatorConfig
from crucible.resources import finetunejob
from crucible.resources.jobs import job_outcome
from tests.unit.test_builders import by_kind, container_of, ft_spec, owner
from tests.unit.trainer_types import problems

CONFIG = OperatorConfig.from_env({})
SHAPE = {"resources": {"nodes": 2, "gpusPerNode": 8}, "distributed": {"maxRestarts": 5}}


def rendered(runtime: str, config: OperatorConfig = CONFIG) -> list[dict[str, Any]]:
    spec = ft_spec(runtime=runtime, **SHAPE)
    return finetunejob.build(owner(FINE_TUNE_JOB), spec, "hf://o/base", config)


def job_runtime_pod() -> dict[str, Any]:
    """The pod the default runtime (an Indexed Job) runs, for comparison."""
    (job,) = by_kind(rendered("Job"), "Job")
    pod: dict[str, Any] = job["spec"]["template"]
    return pod


def test_the_checker_finds_unknown_fields_wrong_types_and_missing_ones() -> None:
    wrong = {"containers": [{"name": "main", "resource": {}}], "tolerations": [{"key": 1}]}
    assert problems(wrong, IoK8sApiCoreV1PodSpec) == [
        ".containers[0].resource: not a field of IoK8sApiCoreV1Container",
        ".tolerations[0].key: Input should be a valid string",
    ]
    assert problems({"containers": [{}]}, IoK8sApiCoreV1PodSpec) == [
        ".containers[0].name: Field required"
    ]
    quantity = {"containers": [{"name": "main", "resources": {"limits": {"cpu": ["1"]}}}]}
    assert problems(quantity, IoK8sApiCoreV1PodSpec) == [
        ".containers[0].resources.limits.cpu: not one of ['float', 'str']"
    ]
    train_job = {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "spec": {}}
    assert problems(train_job, TrainerV1alpha1TrainJob) == [".spec.runtimeRef: Field required"]


def test_a_jobset_runs_the_same_pods_as_one_indexed_job_that_restarts_whole() -> None:
    children = rendered("JobSet")
    assert by_kind(children, "Job") == by_kind(children, "Service") == []  # JobSet's own
    (jobset,) = by_kind(children, "JobSet")
    assert children[-1] is jobset
    assert problems(jobset, JobsetV1alpha2JobSet) == []
    assert jobset["apiVersion"] == "jobset.x-k8s.io/v1alpha2"
    assert jobset["metadata"]["name"] == "run-train"
    assert jobset["metadata"]["ownerReferences"][0]["kind"] == "FineTuneJob"
    spec = jobset["spec"]
    assert spec["network"] == {"enableDNSHostnames": True, "publishNotReadyAddresses": True}
    assert spec["failurePolicy"] == {"maxRestarts": 5}
    assert spec["suspend"] is False
    (replicated,) = spec["replicatedJobs"]
    assert (replicated["name"], replicated["replicas"]) == ("node", 1)
    job = replicated["template"]
    assert job["spec"]["completionMode"] == "Indexed"
    assert (job["spec"]["completions"], job["spec"]["parallelism"]) == (2, 2)
    assert job["spec"]["backoffLimit"] == 0  # a failure restarts the group, not one pod
    # The ranks meet at JobSet's hostname of index 0, under the JobSet's headless Service.
    command = container_of(job)["command"]
    assert "--rdzv_endpoint=run-train-node-0-0.run-train:29400" in command
    expected = copy.deepcopy(job_runtime_pod())
    del expected["spec"]["subdomain"]  # JobSet sets it
    container_of({"spec": {"template": expected}})["command"] = command
    assert job["spec"]["template"] == expected


def test_a_jobset_and_a_train_job_wait_in_the_kueue_queue_whole() -> None:
    config = OperatorConfig.from_env({"CRUCIBLE_KUEUE_QUEUE": "gpu-queue"})
    jobset, train_job = rendered("JobSet", config)[-1], rendered("KubeflowTrainer", config)[-1]
    for whole in (jobset, train_job):
        assert whole["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
        assert whole["spec"]["suspend"] is True
    template = jobset["spec"]["replicatedJobs"][0]["template"]
    assert "kueue.x-k8s.io/queue-name" not in template["metadata"]["labels"]


def test_a_train_job_runs_the_trainer_on_the_configured_runtime_with_crucibles_pod() -> None:
    config = OperatorConfig.from_env({"CRUCIBLE_TRAINER_RUNTIME": "torch-fsdp"})
    children = rendered("KubeflowTrainer", config)
    assert by_kind(children, "Job") == by_kind(children, "Service") == []
    (train_job,) = by_kind(children, "TrainJob")
    assert problems(train_job, TrainerV1alpha1TrainJob) == []
    spec = train_job["spec"]
    assert spec["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": "torch-fsdp",
    }
    pod = job_runtime_pod()
    (container,) = pod["spec"]["containers"]
    trainer = spec["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 8)
    assert trainer["image"] == container["image"]
    assert trainer["resourcesPerNode"] == container["resources"]
    # torchrun takes its shape and rendezvous from the PET_* variables Trainer's torch
    # plugin sets: none on the command line.
    task_path = container["command"][-1]
    assert trainer["command"] == [
        "torchrun",
        "-m",
        "crucible.workloads.finetune",
        "--task",
        task_path,
    ]
    assert trainer["env"] == container["env"]
    (patch,) = spec["runtimePatches"]
    assert patch["manager"] == "crucible.dev/operator"
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert replicated["name"] == "node"
    patched = replicated["template"]["spec"]["template"]
    assert patched["metadata"] == pod["metadata"]  # its labels: the operator sees the pods
    # No token for the API server: an empty folder where the admission would mount it.
    assert "serviceAccountName" not in patched["spec"]
    assert patched["spec"]["volumes"] == [
        *pod["spec"]["volumes"],
        {"name": "no-api-token", "emptyDir": {}},
    ]
    assert patched["spec"]["securityContext"] == pod["spec"]["securityContext"]
    (node,) = patched["spec"]["containers"]
    assert node == {
        "name": "node",
        "volumeMounts": [
            *container["volumeMounts"],
            {
                "name": "no-api-token",
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                "readOnly": True,
            },
        ],
        "securityContext": container["securityContext"],
    }


def test_a_train_job_without_gpus_asks_for_no_resources() -> None:
    spec = ft_spec(runtime="KubeflowTrainer", resources={"nodes": 2, "gpus": 0})
    train_job = finetunejob.build(owner(FINE_TUNE_JOB), spec, "hf://o/base", CONFIG)[-1]
    assert "resourcesPerNode" not in train_job["spec"]["trainer"]
    assert train_job["spec"]["trainer"]["numProcPerNode"] == 1
    assert problems(train_job, TrainerV1alpha1TrainJob) == []


def conditioned(kind: str, *conditions: dict[str, str]) -> dict[str, Any]:
    return {
        "kind": kind,
        "metadata": {"name": "run-train"},
        "spec": {"suspend": False},
        "status": {"conditions": list(conditions)},
    }


@pytest.mark.parametrize(
    ("kind", "complete"),
    [(finetunejob.JOBSET, "Completed"), (finetunejob.TRAIN_JOB, "Complete")],
)
def test_their_conditions_are_the_runs_phase(kind: Any, complete: str) -> None:
    name = kind.kind
    running = job_outcome(conditioned(name), [], kind=kind)
    assert (running.phase, running.message) == (Phase.RUNNING, f"{name} run-train is running")
    done = job_outcome(conditioned(name, {"type": complete, "status": "True"}), [], kind=kind)
    assert (done.phase, done.reason) == (Phase.SUCCEEDED, Reason.SUCCEEDED)
    # Another kind's success condition is not this one's.
    other = "Complete" if complete == "Completed" else "Completed"
    assert job_outcome(
        conditioned(name, {"type": other, "status": "True"}), [], kind=kind
    ).phase == (Phase.RUNNING)
    failed = conditioned(
        name, {"type": "Failed", "status": "True", "reason": "FailedJobs", "message": "node-0"}
    )
    outcome = job_outcome(failed, [], kind=kind)
    assert (outcome.phase, outcome.reason) == (Phase.FAILED, Reason.JOB_FAILED)
    assert outcome.message == f"{name} run-train failed (FailedJobs: node-0)"
    queued = conditioned(name)
    queued["spec"]["suspend"] = True
    assert job_outcome(queued, [], kind=kind).message == f"the {name} waits in its Kueue queue"
