"""EvalRun → one vLLM Deployment + Service per served model, then the eval Job."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crucible.api.common import SecretKeyRef
from crucible.api.contract import DataFile, EvalEndpoint, EvalRag, EvalTask
from crucible.api.evalrun import Endpoint, EvalRunSpec, Serving
from crucible.api.ragindex import Embedding
from crucible.config import OperatorConfig
from crucible.resources.common import (
    RESTRICTED_CONTAINER,
    Owner,
    Workload,
    child_name,
    container_resources,
    env_from_secret,
    labels,
    metadata,
    pvc_claims,
    pvc_volumes,
    scheduling,
    task_fields,
    workload_children,
    workload_command,
)
from crucible.resources.datasets import mount_data

ROLE = "eval"
SERVER_ROLE = "server"
VLLM_PORT = 8000
JUDGE = "judge"


@dataclass(frozen=True)
class ServedModel:
    """A model the run serves itself: full weights, optionally with a LoRA adapter on top."""

    name: str
    model_uri: str
    adapter_uri: str | None = None


@dataclass(frozen=True)
class RagInputs:
    """What the eval needs from the RagIndex."""

    table: str
    embedding: Embedding
    connection: SecretKeyRef


def server_name(owner: Owner, model: str) -> str:
    return child_name(owner.name, f"vllm-{model}")


def server_url(owner: Owner, model: str) -> str:
    return f"http://{server_name(owner, model)}.{owner.namespace}.svc:{VLLM_PORT}/v1"


def _model_location(uri: str, mounts: dict[str, str]) -> tuple[str, list[str]]:
    """vLLM's --model value and extra arguments for a model URI."""
    if uri.startswith("pvc://"):
        claim, _, path = uri.removeprefix("pvc://").partition("/")
        return f"{mounts[claim]}/{path}".rstrip("/"), []
    if uri.startswith("hf://"):
        name, _, revision = uri.removeprefix("hf://").partition("@")
        return name, ["--revision", revision] if revision else []
    return uri, ["--load-format", "runai_streamer"]  # s3://


def vllm_args(model: ServedModel, serving: Serving, mounts: dict[str, str]) -> list[str]:
    location, extra = _model_location(model.model_uri, mounts)
    args = [
        "--model",
        location,
        *extra,
        "--host",
        "0.0.0.0",
        "--port",
        str(VLLM_PORT),
        "--max-model-len",
        str(serving.max_model_len),
        "--dtype",
        str(serving.dtype),
        "--gpu-memory-utilization",
        str(serving.gpu_memory_utilization),
    ]
    if model.adapter_uri:
        adapter, _ = _model_location(model.adapter_uri, mounts)
        args += [
            "--served-model-name",
            f"{model.name}-base",
            "--enable-lora",
            "--lora-modules",
            f"{model.name}={adapter}",
            "--max-lora-rank",
            str(serving.max_lora_rank),
        ]
    else:
        args += ["--served-model-name", model.name]
    return [*args, *serving.extra_args]


def server(
    owner: Owner, model: ServedModel, serving: Serving, config: OperatorConfig
) -> list[dict[str, Any]]:
    """The Deployment and Service of one vLLM server (upstream OpenAI-compatible image)."""
    name = server_name(owner, model.name)
    uris = [model.model_uri, *([model.adapter_uri] if model.adapter_uri else [])]
    volumes, mounts, claim_paths = pvc_volumes(config, pvc_claims(uris))
    selector = {"crucible.dev/server": name}
    pod_labels = {**labels(owner, SERVER_ROLE), **selector}
    probe = {"httpGet": {"path": "/health", "port": VLLM_PORT}}
    container: dict[str, Any] = {
        "name": "vllm",
        "image": serving.resources.image or config.vllm_image,
        "imagePullPolicy": config.image_pull_policy,
        "args": vllm_args(model, serving, claim_paths),
        "ports": [{"name": "http", "containerPort": VLLM_PORT}],
        "env": [{"name": "HF_HOME", "value": f"{config.model_store_mount}/.cache/huggingface"}],
        "volumeMounts": [*mounts, {"name": "dshm", "mountPath": "/dev/shm"}],
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 3},
        # Loading weights takes minutes: the startup probe gives it the configured time.
        "startupProbe": {
            **probe,
            "periodSeconds": 10,
            "failureThreshold": max(1, serving.startup_timeout_seconds // 10),
        },
        # The upstream image runs as root; everything else of "restricted" still applies.
        "securityContext": {
            k: v
            for k, v in RESTRICTED_CONTAINER.items()
            if k not in ("runAsNonRoot", "readOnlyRootFilesystem")
        },
    }
    if resources := container_resources(serving.resources, config):
        container["resources"] = resources
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(owner, name, SERVER_ROLE),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "Recreate"},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": [*volumes, {"name": "dshm", "emptyDir": {"medium": "Memory"}}],
                    **scheduling(serving.resources),
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, name, SERVER_ROLE),
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": VLLM_PORT, "targetPort": "http"}],
        },
    }
    return [deployment, service]


def _endpoint(name: str, endpoint: Endpoint, env: list[dict[str, Any]]) -> EvalEndpoint:
    key_env = None
    if endpoint.api_key_secret_ref is not None:
        key_env = f"CRUCIBLE_API_KEY_{len(env)}"
        ref = endpoint.api_key_secret_ref
        env.append(env_from_secret(key_env, ref.name, ref.key))
    return EvalEndpoint(name=name, base_url=endpoint.url, model=endpoint.model, api_key_env=key_env)


def eval_job(
    owner: Owner,
    spec: EvalRunSpec,
    served: list[ServedModel],
    rag: RagInputs | None,
    config: OperatorConfig,
) -> list[dict[str, Any]]:
    """The eval Job's children; `served` are the models (and judge) the run serves itself."""
    served_names = {m.name for m in served}
    env: list[dict[str, Any]] = []
    endpoints = []
    for model in spec.models:
        if model.endpoint is not None:
            endpoints.append(_endpoint(model.name, model.endpoint, env))
        else:
            assert model.name in served_names, model.name
            endpoints.append(
                EvalEndpoint(
                    name=model.name, base_url=server_url(owner, model.name), model=model.name
                )
            )
    judge = None
    if spec.judge is not None:
        judge = (
            _endpoint(JUDGE, spec.judge.endpoint, env)
            if spec.judge.endpoint is not None
            else EvalEndpoint(name=JUDGE, base_url=server_url(owner, JUDGE), model=JUDGE)
        )
    data = mount_data(spec.dataset, config)
    claims = data.claims + pvc_claims([rag.embedding.model] if rag else [])
    eval_rag = None
    if rag is not None and spec.rag is not None:
        eval_rag = EvalRag(
            table=rag.table,
            top_k=spec.rag.top_k,
            compare_without_rag=spec.rag.compare_without_rag,
            embedding=rag.embedding,
        )
        env.append(
            env_from_secret(eval_rag.database_url_env, rag.connection.name, rag.connection.key)
        )
    task = EvalTask(
        **task_fields(owner, config, claims),
        endpoints=endpoints,
        dataset=DataFile(path=data.path, uri=data.uri),
        rag=eval_rag,
        repeats=spec.repeats,
        seed=spec.seed,
        temperature=spec.temperature,
        max_tokens=spec.max_tokens,
        concurrency=spec.concurrency,
        system_prompt=spec.system_prompt,
        judge=judge,
        judge_prompt=spec.judge.prompt if spec.judge else None,
        bootstrap_samples=spec.judge.bootstrap_samples if spec.judge else 0,
    )
    return workload_children(
        Workload(
            owner=owner,
            role=ROLE,
            config=config,
            resources=spec.resources,
            image=config.eval_image,
            command=workload_command("evaluate"),
            claims=claims,
            env=env,
            extra_volumes=data.volumes,
            extra_mounts=data.mounts,
        ),
        task,
    )
