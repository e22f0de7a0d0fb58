"""Every manifest the builders render is accepted by the API server (server-side dry-run),
in all the variants the API allows: multi-GPU, tolerations, LoRA serving, Kueue, endpoints."""

from __future__ import annotations

from typing import Any

import pytest

from crucible.api.evalrun import EvalRunSpec
from crucible.api.finetunejob import FineTuneJobSpec
from crucible.api.kinds import EVAL_RUN, FINE_TUNE_JOB, MODEL_MERGE, RAG_INDEX
from crucible.api.modelmerge import ModelMergeSpec
from crucible.api.ragindex import RagIndexSpec
from crucible.config import OperatorConfig
from crucible.devcluster.cluster import LocalCluster
from crucible.resources import evalrun, finetunejob, modelmerge, ragindex, serving
from crucible.resources.common import Owner

RESOURCES = {
    "gpus": 2,
    "cpu": 8,
    "memory": "64Gi",
    "nodeSelector": {"pool": "a100"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
}


def variants(namespace: str, config: OperatorConfig) -> list[dict[str, Any]]:
    def owner(kind: Any) -> Owner:
        return Owner(kind, "run", namespace, "00000000-0000-0000-0000-000000000001")

    merge = ModelMergeSpec.model_validate(
        {
            "method": "dare_ties",
            "baseModel": {"uri": "hf://o/base"},
            "resources": RESOURCES,
            "models": [
                {"uri": "hf://o/a", "weight": 0.5, "density": 0.4},
                {"uri": "pvc://other-claim/models/b", "weight": 0.5, "density": 0.4},
            ],
        }
    )
    tune = FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": "s3://bucket/base"},
            "method": "dpo",
            "resources": RESOURCES,
            "dataset": {
                "pvc": {"claimName": "data", "path": "pairs.jsonl"},
                "format": "preference",
            },
            "lora": {"r": 64, "alpha": 128, "loadIn4bit": True},
            "mergeAdapter": True,
        }
    )
    rag = RagIndexSpec.model_validate(
        {
            "source": {"pvc": {"claimName": "docs", "path": "site"}},
            "embedding": {"model": "pvc://crucible-models/embeddings/bge"},
            "database": {"connectionSecretRef": {"name": "pg", "key": "uri"}, "table": "docs"},
        }
    )
    evaluation = EvalRunSpec.model_validate(
        {
            "models": [
                {"name": "tuned", "modelRef": {"kind": "FineTuneJob", "name": "ft"}},
                {
                    "name": "gpt",
                    "endpoint": {
                        "url": "https://api.example.com/v1",
                        "model": "gpt-4",
                        "apiKeySecretRef": {"name": "openai", "key": "k"},
                    },
                },
            ],
            "dataset": {"uri": "s3://bucket/mcq.csv"},
            "judge": {"uri": "hf://o/judge"},
            "serving": {"resources": RESOURCES, "extraArgs": ["--enforce-eager"]},
        }
    )
    served = [
        serving.ServedModel("tuned", "hf://o/base@main", "pvc://crucible-models/a/"),
        serving.ServedModel("judge", "s3://bucket/judge"),
    ]
    rag_inputs = evalrun.RagInputs("docs", rag.embedding, rag.database.connection_secret_ref)
    return [
        *modelmerge.build(
            owner(MODEL_MERGE),
            merge,
            modelmerge.MergeInputs(["hf://o/a", "pvc://other-claim/models/b"], "hf://o/base"),
            config,
        ),
        *finetunejob.build(owner(FINE_TUNE_JOB), tune, "s3://bucket/base", config),
        *ragindex.build(owner(RAG_INDEX), rag, config),
        *[
            m
            for s in serving.servers_for(served)
            for m in serving.server(owner(EVAL_RUN), s, evaluation.serving, config)
        ],
        *evalrun.eval_job(owner(EVAL_RUN), evaluation, served, rag_inputs, config),
    ]


@pytest.mark.parametrize("queue", [None, "gpu-queue"])
def test_server_side_dry_run_accepts_every_manifest(
    cluster: LocalCluster, namespace: str, queue: str | None
) -> None:
    config = OperatorConfig.from_env({"CRUCIBLE_KUEUE_QUEUE": queue} if queue else {})
    manifests = variants(namespace, config)
    # Names repeat across kinds of different runs (e.g. run-report): apply kind by kind.
    for kind in sorted({m["kind"] for m in manifests}):
        batch = [m for m in manifests if m["kind"] == kind]
        unique = {m["metadata"]["name"]: m for m in batch}
        out = cluster.kubectl_apply(list(unique.values()), "--dry-run=server")
        assert out.count("(server dry run)") == len(unique)
