"""SyntheticDataset → the generation Job (eval image: the same client and chunker), against
the teacher (and rejected model) served for it or given as endpoints."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from crucible.api.common import InferenceTarget
from crucible.api.contract import ChatEndpoint, SynthTask
from crucible.api.syntheticdataset import DEFAULT_PROMPT, SyntheticDatasetSpec
from crucible.config import OperatorConfig
from crucible.resources.common import (
    Owner,
    Workload,
    pvc_claims,
    task_fields,
    workload_children,
    workload_command,
)
from crucible.resources.datasets import mount_documents
from crucible.resources.serving import (
    ServedModel,
    ServedTarget,
    endpoint_of,
    model_urls,
    served,
)

ROLE = "synth"
TEACHER = "teacher"
REJECTED = "rejected"
TRAIN_FILE = "train.jsonl"
VALIDATION_FILE = "validation.jsonl"


def served_targets(spec: SyntheticDatasetSpec) -> list[ServedTarget]:
    """The teacher and the rejected model, when this run serves them itself."""
    return served(
        [
            (TEACHER, "spec.teacher", spec.teacher),
            (REJECTED, "spec.rejectedModel", spec.rejected_model),
        ]
    )


def _identity(target: InferenceTarget, served: dict[str, ServedModel], role: str) -> Any:
    """What a model is, independent of where this run serves it."""
    if target.endpoint is not None:
        return {"url": target.endpoint.url, "model": target.endpoint.model}
    model = served[role]
    return {"model": model.model_uri, "adapter": model.adapter_uri}


def settings_hash(
    spec: SyntheticDatasetSpec, served: dict[str, ServedModel], tokenizer: str | None
) -> str:
    settings = {
        **spec.to_api(),
        "teacher": _identity(spec.teacher, served, TEACHER),
        "rejectedModel": (
            _identity(spec.rejected_model, served, REJECTED) if spec.rejected_model else None
        ),
        "tokenizer": tokenizer,
        "prompt": spec.prompt or DEFAULT_PROMPT,
    }
    for irrelevant in ("source", "concurrency", "serving", "resources"):
        settings.pop(irrelevant)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def build(
    owner: Owner,
    spec: SyntheticDatasetSpec,
    served: list[ServedModel],
    config: OperatorConfig,
) -> list[dict[str, Any]]:
    by_role = {m.name: m for m in served}
    urls = model_urls(owner, served)
    env: list[dict[str, Any]] = []

    def endpoint(target: InferenceTarget, role: str) -> ChatEndpoint:
        if target.endpoint is not None:
            return endpoint_of(role, target.endpoint, env)
        return ChatEndpoint(name=role, base_url=urls[role], model=role)

    tokenizer = spec.tokenizer or (by_role[TEACHER].model_uri if TEACHER in by_role else None)
    documents = mount_documents(spec.source, config)
    claims = pvc_claims([tokenizer] if tokenizer else []) + documents.claims
    task = SynthTask(
        **task_fields(owner, config, claims, report=True),
        git=spec.source.git,
        documents_path=documents.path,
        include=spec.source.include,
        chunking=spec.chunking,
        tokenizer_uri=tokenizer,
        teacher=endpoint(spec.teacher, TEACHER),
        rejected=endpoint(spec.rejected_model, REJECTED) if spec.rejected_model else None,
        pairs_per_chunk=spec.pairs_per_chunk,
        passes=spec.passes,
        temperature=spec.temperature,
        max_tokens=spec.max_tokens,
        prompt=spec.prompt or DEFAULT_PROMPT,
        format=spec.format,
        validation_fraction=spec.validation_fraction,
        filters=spec.filters,
        seed=spec.seed,
        concurrency=spec.concurrency,
        settings_hash=settings_hash(spec, by_role, tokenizer),
    )
    return workload_children(
        Workload(
            owner=owner,
            role=ROLE,
            config=config,
            resources=spec.resources,
            image=config.eval_image,
            command=workload_command("synthesize"),
            claims=claims,
            env=env,
            extra_volumes=documents.volumes,
            extra_mounts=documents.mounts,
        ),
        task,
    )
