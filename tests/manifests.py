"""The resources the tests of both tiers apply: a ModelMerge → FineTuneJob → RagIndex →
EvalRun chain and the inputs it names, an eval workload's result for one model, a
SyntheticDataset feeding a fine-tune, a gated ModelServing and an Experiment; and the task a
workload's Job carries."""

from __future__ import annotations

import json
from typing import Any

from crucible.resources.common import TASK_ANNOTATION

API = "crucible.dev/v1alpha1"


def merge(name: str = "merged", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "ModelMerge",
        "metadata": {"name": name},
        "spec": {
            "method": "slerp",
            "parameters": {"t": 0.5},
            "models": [{"uri": "hf://org/a"}, {"uri": "hf://org/b"}],
            **spec,
        },
    }


def finetune(name: str = "tuned", base: str = "merged", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "baseModel": {"modelRef": {"kind": "ModelMerge", "name": base}},
            "dataset": {"configMap": {"name": "qa", "key": "qa.csv"}},
            **spec,
        },
    }


def rag_index(name: str = "docs") -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "RagIndex",
        "metadata": {"name": name},
        "spec": {
            "source": {"configMap": {"name": "docs"}},
            "database": {"connectionSecretRef": {"name": "pg", "key": "uri"}, "table": "docs"},
        },
    }


def eval_run(name: str = "bench") -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "EvalRun",
        "metadata": {"name": name},
        "spec": {
            "models": [
                {"name": "merged", "modelRef": {"kind": "ModelMerge", "name": "merged"}},
                {"name": "tuned", "modelRef": {"kind": "FineTuneJob", "name": "tuned"}},
                {
                    "name": "gpt",
                    "endpoint": {
                        "url": "https://api.example.com/v1",
                        "model": "gpt-4",
                        "apiKeySecretRef": {"name": "openai", "key": "apiKey"},
                    },
                },
            ],
            "dataset": {"configMap": {"name": "mcq", "key": "mcq.csv"}},
            "rag": {"indexName": "docs", "topK": 3},
            "repeats": 3,
        },
    }


def inputs() -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "qa"},
            "data": {"qa.csv": "question,answer\nWhat is Nitro?,An inference server.\n"},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "docs"},
            "data": {"intro.md": "# Nitro\nNitro is fast."},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "mcq"},
            "data": {"mcq.csv": "question,a,b,c,d,correct\nQ?,A. x,B. y,C. z,D. w,A\n"},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "pg"},
            "stringData": {"uri": "postgresql://u:p@db:5432/rag"},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "openai"},
            "stringData": {"apiKey": "sk-test"},
        },
    ]


def result(model: str, rag: bool, rounds: list[float]) -> dict[str, Any]:
    mean = sum(rounds) / len(rounds)
    return {
        "model": model,
        "rag": rag,
        "n": len(rounds),
        "questions": 50,
        "accuracyMean": mean,
        "accuracyStddev": 0.02,
        "ci95Low": mean - 0.05,
        "ci95High": mean + 0.05,
        "rounds": rounds,
        "unparsed": 0,
    }


def synthetic(name: str = "qa", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "SyntheticDataset",
        "metadata": {"name": name},
        "spec": {
            "source": {"configMap": {"name": "docs"}},
            "teacher": {"uri": "hf://org/teacher"},
            **spec,
        },
    }


def finetune_on(dataset_name: str, name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "baseModel": {"uri": "hf://org/base"},
            "dataset": {"datasetRef": {"name": dataset_name}},
            **spec,
        },
    }


COUNTS = {
    "generated": 12,
    "kept": 9,
    "train": 8,
    "validation": 1,
    "dropped": {"unparsed": 1, "duplicate": 2, "ungrounded": 1},
}


def scored_eval_run(name: str, tuned_uri: str) -> dict[str, Any]:
    """An EvalRun that scores a base model and a candidate (log-likelihood)."""
    return {
        "apiVersion": API,
        "kind": "EvalRun",
        "metadata": {"name": name},
        "spec": {
            "models": [
                {"name": "base", "uri": "hf://org/base"},
                {"name": "tuned", "uri": tuned_uri},
            ],
            "dataset": {"configMap": {"name": "mcq", "key": "mcq.csv"}},
            "scoring": "LogLikelihood",
            "serving": {"resources": {"gpus": 0}},
        },
    }


def gated_serving(model_uri: str, eval_name: str, candidate: str = "tuned") -> dict[str, Any]:
    """A ModelServing whose gate asks the candidate to beat the base model."""
    return {
        "apiVersion": API,
        "kind": "ModelServing",
        "metadata": {"name": "assistant"},
        "spec": {
            "model": {"uri": model_uri},
            "replicas": 2,
            "serving": {"resources": {"gpus": 0}},
            "gate": {
                "evalRunRef": {"name": eval_name},
                "candidate": {"model": candidate},
                "rules": [
                    {"intervalAboveMean": {"model": "base"}},
                    {"pairedBetter": {"model": "base", "alpha": 0.05}},
                ],
            },
        },
    }


def scored_report(tuned: float, p_value: float) -> dict[str, Any]:
    """The report of `scored_eval_run`'s workload: base scores 0.40, tuned `tuned`, with their
    paired test."""
    paired = {
        "a": "tuned",
        "aRag": False,
        "b": "base",
        "bRag": False,
        "difference": round(tuned - 0.40, 4),
        "ci95Low": round(tuned - 0.40 - 0.1, 4),
        "ci95High": round(tuned - 0.40 + 0.1, 4),
        "test": "McNemar",
        "pValue": p_value,
    }
    return {
        "results": [result("base", False, [0.40]), result("tuned", False, [tuned])],
        "pairedTests": [paired],
    }


MAX_CONCURRENT_JOBS = 2  # the Experiment's bound


def data(name: str) -> dict[str, Any]:
    return {"configMap": {"name": name, "key": "data.jsonl"}}


def task(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "dataset": data(f"{name}-qa"),
        "evaluation": {"prompts": data(f"{name}-p")},
    }


def experiment() -> dict[str, Any]:
    """Two candidates searched on two tasks, the top one checked on a held-out task."""
    none = {"gpus": 0}
    return {
        "apiVersion": API,
        "kind": "Experiment",
        "metadata": {"name": "search"},
        "spec": {
            "candidates": [
                {"name": "a", "uri": "pvc://crucible-models/models/a"},
                {"name": "b", "uri": "pvc://crucible-models/models/b"},
            ],
            "tasks": [task("docs"), task("ops")],
            "heldOut": task("faq"),
            "fineTune": {"resources": none},
            "evaluation": {"resources": none, "serving": {"resources": none}},
            "judge": {"uri": "pvc://crucible-models/models/judge", "bootstrapSamples": 10},
            "baselines": [
                {"name": "hosted", "endpoint": {"url": "http://hosted.example/v1", "model": "m"}}
            ],
            "validation": {"top": 1, "baseline": "a"},
            "maxConcurrentJobs": MAX_CONCURRENT_JOBS,
        },
    }


def experiment_inputs() -> list[dict[str, Any]]:
    """The ConfigMaps `experiment` names."""
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": n},
            "data": {"data.jsonl": ""},
        }
        for t in ("docs", "ops", "faq")
        for n in (f"{t}-qa", f"{t}-p")
    ]


def judged(models: list[str]) -> dict[str, Any]:
    """An eval workload's report on open prompts: the judge's ratings only."""
    return {
        "judgeRatings": [
            {
                "model": m,
                "rating": 1050 - 50 * i,
                "ci95Low": 1000 - 50 * i,
                "ci95High": 1100 - 50 * i,
            }
            for i, m in enumerate(models)
        ],
        "judgeComparisons": 12,
        "resultsUri": "pvc://crucible-models/x/results.jsonl",
    }


def rank_report(namespace: str) -> dict[str, Any]:
    """The search's ranking workload's report: b ahead of a, both of the hosted baseline."""
    ranking = [
        {"model": m, "baseline": m == "hosted", "rating": r, "ci95Low": r - 40, "ci95High": r + 40}
        for m, r in (("b", 1080.0), ("a", 1010.0), ("hosted", 910.0))
    ]
    uri = f"pvc://crucible-models/{namespace}/experiments/search/rank/ranking.json"
    return {"comparisons": 24, "resultsUri": uri, "ranking": ranking}


def verdict_report() -> dict[str, Any]:
    """The held-out verdict workload's report: b's lead over a holds on faq."""
    verdict = {
        "task": "faq",
        "winner": "b",
        "runnerUp": "a",
        "ratingDifference": 90.0,
        "ci95Low": 20.0,
        "ci95High": 160.0,
        "comparisons": 12,
        "holds": True,
        "ratings": judged(["b", "a", "hosted"])["judgeRatings"],
    }
    return {"comparisons": 12, "heldOut": verdict}


def task_of(job: dict[str, Any]) -> dict[str, Any]:
    """The task a workload's Job gives its pods, in their annotation."""
    task: dict[str, Any] = json.loads(
        job["spec"]["template"]["metadata"]["annotations"][TASK_ANNOTATION]
    )
    return task
