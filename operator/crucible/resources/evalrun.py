"""EvalRun → the eval Job, against the models served for it (crucible.resources.serving)
and endpoints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crucible.api.common import SecretKeyRef
from crucible.api.contract import ChatEndpoint, DataFile, EvalRag, EvalTask
from crucible.api.evalrun import EvalRunSpec
from crucible.api.ragindex import Embedding
from crucible.config import OperatorConfig
from crucible.resources.common import (
    Owner,
    Workload,
    env_from_secret,
    pvc_claims,
    task_fields,
    workload_children,
    workload_command,
)
from crucible.resources.datasets import mount_data
from crucible.resources.serving import (
    ServedModel,
    ServedTarget,
    endpoint_of,
    model_urls,
    served,
)

ROLE = "eval"
JUDGE = "judge"


@dataclass(frozen=True)
class RagInputs:
    """What the eval needs from the RagIndex."""

    table: str
    embedding: Embedding
    connection: SecretKeyRef


def served_targets(spec: EvalRunSpec) -> list[ServedTarget]:
    """The models (and judge) this run serves itself."""
    return served(
        [
            *((m.name, f"spec.models[{i}]", m) for i, m in enumerate(spec.models)),
            (JUDGE, "spec.judge", spec.judge),
        ]
    )


def eval_job(
    owner: Owner,
    spec: EvalRunSpec,
    served: list[ServedModel],
    rag: RagInputs | None,
    config: OperatorConfig,
    *,
    lineage: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The eval Job's children; `served` are the models (and judge) the run serves itself;
    `lineage` says what each model was made from, for the workload's report."""
    urls = model_urls(owner, served)
    env: list[dict[str, Any]] = []
    endpoints = [
        endpoint_of(model.name, model.endpoint, env)
        if model.endpoint is not None
        else ChatEndpoint(name=model.name, base_url=urls[model.name], model=model.name)
        for model in spec.models
    ]
    judge = None
    if spec.judge is not None:
        judge = (
            endpoint_of(JUDGE, spec.judge.endpoint, env)
            if spec.judge.endpoint is not None
            else ChatEndpoint(name=JUDGE, base_url=urls[JUDGE], model=JUDGE)
        )
    data = mount_data(spec.dataset, config) if spec.dataset is not None else None
    prompts = mount_data(spec.prompts, config, "prompts") if spec.prompts is not None else None
    inputs = [mounted for mounted in (data, prompts) if mounted is not None]
    claims = [c for i in inputs for c in i.claims] + pvc_claims(
        [rag.embedding.model] if rag else []
    )
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
        **task_fields(owner, config, claims, report=True),
        endpoints=endpoints,
        dataset=DataFile(path=data.path, uri=data.uri) if data else None,
        prompts=DataFile(path=prompts.path, uri=prompts.uri) if prompts else None,
        rag=eval_rag,
        scoring=spec.scoring,
        repeats=spec.repeats,
        seed=spec.seed,
        temperature=spec.temperature,
        max_tokens=spec.max_tokens,
        concurrency=spec.concurrency,
        constrain_answers=spec.constrain_answers,
        system_prompt=spec.system_prompt,
        judge=judge,
        judge_prompt=spec.judge.prompt if spec.judge else None,
        bootstrap_samples=spec.judge.bootstrap_samples if spec.judge else 0,
        lineage=lineage or {},
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
            extra_volumes=[v for i in inputs for v in i.volumes],
            extra_mounts=[m for i in inputs for m in i.mounts],
        ),
        task,
    )
