"""Metrics derived from resources' status: names, labels, rebuild and removal."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from crucible.metrics import dataset_label, register_collector


def evalrun(name: str, results: list[dict[str, Any]], **status: Any) -> tuple[dict, dict]:
    body = {
        "metadata": {"namespace": "team", "name": name},
        "spec": {"dataset": {"configMap": {"name": "mcq", "key": "nitro.csv"}}},
    }
    return body, {"phase": "Succeeded", "results": results, **status}


RESULT = {
    "model": "tuned",
    "rag": True,
    "n": 3,
    "questions": 50,
    "accuracyMean": 0.578,
    "accuracyStddev": 0.021,
    "ci95Low": 0.526,
    "ci95High": 0.63,
    "rounds": [0.56, 0.58, 0.594],
    "unparsed": 1,
}


def scrape(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def test_eval_results_become_gauges_with_the_documented_labels() -> None:
    registry = CollectorRegistry()
    runs = register_collector(registry)
    scored_once = {
        **RESULT,
        "model": "base",
        "scoring": "LogLikelihood",
        "n": 1,
        "accuracyStddev": None,
        "accuracyNorm": 0.61,
        "rounds": [0.5],
    }
    body, status = evalrun(
        "bench",
        [RESULT, scored_once],
        judgeRatings=[{"model": "tuned", "rating": 1012.5, "ci95Low": 990.0, "ci95High": 1030.0}],
        pairedTests=[
            {"a": "tuned", "aRag": True, "b": "base", "bRag": True, "difference": 0.078,
             "ci95Low": 0.01, "ci95High": 0.15, "test": "McNemar", "pValue": 0.031},
        ],
    )  # fmt: skip
    runs.observe("EvalRun", {**body, "status": status})
    text = scrape(registry)
    run = 'dataset="configmap/mcq/nitro.csv",evalrun="bench"'
    labels = f'{run},model="tuned",namespace="team",rag="true",scoring="Generation"'
    assert f"crucible_eval_accuracy{{{labels}}} 0.578" in text
    assert f"crucible_eval_accuracy_stddev{{{labels}}} 0.021" in text
    assert f"crucible_eval_accuracy_ci95_lower{{{labels}}} 0.526" in text
    assert f"crucible_eval_rounds{{{labels}}} 3.0" in text
    assert f"crucible_eval_questions{{{labels}}} 50.0" in text
    per_round = f'{run},model="tuned",namespace="team",rag="true",round="3",scoring="Generation"'
    assert f"crucible_eval_round_accuracy{{{per_round}}} 0.594" in text
    # Scored once: no stddev between rounds, the interval over questions and acc_norm instead.
    once = f'{run},model="base",namespace="team",rag="true",scoring="LogLikelihood"'
    assert f"crucible_eval_accuracy_ci95_upper{{{once}}} 0.63" in text
    assert f"crucible_eval_accuracy_norm{{{once}}} 0.61" in text
    assert "crucible_eval_accuracy_stddev{" + once not in text
    pair = f'a="tuned",a_rag="true",b="base",b_rag="true",{run},namespace="team",test="McNemar"'
    assert f"crucible_eval_paired_p_value{{{pair}}} 0.031" in text
    assert f"crucible_eval_paired_difference{{{pair}}} 0.078" in text
    assert (
        'crucible_eval_judge_rating{dataset="configmap/mcq/nitro.csv",evalrun="bench",'
        'model="tuned",namespace="team"} 1012.5'
    ) in text
    assert 'crucible_resources{kind="EvalRun",phase="Succeeded"} 1.0' in text


def test_forgetting_a_resource_removes_its_series() -> None:
    registry = CollectorRegistry()
    runs = register_collector(registry)
    body, status = evalrun("old", [RESULT])
    runs.observe("EvalRun", {**body, "status": status})
    runs.observe(
        "ModelMerge",
        {"metadata": {"namespace": "team", "name": "m"}, "status": {"phase": "Running"}},
    )
    runs.forget("EvalRun", "team", "old")
    text = scrape(registry)
    assert 'evalrun="old"' not in text
    assert 'crucible_resources{kind="ModelMerge",phase="Running"} 1.0' in text


def test_dataset_label_names_the_source() -> None:
    assert dataset_label({"dataset": {"uri": "s3://b/mcq.csv"}}) == "s3://b/mcq.csv"
    assert dataset_label({"dataset": {"pvc": {"claimName": "d", "path": "x.csv"}}}) == (
        "pvc/d/x.csv"
    )


def test_an_experiments_ranking_and_verdict_become_gauges() -> None:
    registry = CollectorRegistry()
    runs = register_collector(registry)
    body = {"metadata": {"namespace": "team", "name": "search"}, "spec": {}}
    ranking = [
        {"model": "b", "baseline": False, "rating": 1080.0, "ci95Low": 1040.0, "ci95High": 1120.0},
        {"model": "gpt", "baseline": True, "rating": 920.0, "ci95Low": 880.0, "ci95High": 960.0},
    ]
    verdict = {
        "task": "faq",
        "winner": "b",
        "runnerUp": "a",
        "ratingDifference": 90.0,
        "ci95Low": 20.0,
        "ci95High": 160.0,
        "comparisons": 12,
        "holds": True,
        "ratings": [],
    }
    status = {"phase": "Succeeded", "ranking": ranking, "comparisons": 24, "heldOut": verdict}
    runs.observe("Experiment", {**body, "status": status})
    text = scrape(registry)
    labels = 'baseline="false",experiment="search",model="b",namespace="team"'
    assert f"crucible_experiment_rating{{{labels}}} 1080.0" in text
    assert f"crucible_experiment_rating_ci95_lower{{{labels}}} 1040.0" in text
    assert 'crucible_experiment_rating{baseline="true",experiment="search",model="gpt"' in text
    assert 'crucible_experiment_comparisons{experiment="search",namespace="team"} 24.0' in text
    held = 'experiment="search",namespace="team",runner_up="a",task="faq",winner="b"'
    assert f"crucible_experiment_held_out_lead{{{held}}} 90.0" in text
    assert f"crucible_experiment_held_out_holds{{{held}}} 1.0" in text
    runs.forget("Experiment", "team", "search")
    assert "crucible_experiment_rating{" not in scrape(registry)
