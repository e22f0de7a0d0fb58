"""The reconcile chain on the real control plane: ModelMerge → FineTuneJob(modelRef) →
RagIndex → EvalRun, with lineage, failures that say why, and restarts that duplicate nothing."""

from __future__ import annotations

import base64
import json
import time
import zlib
from typing import Any

import pytest
from prometheus_client import REGISTRY, generate_latest

from crucible.api.contract import PACKED_REPORT_PREFIX
from crucible.devcluster.cluster import LocalCluster
from tests.cluster.conftest import (
    HOLD_IMAGE,
    OperatorFactory,
    finish_pod,
    ready_condition,
    running_pod,
    status_of,
    wait_phase,
)
from tests.conftest import wait_for
from tests.manifests import API, eval_run, finetune, inputs, merge, rag_index, result, task_of


def objects(
    cluster: LocalCluster, namespace: str, kind: str, owner: str | None = None
) -> list[dict[str, Any]]:
    selector = ["-l", f"crucible.dev/name={owner}"] if owner else []
    items: list[dict[str, Any]] = json.loads(
        cluster.kubectl("get", kind, "-n", namespace, *selector, "-o", "json").stdout
    )["items"]
    return items


def conflicts() -> float:
    """Creates the operator sent that the API server answered 409 (it exists)."""
    return (
        REGISTRY.get_sample_value("crucible_kube_requests_total", {"verb": "POST", "code": "409"})
        or 0.0
    )


@pytest.mark.pod_security_baseline
def test_the_chain_reaches_succeeded_with_lineage(  # noqa: PLR0915 (one story, told whole)
    cluster: LocalCluster, namespace: str, model_store: str, operator: OperatorFactory
) -> None:
    apply = lambda docs: cluster.kubectl_apply(docs, "-n", namespace)  # noqa: E731
    apply(inputs())
    conflicts_before = conflicts()
    with operator(CRUCIBLE_RAG_IMAGE=HOLD_IMAGE, CRUCIBLE_EVAL_IMAGE=HOLD_IMAGE):
        # Applied in the "wrong" order: each waits for what it references.
        apply([eval_run(), finetune()])
        tuned = wait_phase(cluster, namespace, "ftj", "tuned", "Waiting")
        assert ready_condition(tuned)["reason"] == "DependencyNotFound"
        assert "ModelMerge 'merged' does not exist" in ready_condition(tuned)["message"]
        apply([merge(), rag_index()])

        merged = wait_phase(cluster, namespace, "mm", "merged", "Succeeded")
        assert merged["outputUri"] == f"pvc://crucible-models/{namespace}/modelmerges/merged/"
        assert merged["jobName"] == "merged-merge" and merged["startTime"]
        assert merged["observedGeneration"] == 1
        # Its task, with the mergekit configuration, rode in the Job: no ConfigMap of its own.
        (job,) = objects(cluster, namespace, "job", "merged")
        assert task_of(job)["mergekit"]["merge_method"] == "slerp"
        assert objects(cluster, namespace, "configmap", "merged") == []

        tuned = wait_phase(cluster, namespace, "ftj", "tuned", "Succeeded")
        assert tuned["baseModelUri"] == merged["outputUri"]
        assert tuned["adapterUri"].endswith("/finetunejobs/tuned/adapter/")
        assert tuned["outputUri"] == tuned["adapterUri"]
        (train_job,) = objects(cluster, namespace, "job", "tuned")
        assert train_job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {
            "nvidia.com/gpu": "1"
        }

        # The rag workload (held) reports its counts, then its pod exits.
        pod = running_pod(cluster, namespace, "docs-rag")
        counts = {"documents": 1, "chunks": 3, "contentHash": "sha256:abc"}
        finish_pod(cluster, namespace, pod, report=counts)
        docs = wait_phase(cluster, namespace, "ri", "docs", "Succeeded")
        assert (docs["documents"], docs["chunks"], docs["table"]) == (1, 3, "docs")
        assert docs["contentHash"] == "sha256:abc" and docs["lastIndexedTime"]

        # The EvalRun serves merged with vLLM, tuned as an adapter on the same server, then
        # runs its Job against them.
        pod = running_pod(cluster, namespace, "bench-eval")
        deployments = {
            d["metadata"]["name"]: d for d in objects(cluster, namespace, "deployment", "bench")
        }
        assert set(deployments) == {"bench-vllm-merged"}
        args = deployments["bench-vllm-merged"]["spec"]["template"]["spec"]["containers"][0]["args"]
        base_path = f"/models/{namespace}/modelmerges/merged"
        assert args[:2] == ["--model", base_path]
        assert args[args.index("--served-model-name") + 1] == "merged"
        assert f"tuned=/models/{namespace}/finetunejobs/tuned/adapter" in args
        assert {
            s["metadata"]["name"] for s in objects(cluster, namespace, "service", "bench")
        } == set(deployments)
        running = status_of(cluster, namespace, "er", "bench")
        assert running["phase"] == "Running"
        assert running["servers"] == ["bench-vllm-merged"]

        finish_pod(
            cluster,
            namespace,
            pod,
            report={
                "results": [
                    result("merged", True, [0.46, 0.48, 0.49]),
                    result("tuned", True, [0.56, 0.58, 0.59]),
                    result("gpt", True, [0.55, 0.57, 0.58]),
                ],
                "resultsUri": f"pvc://crucible-models/{namespace}/evalruns/bench/",
            },
        )
        bench = wait_phase(cluster, namespace, "er", "bench", "Succeeded")
        assert bench["bestModel"] == "tuned (RAG)"
        assert bench["bestAccuracy"] == round((0.56 + 0.58 + 0.59) / 3, 4)
        assert [r["model"] for r in bench["results"]] == ["merged", "tuned", "gpt"]
        assert bench["results"][1]["rounds"] == [0.56, 0.58, 0.59]
        assert ready_condition(bench)["status"] == "True"
        # The same figures on /metrics.
        metrics = generate_latest(REGISTRY).decode()
        assert (
            f'crucible_eval_accuracy{{dataset="configmap/mcq/mcq.csv",evalrun="bench",'
            f'model="tuned",namespace="{namespace}",rag="true",scoring="Generation"}} '
            f"{(0.56 + 0.58 + 0.59) / 3}"
        ) in metrics
        assert 'crucible_job_duration_seconds_count{kind="EvalRun",phase="Succeeded"}' in metrics
        # Children are created once, then only read: no create was answered "exists".
        assert conflicts() == conflicts_before
        # The servers were the run's alone: gone once it is done.
        wait_for(
            lambda: not objects(cluster, namespace, "deployment", "bench"),
            what="the vLLM Deployments to be removed",
        )
        assert not objects(cluster, namespace, "service", "bench")
        # Deleting the EvalRun takes its series off /metrics.
        cluster.kubectl("delete", "er", "bench", "-n", namespace)
        wait_for(
            lambda: (
                f'evalrun="bench",model="tuned",namespace="{namespace}"'
                not in generate_latest(REGISTRY).decode()
            ),
            what="the deleted EvalRun's series to go",
        )


def test_failed_jobs_say_why(
    cluster: LocalCluster, namespace: str, model_store: str, operator: OperatorFactory
) -> None:
    cluster.kubectl_apply(inputs(), "-n", namespace)
    failing = {
        "oom": "kwok.crucible.test/fail:oomkilled",
        "crash": "kwok.crucible.test/fail:error",
        "nopull": "kwok.crucible.test/fail:imagepull",
    }
    with operator():
        cluster.kubectl_apply(
            [merge(name, resources={"gpus": 1, "image": image}) for name, image in failing.items()],
            "-n",
            namespace,
        )
        oom = ready_condition(wait_phase(cluster, namespace, "mm", "oom", "Failed"))
        assert oom["reason"] == "OOMKilled" and "spec.resources.memory" in oom["message"]
        crash = ready_condition(wait_phase(cluster, namespace, "mm", "crash", "Failed"))
        assert crash["reason"] == "Error"
        assert crash["message"] == (
            "container merge exited with code 3: simulated failure: the "
            "workload exited with status 3"
        )
        nopull = wait_phase(cluster, namespace, "mm", "nopull", "Failed")
        assert ready_condition(nopull)["reason"] == "ImagePullFailed"
        assert "kwok.crucible.test/fail:imagepull" in ready_condition(nopull)["message"]
        assert nopull["completionTime"]
        # A Job that can never pull its image would hold a GPU: it is removed.
        wait_for(
            lambda: not objects(cluster, namespace, "job", "nopull"),
            what="the unpullable Job to be deleted",
        )


def test_lineage_failures_are_explicit(
    cluster: LocalCluster, namespace: str, model_store: str, operator: OperatorFactory
) -> None:
    cluster.kubectl_apply(inputs(), "-n", namespace)
    with operator():
        cluster.kubectl_apply(
            [
                merge("broken", resources={"image": "kwok.crucible.test/fail:error"}),
                finetune("on-broken", base="broken"),
                merge("ok"),
                # a dataset ConfigMap without the key the spec names
                finetune(
                    "no-key", base="ok", dataset={"configMap": {"name": "qa", "key": "x.csv"}}
                ),
                # an adapter is not full weights: it cannot be merged
                finetune("adapter", base="ok"),
                merge(
                    "of-adapter",
                    models=[
                        {"modelRef": {"kind": "FineTuneJob", "name": "adapter"}},
                        {"uri": "hf://o/b"},
                    ],
                ),
            ],
            "-n",
            namespace,
        )
        failed = ready_condition(wait_phase(cluster, namespace, "ftj", "on-broken", "Failed"))
        assert failed["reason"] == "DependencyFailed"
        assert failed["message"].startswith(
            "spec.baseModel.modelRef: ModelMerge 'broken' failed: container merge exited"
        )
        of_adapter = ready_condition(wait_phase(cluster, namespace, "mm", "of-adapter", "Failed"))
        assert of_adapter["reason"] == "InvalidReference"
        assert (
            "spec.models[0].modelRef: FineTuneJob 'adapter' produces a LoRA adapter"
            in (of_adapter["message"])
        )
        assert not objects(cluster, namespace, "job", "of-adapter")
        # A missing key is an input that is not there yet: the run waits, names the field and
        # the fix, and starts by itself once the key is added.
        no_key = ready_condition(wait_phase(cluster, namespace, "ftj", "no-key", "Waiting"))
        assert no_key["reason"] == "InputNotFound"
        assert no_key["message"] == (
            "spec.dataset.configMap.key: ConfigMap 'qa' has no key 'x.csv' (it has: qa.csv); "
            "add the key or correct spec.dataset.configMap.key"
        )
        assert not objects(cluster, namespace, "job", "no-key")
        cluster.kubectl(
            "patch",
            "configmap",
            "qa",
            "-n",
            namespace,
            "--type=merge",
            "-p",
            json.dumps({"data": {"x.csv": "question,answer\nQ,A\n"}}),
        )
        wait_phase(cluster, namespace, "ftj", "no-key", "Succeeded")


@pytest.mark.pod_security_baseline
def test_restarts_never_duplicate_children_nor_lose_results(
    cluster: LocalCluster, namespace: str, model_store: str, operator: OperatorFactory
) -> None:
    cluster.kubectl_apply(inputs(), "-n", namespace)
    held = {"CRUCIBLE_MERGE_IMAGE": HOLD_IMAGE, "CRUCIBLE_EVAL_IMAGE": HOLD_IMAGE}
    with operator(**held):
        cluster.kubectl_apply([merge()], "-n", namespace)
        wait_phase(cluster, namespace, "mm", "merged", "Running")
    (job,) = objects(cluster, namespace, "job", "merged")
    # The operator died after creating the Job but before writing status.
    cluster.kubectl(
        "patch",
        "mm",
        "merged",
        "-n",
        namespace,
        "--subresource=status",
        "--type=json",
        "-p",
        json.dumps(
            [
                {"op": "remove", "path": "/status/jobName"},
                {"op": "replace", "path": "/status/phase", "value": "Pending"},
            ]
        ),
    )
    with operator(**held):
        restored = wait_phase(cluster, namespace, "mm", "merged", "Running")
        assert restored["jobName"] == "merged-merge"
        (again,) = objects(cluster, namespace, "job", "merged")
        assert again["metadata"]["uid"] == job["metadata"]["uid"]
        finish_pod(cluster, namespace, running_pod(cluster, namespace, "merged-merge"))
        wait_phase(cluster, namespace, "mm", "merged", "Succeeded")
        cluster.kubectl_apply(
            [
                {
                    **eval_run(),
                    "spec": {
                        **eval_run()["spec"],
                        "rag": None,
                        "models": eval_run()["spec"]["models"][:1],
                    },
                }
            ],
            "-n",
            namespace,
        )
        running_pod(cluster, namespace, "bench-eval")
    # Killed while the eval runs: after the restart, one server, one Job, the same ones.
    servers = objects(cluster, namespace, "deployment", "bench")
    with operator(**held):
        pod = running_pod(cluster, namespace, "bench-eval")
        assert [
            d["metadata"]["uid"] for d in objects(cluster, namespace, "deployment", "bench")
        ] == [d["metadata"]["uid"] for d in servers]
        assert len(objects(cluster, namespace, "job", "bench")) == 1
        finish_pod(
            cluster, namespace, pod, report={"results": [result("merged", False, [0.5, 0.5, 0.5])]}
        )
        done = wait_phase(cluster, namespace, "er", "bench", "Succeeded")
    # Results survive another restart untouched.
    with operator(**held):
        time.sleep(2)  # several reconcile intervals of the restarted operator
        assert status_of(cluster, namespace, "er", "bench") == done
        assert status_of(cluster, namespace, "mm", "merged")["phase"] == "Succeeded"


def test_deleting_a_resource_removes_its_children(
    cluster: LocalCluster, namespace: str, model_store: str, operator: OperatorFactory
) -> None:
    cluster.kubectl_apply(inputs(), "-n", namespace)
    with operator(CRUCIBLE_TRAIN_IMAGE=HOLD_IMAGE):
        cluster.kubectl_apply([finetune(baseModel={"uri": "hf://org/base"})], "-n", namespace)
        wait_phase(cluster, namespace, "ftj", "tuned", "Running")
        kinds = ("job", "pod")
        assert all(objects(cluster, namespace, kind, "tuned") for kind in kinds)
        assert not objects(cluster, namespace, "configmap", "tuned")  # its task rides in its pod
        cluster.kubectl("delete", "ftj", "tuned", "-n", namespace)
        wait_for(
            lambda: not any(objects(cluster, namespace, kind, "tuned") for kind in kinds),
            what="garbage collection of the children",
        )


def test_a_training_on_several_nodes_runs_one_indexed_pod_per_node(
    cluster: LocalCluster, namespace: str, model_store: str, operator: OperatorFactory
) -> None:
    """The API server takes the Indexed Job and its headless Service as rendered, the Job
    controller makes one pod per index under the Service's subdomain, and the run succeeds
    when every index has."""
    cluster.kubectl_apply(inputs(), "-n", namespace)
    with operator():
        cluster.kubectl_apply(
            [finetune(baseModel={"uri": "hf://org/base"}, resources={"nodes": 2, "gpus": 0})],
            "-n",
            namespace,
        )
        done = wait_phase(cluster, namespace, "ftj", "tuned", "Succeeded")
        assert done["jobName"] == "tuned-train"
    (service,) = objects(cluster, namespace, "service", "tuned")
    assert (service["metadata"]["name"], service["spec"]["clusterIP"]) == ("tuned-train", "None")
    (job,) = objects(cluster, namespace, "job", "tuned")
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 2
    assert job["status"]["succeeded"] == 2
    pods = objects(cluster, namespace, "pod", "tuned")
    assert sorted(p["spec"]["hostname"] for p in pods) == ["tuned-train-0", "tuned-train-1"]
    assert {p["spec"]["subdomain"] for p in pods} == {"tuned-train"}


# JobSet's CRD as far as the API server needs it to store JobSets: JobSet's own (with its
# schema) comes with its release, which this machine cannot fetch, and no JobSet controller
# runs here, so the test sets the condition JobSet's controller would.
JOBSET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "jobsets.jobset.x-k8s.io"},
    "spec": {
        "group": "jobset.x-k8s.io",
        "scope": "Namespaced",
        "names": {"plural": "jobsets", "singular": "jobset", "kind": "JobSet"},
        "versions": [
            {
                "name": "v1alpha2",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


def test_a_training_on_jobset_waits_for_its_crd_then_follows_the_jobset(
    cluster: LocalCluster, namespace: str, model_store: str, operator: OperatorFactory
) -> None:
    """No JobSet CRD: the run waits saying so. Once installed, the recheck creates the JobSet
    (owned by the run), and the JobSet's Completed condition makes the run succeed."""
    cluster.kubectl_apply(inputs(), "-n", namespace)
    shape = {"nodes": 2, "gpus": 0}
    try:
        with operator():
            cluster.kubectl_apply(
                [finetune(baseModel={"uri": "hf://org/base"}, resources=shape, runtime="JobSet")],
                "-n",
                namespace,
            )
            waiting = ready_condition(wait_phase(cluster, namespace, "ftj", "tuned", "Waiting"))
            assert waiting["reason"] == "RuntimeNotInstalled"
            assert "jobset.x-k8s.io/v1alpha2" in waiting["message"]
            cluster.kubectl_apply([JOBSET_CRD])
            cluster.kubectl("wait", "--for=condition=Established", "crd/jobsets.jobset.x-k8s.io")
            (jobset,) = wait_for(
                lambda: objects(cluster, namespace, "jobsets.jobset.x-k8s.io", "tuned"),
                timeout=90,  # the recheck comes every 30 s
                what="the JobSet",
            )
            run = json.loads(
                cluster.kubectl("get", "ftj", "tuned", "-n", namespace, "-o", "json").stdout
            )
            (owner,) = jobset["metadata"]["ownerReferences"]
            assert (owner["kind"], owner["uid"]) == ("FineTuneJob", run["metadata"]["uid"])
            (replicated,) = jobset["spec"]["replicatedJobs"]
            assert replicated["template"]["spec"]["completions"] == 2
            assert objects(cluster, namespace, "job", "tuned") == []
            wait_phase(cluster, namespace, "ftj", "tuned", "Running")
            completed = {
                "type": "Completed",
                "status": "True",
                "reason": "AllJobsCompleted",
                "message": "jobset completed successfully",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
            cluster.kubectl(
                "patch",
                "jobset",
                "tuned-train",
                "-n",
                namespace,
                "--subresource=status",
                "--type=merge",
                "-p",
                json.dumps({"status": {"conditions": [completed]}}),
            )
            done = wait_phase(cluster, namespace, "ftj", "tuned", "Succeeded", timeout=90)
            assert done["jobName"] == "tuned-train"
            assert ready_condition(done)["message"] == "JobSet tuned-train completed"
    finally:
        cluster.kubectl("delete", "crd", "jobsets.jobset.x-k8s.io", "--ignore-not-found")


def test_kueue_queue_holds_jobs_suspended(
    cluster: LocalCluster, namespace: str, model_store: str, operator: OperatorFactory
) -> None:
    with operator(CRUCIBLE_KUEUE_QUEUE="gpu-queue"):
        cluster.kubectl_apply([merge()], "-n", namespace)
        queued = wait_phase(cluster, namespace, "mm", "merged", "Pending")
        wait_for(
            lambda: (
                ready_condition(status_of(cluster, namespace, "mm", "merged"))["reason"] == "Queued"
            ),
            what="the Queued reason",
        )
        (job,) = objects(cluster, namespace, "job", "merged")
        assert job["spec"]["suspend"] is True
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
        assert queued["jobName"] == "merged-merge"


def test_malformed_report_fails_the_run_clearly(
    cluster: LocalCluster, namespace: str, model_store: str, operator: OperatorFactory
) -> None:
    cluster.kubectl_apply(inputs(), "-n", namespace)
    with operator(CRUCIBLE_RAG_IMAGE=HOLD_IMAGE):
        cluster.kubectl_apply([rag_index()], "-n", namespace)
        pod = running_pod(cluster, namespace, "docs-rag")
        malformed = zlib.compress(json.dumps({"chunks": -3}).encode())
        message = PACKED_REPORT_PREFIX + base64.b64encode(malformed).decode()
        finish_pod(cluster, namespace, pod, message=message)
        failed = ready_condition(wait_phase(cluster, namespace, "ri", "docs", "Failed"))
        assert failed["reason"] == "InvalidReport"
        assert "(its pod's termination message) is malformed" in failed["message"]
        assert "report.chunks" in failed["message"]


def test_without_the_report_endpoint_a_workload_holds_no_credential_and_reports_at_its_end(
    cluster: LocalCluster, namespace: str, model_store: str, operator: OperatorFactory
) -> None:
    """An operator that serves no report endpoint gives a fine-tune's pod no token of any
    audience and makes no identity for it: its progress reaches the status at its end, from
    its termination message."""
    cluster.kubectl_apply(inputs(), "-n", namespace)
    with operator(CRUCIBLE_TRAIN_IMAGE=HOLD_IMAGE):
        cluster.kubectl_apply([finetune(baseModel={"uri": "hf://org/base"})], "-n", namespace)
        pod = running_pod(cluster, namespace, "tuned-train")
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert pod["spec"]["serviceAccountName"] == "default"
        assert not [v for v in pod["spec"]["volumes"] if "projected" in v or "secret" in v]
        assert not [
            m
            for m in pod["spec"]["containers"][0]["volumeMounts"]
            if m["mountPath"].startswith("/var/run/secrets")
        ]
        made = cluster.kubectl(
            "get", "configmaps,serviceaccounts,roles,rolebindings", "-n", namespace,
            "-l", "app.kubernetes.io/managed-by=crucible", "-o", "name",
        ).stdout  # fmt: skip
        assert not made.strip(), made
        progress = {"step": 2, "totalSteps": 2, "loss": 0.5}
        finish_pod(cluster, namespace, pod, report={"progress": progress})
        done = wait_phase(cluster, namespace, "ftj", "tuned", "Succeeded")
        assert done["progress"] == progress


def test_a_server_pod_security_refuses_is_explained_in_the_status(
    cluster: LocalCluster, namespace: str, model_store: str, operator: OperatorFactory
) -> None:
    """This namespace enforces the restricted Pod Security level, which vLLM's upstream image
    (run as root) does not meet: the run says so, with admission's own message, while it
    waits for its server."""
    cluster.kubectl_apply(inputs(), "-n", namespace)
    served = {
        "apiVersion": API,
        "kind": "EvalRun",
        "metadata": {"name": "served"},
        "spec": {
            "models": [{"name": "base", "uri": "hf://org/base"}],
            "dataset": {"configMap": {"name": "mcq", "key": "mcq.csv"}},
            "serving": {"resources": {"gpus": 0}},
        },
    }
    with operator():
        cluster.kubectl_apply([served], "-n", namespace)
        message = wait_for(
            lambda: "cannot be created" in (m := ready_message(cluster, namespace)) and m,
            what="the refused server to be explained",
        )
    assert status_of(cluster, namespace, "er", "served")["phase"] == "Running"
    assert "served-vllm-base (its pods cannot be created:" in message
    assert 'violates PodSecurity "restricted:latest": runAsNonRoot != true' in message


def ready_message(cluster: LocalCluster, namespace: str) -> str:
    status = status_of(cluster, namespace, "er", "served")
    return ready_condition(status)["message"] if status.get("conditions") else ""
