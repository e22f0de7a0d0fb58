"""Builders: spec → manifests, pure functions checked field by field."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from crucible.api.common import Resources
from crucible.api.contract import MergeTask
from crucible.api.evalrun import EvalRunSpec
from crucible.api.finetunejob import FineTuneJobSpec
from crucible.api.formats import DNS_1035_LABEL
from crucible.api.kinds import (
    EVAL_RUN,
    EXPERIMENT,
    FINE_TUNE_JOB,
    MODEL_MERGE,
    MODEL_SERVING,
    RAG_INDEX,
    SYNTHETIC_DATASET,
)
from crucible.api.modelmerge import ModelMergeSpec
from crucible.api.ragindex import RagIndexSpec
from crucible.api.syntheticdataset import DEFAULT_PROMPT, SyntheticDatasetSpec
from crucible.config import OperatorConfig
from crucible.resources import (
    evalrun,
    experiment,
    finetunejob,
    modelmerge,
    modelserving,
    ragindex,
    serving,
    syntheticdataset,
)
from crucible.resources.common import (
    TASK_ANNOTATION_BYTES,
    Owner,
    Workload,
    child_name,
    report_audience,
    task_fields,
    workload_children,
)
from tests.manifests import task_of

CONFIG = OperatorConfig.from_env({})


def owner(kind: Any, name: str = "run") -> Owner:
    return Owner(kind, name, "team", "uid-1")


def by_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == kind]


def container_of(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def test_child_names_are_deterministic_and_short() -> None:
    assert child_name("merge-a", "merge") == "merge-a-merge"
    long = "x" * 80
    assert child_name(long, "vllm-model") == child_name(long, "vllm-model")
    assert len(child_name(long, "vllm-model")) <= 63
    assert child_name(long, "a") != child_name(long + "y", "a")


def merge_spec(**extra: Any) -> ModelMergeSpec:
    return ModelMergeSpec.model_validate(
        {"method": "linear", "models": [{"uri": "hf://o/a"}, {"uri": "hf://o/b"}], **extra}
    )


def test_slerp_config_takes_the_first_model_as_base() -> None:
    spec = merge_spec(method="slerp", parameters={"t": 0.3})
    config = modelmerge.mergekit_config(spec, modelmerge.MergeInputs(["A", "B"], None))
    assert config == {
        "merge_method": "slerp",
        "base_model": "A",
        "models": [{"model": "A"}, {"model": "B"}],
        "parameters": {"t": 0.3},
        "dtype": "bfloat16",
        "tokenizer_source": "base",
    }


def test_ties_config_carries_weights_densities_and_base() -> None:
    spec = ModelMergeSpec.model_validate(
        {
            "method": "ties",
            "baseModel": {"uri": "hf://o/base"},
            "models": [{"uri": "hf://o/a", "weight": 0.7, "density": 0.5}, {"uri": "hf://o/b"}],
            "parameters": {"normalize": True, "int8Mask": True},
        }
    )
    config = modelmerge.mergekit_config(spec, modelmerge.MergeInputs(["A", "B"], "BASE"))
    assert config["base_model"] == "BASE"
    assert config["models"] == [
        {"model": "A", "parameters": {"weight": 0.7, "density": 0.5}},
        {"model": "B", "parameters": {"weight": 1.0}},
    ]
    assert config["parameters"] == {"normalize": True, "int8_mask": True}


def test_merge_children_in_creation_order_with_ownership() -> None:
    spec = merge_spec(resources={"gpus": 2, "memory": "64Gi"})
    inputs = modelmerge.MergeInputs(["pvc://crucible-models/team/modelmerges/a/", "hf://o/b"], None)
    children = modelmerge.build(owner(MODEL_MERGE), spec, inputs, CONFIG)
    # The task rides in the Job's pods: one child only.
    assert [c["kind"] for c in children] == ["Job"]
    for child in children:
        meta = child["metadata"]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "crucible"
        assert meta["labels"]["crucible.dev/kind"] == "ModelMerge"
        assert meta["labels"]["crucible.dev/name"] == "run"
        (ref,) = meta["ownerReferences"]
        assert (ref["kind"], ref["uid"], ref["controller"]) == ("ModelMerge", "uid-1", True)
    (job,) = children
    task = task_of(job)
    assert task["mergekit"]["models"][0]["model"] == "pvc://crucible-models/team/modelmerges/a/"
    assert task["outputPath"] == "/models/team/modelmerges/run"
    assert task["outputUri"] == "pvc://crucible-models/team/modelmerges/run/"
    assert task["mounts"] == {"crucible-models": "/models"}
    assert job["metadata"]["name"] == "run-merge" and job["spec"]["suspend"] is False
    container = container_of(job)
    assert container["image"] == CONFIG.merge_image
    assert container["resources"]["limits"] == {"memory": "64Gi", "nvidia.com/gpu": "2"}
    assert container["securityContext"]["runAsNonRoot"] is True
    # It reports through its termination message: no credential for the API server.
    pod = job["spec"]["template"]["spec"]
    assert "serviceAccountName" not in pod and pod["automountServiceAccountToken"] is False
    assert {"name": "model-store", "persistentVolumeClaim": {"claimName": "crucible-models"}} in (
        pod["volumes"]
    )


def test_a_task_too_large_for_an_annotation_takes_a_config_map() -> None:
    run = owner(MODEL_MERGE)
    workload = Workload(run, "merge", CONFIG, Resources(), "img", ["merge"], ["crucible-models"])
    fields = task_fields(run, CONFIG, ["crucible-models"])
    small = MergeTask(**fields, mergekit={"merge_method": "linear"})
    (job,) = workload_children(workload, small)
    (volume,) = [v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "task"]
    (item,) = volume["downwardAPI"]["items"]
    assert item == {
        "path": "task.json",
        "fieldRef": {"fieldPath": "metadata.annotations['crucible.dev/task']"},
    }
    large = MergeTask(**fields, mergekit={"notes": "x" * TASK_ANNOTATION_BYTES})
    config_map, job = workload_children(workload, large)
    assert config_map["kind"] == "ConfigMap" and config_map["metadata"]["name"] == "run-merge"
    assert json.loads(config_map["data"]["task.json"])["mergekit"] == large.mergekit
    assert "annotations" not in job["spec"]["template"]["metadata"]
    (volume,) = [v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "task"]
    assert volume["configMap"] == {"name": "run-merge"}


@pytest.mark.parametrize("builder", ["train", "eval", "synth"])
def test_without_the_report_endpoint_a_workload_holds_no_token_at_all(builder: str) -> None:
    """Without the endpoint, a run that would report while it runs reports at its end alone:
    no report ConfigMap, no identity of its own, no token of any audience."""
    children = children_of(builder)
    assert {c["kind"] for c in children} <= {"Job", "Deployment", "Service"}
    (job,) = by_kind(children, "Job")
    assert "reportUrl" not in task_of(job)
    pod = job["spec"]["template"]["spec"]
    assert "serviceAccountName" not in pod and pod["automountServiceAccountToken"] is False
    assert not [v for v in pod["volumes"] if "projected" in v]


REPORTING = OperatorConfig.from_env(
    {"CRUCIBLE_REPORT_URL": "https://reports.crucible:8443/", "CRUCIBLE_REPORT_CA": "PEM"}
)


@pytest.mark.parametrize(
    ("builder", "kind"),
    [("train", FINE_TUNE_JOB), ("eval", EVAL_RUN), ("synth", SYNTHETIC_DATASET)],
)
def test_a_workload_pushing_its_reports_holds_a_token_for_the_endpoint_alone(
    builder: str, kind: Any
) -> None:
    """With the report endpoint configured, a run that reports while it runs makes no report
    ConfigMap, ServiceAccount or RBAC, and its pod holds no token for the API server."""
    children = children_of(builder, config=REPORTING)
    assert {c["kind"] for c in children} <= {"Job", "Deployment", "Service"}
    (job,) = by_kind(children, "Job")
    run = owner(kind)
    task = task_of(job)
    assert task["reportUrl"] == f"https://reports.crucible:8443/reports/v1/team/{kind.plural}/run"
    assert task["reportCa"] == "PEM"
    pod = job["spec"]["template"]["spec"]
    assert "serviceAccountName" not in pod and pod["automountServiceAccountToken"] is False
    (token,) = [v for v in pod["volumes"] if "projected" in v]
    (source,) = token["projected"]["sources"]
    assert source["serviceAccountToken"] == {
        "audience": report_audience(run),
        "expirationSeconds": 3600,
        "path": "token",
    }
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == token["name"]]
    assert mount == {
        "name": token["name"],
        "mountPath": "/var/run/secrets/crucible.dev/report",
        "readOnly": True,
    }


def test_kueue_queue_suspends_jobs_and_labels_them() -> None:
    config = OperatorConfig.from_env({"CRUCIBLE_KUEUE_QUEUE": "gpu-queue"})
    children = modelmerge.build(
        owner(MODEL_MERGE), merge_spec(), modelmerge.MergeInputs(["A", "B"], None), config
    )
    job = by_kind(children, "Job")[0]
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"


def test_gpu_resource_name_and_scheduling_come_from_the_spec() -> None:
    spec = merge_spec(
        resources={
            "gpus": 1,
            "gpuResourceName": "amd.com/gpu",
            "nodeSelector": {"pool": "mi300"},
            "tolerations": [{"key": "gpu", "operator": "Exists"}],
            "image": "registry.example/merge:dev",
        }
    )
    job = by_kind(
        modelmerge.build(
            owner(MODEL_MERGE), spec, modelmerge.MergeInputs(["A", "B"], None), CONFIG
        ),
        "Job",
    )[0]
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "mi300"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert container_of(job)["resources"]["limits"] == {"amd.com/gpu": "1"}
    assert container_of(job)["image"] == "registry.example/merge:dev"


def test_pods_that_ask_for_gpus_get_the_gpu_runtime_class_and_no_other() -> None:
    """CRUCIBLE_GPU_RUNTIME_CLASS (the NVIDIA GPU Operator's "nvidia"): on the pods of runs
    and servers that ask for GPUs, where the nodes' default runtime cannot reach them."""
    config = OperatorConfig.from_env({"CRUCIBLE_GPU_RUNTIME_CLASS": "nvidia"})

    def pod_of(spec: ModelMergeSpec) -> dict[str, Any]:
        inputs = modelmerge.MergeInputs(["A", "B"], None)
        job = by_kind(modelmerge.build(owner(MODEL_MERGE), spec, inputs, config), "Job")[0]
        pod: dict[str, Any] = job["spec"]["template"]["spec"]
        return pod

    gpu = pod_of(merge_spec(resources={"gpus": 2}))
    assert gpu["runtimeClassName"] == "nvidia"
    assert gpu["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert "runtimeClassName" not in pod_of(merge_spec(resources={"gpus": 0}))
    assert (
        "runtimeClassName"
        not in by_kind(
            modelmerge.build(
                owner(MODEL_MERGE),
                merge_spec(resources={"gpus": 2}),
                modelmerge.MergeInputs(["A", "B"], None),
                CONFIG,
            ),
            "Job",
        )[0]["spec"]["template"]["spec"]
    )
    server = serving.server(
        owner(EVAL_RUN),
        serving.Server("m", "hf://o/m", ("m",), ()),
        EvalRunSpec.model_validate(
            {
                "models": [{"name": "m", "uri": "hf://o/m"}],
                "dataset": {"configMap": {"name": "q", "key": "q.csv"}},
                "serving": {"resources": {"gpus": 1}},
            }
        ).serving,
        config,
    )
    assert by_kind(server, "Deployment")[0]["spec"]["template"]["spec"]["runtimeClassName"] == (
        "nvidia"
    )
    with pytest.raises(ValueError, match="CRUCIBLE_GPU_RUNTIME_CLASS"):
        OperatorConfig.from_env({"CRUCIBLE_GPU_RUNTIME_CLASS": "Not_A_Name"})


def ft_spec(**extra: Any) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": "hf://o/base"},
            "dataset": {"configMap": {"name": "qa", "key": "qa.csv"}},
            **extra,
        }
    )


def test_single_gpu_training_runs_one_process() -> None:
    children = finetunejob.build(owner(FINE_TUNE_JOB), ft_spec(), "hf://o/base", CONFIG)
    job = by_kind(children, "Job")[0]
    assert container_of(job)["command"][:3] == ["python", "-m", "crucible.workloads.finetune"]
    task = task_of(by_kind(children, "Job")[0])
    assert task["dataset"]["path"] == "/data/dataset/qa.csv"
    assert task["adapterPath"] == "/models/team/finetunejobs/run/adapter"
    assert "mergedPath" not in task
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["dataset"]["configMap"] == {
        "name": "qa",
        "items": [{"key": "qa.csv", "path": "qa.csv"}],
    }


def test_continued_pretraining_mounts_its_documents_and_names_no_dataset() -> None:
    spec = FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": "hf://o/base"},
            "method": "cpt",
            "documents": {"configMap": {"name": "docs"}, "include": ["**/*.md"]},
        }
    )
    children = finetunejob.build(owner(FINE_TUNE_JOB), spec, "hf://o/base", CONFIG)
    task = task_of(by_kind(children, "Job")[0])
    assert task["method"] == "cpt"
    assert "dataset" not in task
    assert task["documents"] == {"documentsPath": "/data/documents", "include": ["**/*.md"]}
    volumes = {
        v["name"]: v for v in by_kind(children, "Job")[0]["spec"]["template"]["spec"]["volumes"]
    }
    assert volumes["documents"]["configMap"] == {"name": "docs"}


def test_multi_gpu_training_runs_torchrun_with_shared_memory() -> None:
    spec = ft_spec(
        resources={"gpus": 4},
        mergeAdapter=True,
        dataset={"pvc": {"claimName": "data", "path": "sets/qa.jsonl"}},
    )
    children = finetunejob.build(owner(FINE_TUNE_JOB), spec, "hf://o/base", CONFIG)
    job = by_kind(children, "Job")[0]
    assert container_of(job)["command"][:3] == ["torchrun", "--standalone", "--nproc_per_node=4"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container_of(job)["volumeMounts"]
    assert {"name": "pvc-data", "mountPath": "/mnt/pvc/data"} in container_of(job)["volumeMounts"]
    task = task_of(by_kind(children, "Job")[0])
    assert task["dataset"]["path"] == "/mnt/pvc/data/sets/qa.jsonl"
    assert task["mergedPath"] == "/models/team/finetunejobs/run/merged"
    assert finetunejob.outputs(owner(FINE_TUNE_JOB), spec, CONFIG) == {
        "adapterUri": "pvc://crucible-models/team/finetunejobs/run/adapter/",
        "outputUri": "pvc://crucible-models/team/finetunejobs/run/merged/",
    }


def test_training_on_several_nodes_is_an_indexed_job_under_a_headless_service() -> None:
    spec = ft_spec(
        resources={"nodes": 2, "gpusPerNode": 4},
        distributed={"maxRestarts": 2, "strategy": "FSDP"},
    )
    children = finetunejob.build(owner(FINE_TUNE_JOB), spec, "hf://o/base", CONFIG)
    (service,) = by_kind(children, "Service")
    (job,) = by_kind(children, "Job")
    assert children.index(service) < children.index(job)  # its pods look each other up
    assert job["spec"]["completionMode"] == "Indexed"
    assert (job["spec"]["completions"], job["spec"]["parallelism"]) == (2, 2)
    assert (job["spec"]["backoffLimitPerIndex"], job["spec"]["maxFailedIndexes"]) == (2, 0)
    assert "backoffLimit" not in job["spec"]
    assert job["spec"]["template"]["spec"]["subdomain"] == "run-train"
    assert service["metadata"]["name"] == "run-train"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"job-name": "run-train"}
    assert service["metadata"]["ownerReferences"] == job["metadata"]["ownerReferences"]
    assert container_of(job)["command"][:8] == [
        "torchrun",
        "--nnodes=2",
        "--nproc_per_node=4",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=run-train-0.run-train:29400",
        "--rdzv_id=run-train",
        "--max_restarts=2",
        "-m",
    ]
    assert container_of(job)["resources"]["limits"]["nvidia.com/gpu"] == "4"
    # A lost node's re-created pod can join the re-formed group (see ELASTIC_ENV).
    assert {"name": "TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "value": "1"} in container_of(job)["env"]
    task = task_of(by_kind(children, "Job")[0])
    assert task["gpus"] == 4
    assert task["strategy"] == "FSDP"


@pytest.mark.parametrize(
    ("resources", "accumulation"),
    [({"gpus": 0}, 8), ({"gpus": 2}, 4), ({"nodes": 2, "gpusPerNode": 4}, 1)],
)
def test_the_global_batch_holds_whatever_the_shape(
    resources: dict[str, int], accumulation: int
) -> None:
    spec = ft_spec(resources=resources, hyperparameters={"batchSize": 4, "globalBatchSize": 32})
    children = finetunejob.build(owner(FINE_TUNE_JOB), spec, "hf://o/base", CONFIG)
    task = task_of(by_kind(children, "Job")[0])
    assert task["hyperparameters"]["gradientAccumulationSteps"] == accumulation


def test_training_on_several_cpu_nodes_runs_one_process_each() -> None:
    spec = ft_spec(resources={"nodes": 3, "gpus": 0})
    children = finetunejob.build(owner(FINE_TUNE_JOB), spec, "hf://o/base", CONFIG)
    (job,) = by_kind(children, "Job")
    assert container_of(job)["command"][1:3] == ["--nnodes=3", "--nproc_per_node=1"]
    assert "resources" not in container_of(job)
    assert job["spec"]["backoffLimitPerIndex"] == 3  # spec.distributed's default


def test_rag_job_reads_the_connection_from_its_secret() -> None:
    spec = RagIndexSpec.model_validate(
        {
            "source": {"configMap": {"name": "docs"}},
            "database": {"connectionSecretRef": {"name": "pg", "key": "uri"}, "table": "docs"},
        }
    )
    children = ragindex.build(owner(RAG_INDEX), spec, CONFIG)
    job = by_kind(children, "Job")[0]
    env = {e["name"]: e for e in container_of(job)["env"]}
    assert env["CRUCIBLE_DATABASE_URL"] == {
        "name": "CRUCIBLE_DATABASE_URL",
        "valueFrom": {"secretKeyRef": {"name": "pg", "key": "uri"}},
    }
    assert "resources" not in container_of(job)  # no GPU asked for, none requested
    assert "postgresql://" not in json.dumps(children)


def eval_spec(**extra: Any) -> EvalRunSpec:
    return EvalRunSpec.model_validate(
        {
            "models": [
                {"name": "merged", "uri": "hf://o/merged@v2"},
                {"name": "tuned", "modelRef": {"kind": "FineTuneJob", "name": "ft"}},
                {
                    "name": "gpt",
                    "endpoint": {
                        "url": "https://api.example.com/v1",
                        "model": "gpt-4",
                        "apiKeySecretRef": {"name": "openai", "key": "key"},
                    },
                },
            ],
            "dataset": {"configMap": {"name": "mcq", "key": "mcq.csv"}},
            **extra,
        }
    )


def one_server(*models: serving.ServedModel) -> serving.Server:
    (server,) = serving.servers_for(models)
    return server


def test_vllm_server_for_a_hub_model() -> None:
    deployment, service = serving.server(
        owner(EVAL_RUN),
        one_server(serving.ServedModel("merged", "hf://o/merged@v2")),
        eval_spec().serving,
        CONFIG,
    )
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[:4] == ["--model", "o/merged", "--revision", "v2"]
    assert args[args.index("--served-model-name") + 1] == "merged"
    assert args[args.index("--max-model-len") + 1] == "4096"
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8000}
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert container["image"] == CONFIG.vllm_image
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http"}]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_vllm_serves_an_adapter_on_its_base_model() -> None:
    model = serving.ServedModel(
        "tuned",
        "pvc://crucible-models/team/modelmerges/m/",
        "pvc://crucible-models/team/finetunejobs/ft/adapter/",
    )
    deployment, _ = serving.server(owner(EVAL_RUN), one_server(model), eval_spec().serving, CONFIG)
    assert deployment["metadata"]["name"] == "run-vllm-tuned"
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["--model", "/models/team/modelmerges/m"]
    assert args[args.index("--served-model-name") + 1] == "tuned-base"
    assert "--enable-lora" in args
    assert args[args.index("--lora-modules") + 1] == "tuned=/models/team/finetunejobs/ft/adapter"
    assert args[args.index("--max-lora-rank") + 1] == "64"


def test_adapters_ride_on_their_base_models_server() -> None:
    """A base model and two adapters of it make one server, which answers to all three
    names; a model of other weights gets its own."""
    merge = "pvc://crucible-models/team/modelmerges/m/"
    models = [
        serving.ServedModel("merged", merge),
        serving.ServedModel("tuned", merge, "pvc://crucible-models/team/finetunejobs/a/adapter/"),
        serving.ServedModel("base", "hf://o/base"),
        serving.ServedModel("dpo", merge, "pvc://crucible-models/team/finetunejobs/b/adapter/"),
    ]
    shared, alone = serving.servers_for(models)
    assert (shared.key, shared.names, [n for n, _ in shared.adapters]) == (
        "merged",
        ("merged",),
        ["tuned", "dpo"],
    )
    assert (alone.key, alone.names, alone.adapters) == ("base", ("base",), ())
    args = serving.vllm_args(shared, eval_spec().serving, {"crucible-models": "/models"})
    assert args[args.index("--served-model-name") + 1 : args.index("--enable-lora")] == ["merged"]
    modules = args[args.index("--lora-modules") + 1 : args.index("--max-loras")]
    assert modules == [
        "tuned=/models/team/finetunejobs/a/adapter",
        "dpo=/models/team/finetunejobs/b/adapter",
    ]
    assert args[args.index("--max-loras") + 1] == "2"
    assert serving.model_urls(owner(EVAL_RUN), models) == {
        "merged": "http://run-vllm-merged.team.svc:8000/v1",
        "tuned": "http://run-vllm-merged.team.svc:8000/v1",
        "dpo": "http://run-vllm-merged.team.svc:8000/v1",
        "base": "http://run-vllm-base.team.svc:8000/v1",
    }


def test_lora_applies_only_to_the_modules_the_adapters_adapt() -> None:
    """vLLM wraps the output head for LoRA unless told otherwise, which breaks prompt
    log-probabilities: a server restricts LoRA to its adapters' modules when all are known."""
    base = "hf://o/base"
    known = [
        serving.ServedModel("a", base, "pvc://s/a/", ("q_proj", "v_proj")),
        serving.ServedModel("b", base, "pvc://s/b/", ("o_proj", "q_proj")),
    ]
    (server,) = serving.servers_for(known)
    args = serving.vllm_args(server, eval_spec().serving, {"s": "/s"})
    assert args[args.index("--lora-target-modules") + 1 :][:3] == ["o_proj", "q_proj", "v_proj"]
    (unknown,) = serving.servers_for([*known, serving.ServedModel("c", base, "pvc://s/c/")])
    assert unknown.lora_modules == ()
    assert "--lora-target-modules" not in serving.vllm_args(
        unknown, eval_spec().serving, {"s": "/s"}
    )


def test_eval_job_targets_servers_and_endpoints() -> None:
    served = [
        serving.ServedModel("merged", "hf://o/merged@v2"),
        serving.ServedModel("tuned", "hf://o/base", "pvc://s/a/"),
    ]
    rag = evalrun.RagInputs(
        "docs",
        RagIndexSpec.model_validate(
            {
                "source": {"configMap": {"name": "d"}},
                "database": {"connectionSecretRef": {"name": "pg", "key": "uri"}, "table": "docs"},
            }
        ).embedding,
        RagIndexSpec.model_validate(
            {
                "source": {"configMap": {"name": "d"}},
                "database": {"connectionSecretRef": {"name": "pg", "key": "uri"}, "table": "docs"},
            }
        ).database.connection_secret_ref,
    )
    spec = eval_spec(rag={"indexName": "docs", "topK": 4})
    children = evalrun.eval_job(owner(EVAL_RUN), spec, served, rag, CONFIG)
    task = task_of(by_kind(children, "Job")[0])
    assert [(e["name"], e["baseUrl"], e["model"]) for e in task["endpoints"]] == [
        ("merged", "http://run-vllm-merged.team.svc:8000/v1", "merged"),
        ("tuned", "http://run-vllm-tuned.team.svc:8000/v1", "tuned"),
        ("gpt", "https://api.example.com/v1", "gpt-4"),
    ]
    assert task["rag"]["topK"] == 4 and task["rag"]["table"] == "docs"
    assert task["repeats"] == 5
    env = {e["name"]: e for e in container_of(by_kind(children, "Job")[0])["env"]}
    key_env = task["endpoints"][2]["apiKeyEnv"]
    assert env[key_env]["valueFrom"]["secretKeyRef"] == {"name": "openai", "key": "key"}
    assert env["CRUCIBLE_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "pg", "key": "uri"}


def test_eval_job_mounts_questions_and_prompts_side_by_side() -> None:
    spec = EvalRunSpec.model_validate(
        {
            "models": [{"name": "a", "uri": "hf://o/a"}, {"name": "b", "uri": "hf://o/b"}],
            "dataset": {"configMap": {"name": "mcq", "key": "mcq.csv"}},
            "prompts": {"configMap": {"name": "open", "key": "prompts.jsonl"}},
            "judge": {"uri": "hf://o/a"},
        }
    )
    served = [
        serving.ServedModel("a", "hf://o/a"),
        serving.ServedModel("b", "hf://o/b"),
        serving.ServedModel("judge", "hf://o/a"),
    ]
    children = evalrun.eval_job(owner(EVAL_RUN), spec, served, None, CONFIG)
    task = task_of(by_kind(children, "Job")[0])
    assert task["dataset"] == {"path": "/data/dataset/mcq.csv"}
    assert task["prompts"] == {"path": "/data/prompts/prompts.jsonl"}
    # The judge is the same weights as model a: it is asked on a's server.
    assert task["judge"]["baseUrl"] == task["endpoints"][0]["baseUrl"]
    pod = by_kind(children, "Job")[0]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["prompts"]["configMap"]["name"] == "open"
    assert volumes["dataset"]["configMap"]["name"] == "mcq"


def synth_spec(**extra: Any) -> SyntheticDatasetSpec:
    return SyntheticDatasetSpec.model_validate(
        {
            "source": {"pvc": {"claimName": "docs", "path": "nitro"}},
            "teacher": {"modelRef": {"kind": "ModelMerge", "name": "big"}},
            **extra,
        }
    )


def test_synth_job_asks_the_served_teacher_and_counts_with_its_tokenizer() -> None:
    spec = synth_spec()
    teacher = serving.ServedModel("teacher", "pvc://crucible-models/team/modelmerges/big/")
    targets = syntheticdataset.served_targets(spec)
    assert [(t.name, t.field) for t in targets] == [("teacher", "spec.teacher")]
    children = syntheticdataset.build(owner(SYNTHETIC_DATASET), spec, [teacher], CONFIG)
    task = task_of(by_kind(children, "Job")[0])
    assert task["workload"] == "synthesize"
    assert task["teacher"] == {
        "name": "teacher",
        "baseUrl": "http://run-vllm-teacher.team.svc:8000/v1",
        "model": "teacher",
    }
    assert task["tokenizerUri"] == teacher.model_uri
    assert task["documentsPath"] == "/mnt/pvc/docs/nitro"
    assert (task["chunking"]["chunkSize"], task["chunking"]["chunkOverlap"]) == (300, 30)
    assert (task["passes"], task["pairsPerChunk"], task["temperature"]) == (3, 3, 0.5)
    assert task["prompt"] == DEFAULT_PROMPT and task["outputPath"].endswith("/run")
    job = by_kind(children, "Job")[0]
    assert container_of(job)["command"][2] == "crucible.workloads.synthesize"
    assert container_of(job)["image"] == CONFIG.eval_image
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in job["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"crucible-models", "docs"}


def test_synth_settings_hash_follows_what_shapes_the_output() -> None:
    teacher = [serving.ServedModel("teacher", "hf://o/big")]

    def digest(spec: SyntheticDatasetSpec, served: list[serving.ServedModel]) -> str:
        children = syntheticdataset.build(owner(SYNTHETIC_DATASET), spec, served, CONFIG)
        task = task_of(by_kind(children, "Job")[0])
        return str(task["settingsHash"])

    base = digest(synth_spec(), teacher)
    assert digest(synth_spec(concurrency=64, resources={"gpus": 1}), teacher) == base
    assert digest(synth_spec(temperature=0.9), teacher) != base
    assert digest(synth_spec(), [serving.ServedModel("teacher", "hf://o/other")]) != base
    assert digest(synth_spec(prompt=DEFAULT_PROMPT), teacher) == base


def test_synth_endpoint_teacher_key_comes_from_its_secret() -> None:
    spec = synth_spec(
        teacher={
            "endpoint": {
                "url": "https://api.example.com/v1",
                "model": "gpt-4",
                "apiKeySecretRef": {"name": "openai", "key": "key"},
            }
        },
        format="preference",
        rejectedModel={"uri": "hf://o/small"},
    )
    targets = syntheticdataset.served_targets(spec)
    assert [(t.name, t.field) for t in targets] == [("rejected", "spec.rejectedModel")]
    rejected = serving.ServedModel("rejected", "hf://o/small")
    children = syntheticdataset.build(owner(SYNTHETIC_DATASET), spec, [rejected], CONFIG)
    task = task_of(by_kind(children, "Job")[0])
    assert task["teacher"]["baseUrl"] == "https://api.example.com/v1"
    assert task["rejected"]["baseUrl"] == "http://run-vllm-rejected.team.svc:8000/v1"
    assert "tokenizerUri" not in task  # words are counted: no tokenizer to load
    env = {e["name"]: e for e in container_of(by_kind(children, "Job")[0])["env"]}
    ref = env[task["teacher"]["apiKeyEnv"]]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "openai", "key": "key"}
    assert "gpt-4" not in json.dumps(by_kind(children, "Job")[0]["spec"]["template"]["spec"])


RAG_SPEC = {
    "source": {"git": {"url": "https://github.com/o/docs.git"}},
    "database": {"connectionSecretRef": {"name": "pg", "key": "uri"}, "table": "docs"},
}


def children_of(
    builder: str, name: str = "run", config: OperatorConfig = CONFIG
) -> list[dict[str, Any]]:
    """The children of one workload run of each kind, named `name`."""
    models = [serving.ServedModel("merged", "hf://o/m"), serving.ServedModel("tuned", "hf://o/t")]
    return {
        "merge": lambda: modelmerge.build(
            owner(MODEL_MERGE, name), merge_spec(), modelmerge.MergeInputs(["A", "B"], None), config
        ),
        "train": lambda: finetunejob.build(
            owner(FINE_TUNE_JOB, name), ft_spec(), "hf://o/b", config
        ),
        "rag": lambda: ragindex.build(
            owner(RAG_INDEX, name), RagIndexSpec.model_validate(RAG_SPEC), config
        ),
        "eval": lambda: evalrun.eval_job(owner(EVAL_RUN, name), eval_spec(), models, None, config),
        "synth": lambda: syntheticdataset.build(
            owner(SYNTHETIC_DATASET, name),
            synth_spec(),
            [serving.ServedModel("teacher", "hf://o/t")],
            config,
        ),
    }[builder]()


@pytest.mark.parametrize("builder", ["merge", "train", "rag", "eval", "synth"])
def test_workload_pods_meet_the_restricted_profile(builder: str) -> None:
    children = children_of(builder)
    pod = by_kind(children, "Job")[0]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = pod["containers"][0]["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}


def test_a_name_as_long_as_its_kind_allows_names_every_child_in_full() -> None:
    """A resource named with as many characters as its kind's rule allows (ChildNames): each
    child is `<name>-<suffix>` whole, at most 63 characters, no hash needed; the EvalRuns and
    FineTuneJobs an Experiment makes fit their own kind's rule in turn."""
    kinds = {
        "merge": MODEL_MERGE,
        "train": FINE_TUNE_JOB,
        "rag": RAG_INDEX,
        "eval": EVAL_RUN,
        "synth": SYNTHETIC_DATASET,
    }
    for builder, kind in kinds.items():
        name = "n" * kind.children.max_name
        names = [c["metadata"]["name"] for c in children_of(builder, name)]
        assert all(n.startswith(f"{name}-") and len(n) <= 63 for n in names), names
        assert max(len(n) for n in names) - len(name) <= len(kind.children.longest), names
    for kind, key in ((EVAL_RUN, "m"), (SYNTHETIC_DATASET, "rejected")):
        name = "n" * kind.children.max_name
        server = serving.server_name(owner(kind, name), key)
        assert server == f"{name}-vllm-{key}" and len(server) <= 63
    search = owner(EXPERIMENT, "s" * EXPERIMENT.children.max_name)
    for child, kind in (
        (experiment.eval_run_name(search, "a-rather-long-task-name"), EVAL_RUN),
        (experiment.fine_tune_name(search, "candidate", "a-rather-long-task"), FINE_TUNE_JOB),
    ):
        assert len(child) <= kind.children.max_name, child
        assert child.startswith("s") and re.fullmatch(DNS_1035_LABEL.regex, child), child
    serving_owner = owner(MODEL_SERVING, "d" * MODEL_SERVING.children.max_name)
    assert len(modelserving.server_name(serving_owner)) == 63


def test_a_child_name_made_of_long_user_names_is_shortened_whole() -> None:
    """Even a suffix longer than the room left (an Experiment's candidate and task names) gives
    a name within the bound, unique to what it was made of."""
    long_suffix = "c" * 40 + "-" + "t" * 40
    first = child_name("search", long_suffix, 56)
    assert len(first) <= 56 and first.startswith("search-")
    assert first != child_name("search", long_suffix + "x", 56)
