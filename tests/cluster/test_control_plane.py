"""The control plane the other tests stand on: scheduling onto GPU nodes, pods that run and
complete or fail like real ones, and credentials of a ServiceAccount."""

from __future__ import annotations

import json

import pytest

from crucible.devcluster.cluster import LocalCluster
from tests.conftest import wait_for


def _job(name: str, image: str) -> dict:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "main",
                            "image": image,
                            "resources": {"limits": {"nvidia.com/gpu": 1}},
                        }
                    ],
                }
            },
        },
    }


def _pod_of(cluster: LocalCluster, namespace: str, job: str) -> dict | None:
    pods = json.loads(
        cluster.kubectl(
            "get", "pods", "-n", namespace, "-l", f"job-name={job}", "-o", "json"
        ).stdout
    )["items"]
    return pods[0] if pods else None


def test_server_version_and_gpu_nodes(cluster: LocalCluster) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"].startswith("v1.34.")
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    assert len(nodes) == 2
    assert all(n["status"]["allocatable"]["nvidia.com/gpu"] == "8" for n in nodes)


@pytest.mark.pod_security_baseline
def test_gpu_job_is_scheduled_and_completes(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl_apply([_job("ok", "busybox")], "-n", namespace)
    wait_for(
        lambda: (
            json.loads(cluster.kubectl("get", "job", "ok", "-n", namespace, "-o", "json").stdout)[
                "status"
            ].get("succeeded")
            == 1
        ),
        what="job to succeed",
    )
    pod = _pod_of(cluster, namespace, "ok")
    assert pod and pod["spec"]["nodeName"].startswith("kwok-gpu-")


@pytest.mark.pod_security_baseline
def test_failure_images_fail_like_real_workloads(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl_apply(
        [
            _job("oom", "kwok.crucible.test/fail:oomkilled"),
            _job("err", "kwok.crucible.test/fail:error"),
            _job("pull", "kwok.crucible.test/fail:imagepull"),
        ],
        "-n",
        namespace,
    )

    def terminated(job: str) -> dict | None:
        pod = _pod_of(cluster, namespace, job)
        statuses = (pod or {}).get("status", {}).get("containerStatuses") or [{}]
        return statuses[0].get("state", {}).get("terminated")

    oom = wait_for(lambda: terminated("oom"), what="OOMKilled pod")
    assert (oom["reason"], oom["exitCode"]) == ("OOMKilled", 137)
    err = wait_for(lambda: terminated("err"), what="failed pod")
    assert err["exitCode"] == 3 and "simulated failure" in err["message"]

    def waiting(job: str) -> dict | None:
        pod = _pod_of(cluster, namespace, job)
        statuses = (pod or {}).get("status", {}).get("containerStatuses") or [{}]
        return statuses[0].get("state", {}).get("waiting")

    assert wait_for(lambda: waiting("pull"), what="image pull error")["reason"] == "ErrImagePull"


@pytest.mark.pod_security_baseline
def test_deployment_becomes_available(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl("create", "deployment", "web", "--image=nginx", "-n", namespace)
    cluster.kubectl(
        "wait", "--for=condition=Available", "deployment/web", "-n", namespace, "--timeout=60s"
    )


def test_garbage_collection_follows_owner_references(cluster: LocalCluster, namespace: str) -> None:
    owner = json.loads(
        cluster.kubectl("create", "configmap", "owner", "-n", namespace, "-o", "json").stdout
    )
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "child",
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "name": "owner",
                    "uid": owner["metadata"]["uid"],
                }
            ],
        },
    }
    cluster.kubectl_apply([child], "-n", namespace)
    cluster.kubectl("delete", "configmap", "owner", "-n", namespace)
    wait_for(
        lambda: (
            cluster.kubectl("get", "configmap", "child", "-n", namespace, check=False).returncode
            != 0
        ),
        what="garbage collection",
    )


def test_service_account_kubeconfig_acts_as_that_account(
    cluster: LocalCluster, namespace: str
) -> None:
    cluster.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    config = cluster.service_account_kubeconfig(namespace, "reader")

    def can(verb: str, resource: str) -> bool:
        out = cluster.kubectl(
            "auth", "can-i", verb, resource, "-n", namespace, kubeconfig=config, check=False
        ).stdout.strip()
        return out == "yes"

    assert not can("list", "configmaps")
    cluster.kubectl(
        "create", "role", "read-cm", "--verb=list", "--resource=configmaps", "-n", namespace
    )
    cluster.kubectl(
        "create",
        "rolebinding",
        "read-cm",
        "--role=read-cm",
        f"--serviceaccount={namespace}:reader",
        "-n",
        namespace,
    )
    assert wait_for(lambda: can("list", "configmaps"), what="RBAC grant")
    assert not can("delete", "configmaps")
