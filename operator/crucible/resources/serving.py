"""vLLM servers the operator runs for the duration of a run (EvalRun's models and judge, a
SyntheticDataset's teacher): one Deployment + Service per distinct full-weights model, on the
upstream OpenAI image, with the LoRA adapters of the run's other models loaded on it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from crucible.api.common import Endpoint, InferenceTarget, Serving
from crucible.api.contract import ChatEndpoint
from crucible.api.formats import ModelLocation, Scheme
from crucible.config import OperatorConfig
from crucible.resources.common import (
    RESTRICTED_CONTAINER,
    Owner,
    child_name,
    container_resources,
    env_from_secret,
    labels,
    metadata,
    pvc_claims,
    pvc_volumes,
    scheduling,
)

SERVER_ROLE = "server"
VLLM_PORT = 8000
SERVER_LABEL = "crucible.dev/server"


@dataclass(frozen=True)
class ServedModel:
    """A model the run serves itself: full weights, optionally with a LoRA adapter on top."""

    name: str
    model_uri: str
    adapter_uri: str | None = None
    # The modules the adapter adapts; empty when not known.
    adapter_modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServedTarget:
    """A target of the spec (uri or modelRef) the run serves itself, under `name`."""

    name: str
    field: str  # where the spec names it, for error messages
    target: InferenceTarget


@dataclass(frozen=True)
class Server:
    """One vLLM server of a run: a model's full weights, answering under the names of the
    run's models that are those weights, with the adapters of those that ride on them."""

    key: str  # the first of its models: names its Deployment and Service
    model_uri: str
    names: tuple[str, ...]  # models served as the full weights themselves
    adapters: tuple[tuple[str, str], ...]  # (model name, adapter URI)
    # Where LoRA applies: every module its adapters adapt; empty when one of them is unknown.
    lora_modules: tuple[str, ...] = ()

    @property
    def base_names(self) -> tuple[str, ...]:
        """What the full weights answer to; `<key>-base` when no model of the run is them."""
        return self.names or (f"{self.key}-base",)


def servers_for(models: Sequence[ServedModel]) -> list[Server]:
    """One server per distinct full-weights model, in the order the models come: an adapter
    is served on its base model's server, beside the base itself and other adapters of it."""
    groups: dict[str, list[ServedModel]] = {}
    for model in models:
        groups.setdefault(model.model_uri, []).append(model)
    servers = []
    for uri, group in groups.items():
        adapters = [m for m in group if m.adapter_uri is not None]
        known = all(m.adapter_modules for m in adapters)
        servers.append(
            Server(
                key=group[0].name,
                model_uri=uri,
                names=tuple(m.name for m in group if m.adapter_uri is None),
                adapters=tuple((m.name, m.adapter_uri) for m in adapters if m.adapter_uri),
                lora_modules=tuple(sorted({n for m in adapters for n in m.adapter_modules}))
                if known
                else (),
            )
        )
    return servers


def model_urls(owner: Owner, models: Sequence[ServedModel]) -> dict[str, str]:
    """The base URL each served model answers at: the server it rides on."""
    return {
        name: server_url(owner, server.key)
        for server in servers_for(models)
        for name in (*server.names, *(adapter for adapter, _ in server.adapters))
    }


def served(targets: list[tuple[str, str, InferenceTarget | None]]) -> list[ServedTarget]:
    """Of (name, field, target), those to serve: the ones that are not endpoints."""
    return [
        ServedTarget(name, field, target)
        for name, field, target in targets
        if target is not None and target.endpoint is None
    ]


def server_name(owner: Owner, model: str) -> str:
    return child_name(owner.name, f"vllm-{model}")


def server_url(owner: Owner, model: str) -> str:
    return f"http://{server_name(owner, model)}.{owner.namespace}.svc:{VLLM_PORT}/v1"


def _model_location(uri: str, mounts: dict[str, str]) -> tuple[str, list[str]]:
    """vLLM's --model value and extra arguments for a model URI."""
    parsed = ModelLocation.parse(uri)
    if parsed.scheme == Scheme.PVC:
        return f"{mounts[parsed.root]}/{parsed.path}".rstrip("/"), []
    if parsed.scheme == Scheme.HF:
        return parsed.root, ["--revision", parsed.revision] if parsed.revision else []
    return uri, ["--load-format", "runai_streamer"]  # s3://


def vllm_args(served: Server, serving: Serving, mounts: dict[str, str]) -> list[str]:
    location, extra = _model_location(served.model_uri, mounts)
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
        "--served-model-name",
        *served.base_names,
    ]
    if served.adapters:
        args += [
            "--enable-lora",
            "--lora-modules",
            *(f"{name}={_model_location(uri, mounts)[0]}" for name, uri in served.adapters),
            # Every adapter of the run active at once: none waits for another to be swapped out.
            "--max-loras",
            str(len(served.adapters)),
            "--max-lora-rank",
            str(serving.max_lora_rank),
        ]
        if served.lora_modules:
            # LoRA on the adapters' own modules alone: an output head wrapped for LoRA breaks
            # prompt log-probabilities (vLLM drops its delta there on GPU, fails on CPU).
            args += ["--lora-target-modules", *served.lora_modules]
    return [*args, *serving.extra_args]


def server(
    owner: Owner,
    served: Server,
    serving: Serving,
    config: OperatorConfig,
    name: str | None = None,
) -> list[dict[str, Any]]:
    """The Deployment and Service of one vLLM server (upstream OpenAI-compatible image),
    named after its first model unless `name` is given."""
    name = name or server_name(owner, served.key)
    uris = [served.model_uri, *(uri for _, uri in served.adapters)]
    volumes, mounts, claim_paths = pvc_volumes(config, pvc_claims(uris))
    selector = {SERVER_LABEL: name}
    pod_labels = {**labels(owner, SERVER_ROLE), **selector}
    probe = {"httpGet": {"path": "/health", "port": VLLM_PORT}}
    container: dict[str, Any] = {
        "name": "vllm",
        "image": serving.resources.image or config.vllm_image,
        "imagePullPolicy": config.image_pull_policy,
        "args": vllm_args(served, serving, claim_paths),
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
                    **scheduling(serving.resources, config),
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


def endpoint_of(name: str, endpoint: Endpoint, env: list[dict[str, Any]]) -> ChatEndpoint:
    """An endpoint for the workload; its API key reaches the pod from its Secret via `env`."""
    key_env = None
    if endpoint.api_key_secret_ref is not None:
        key_env = f"CRUCIBLE_API_KEY_{len(env)}"
        ref = endpoint.api_key_secret_ref
        env.append(env_from_secret(key_env, ref.name, ref.key))
    return ChatEndpoint(name=name, base_url=endpoint.url, model=endpoint.model, api_key_env=key_env)
