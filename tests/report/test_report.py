"""The HTML reports as a person sees them: opened in a real headless Chromium, each renders
with no error, shows something (its screenshot is not one colour), and every figure on the
page is the status's own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from crucible.api.evalrun import EvalRunStatus
from crucible.api.experiment import ExperimentStatus
from crucible.metrics.report import Answered, evalrun_report, experiment_report
from tests.browser import blank, open_page
from tests.report.pages import evalrun_figures, experiment_figures, figures, key, numbers

pytest.importorskip("matplotlib")


def result(
    model: str, rag: bool, mean: float, low: float, high: float, **extra: Any
) -> dict[str, Any]:
    return {
        "model": model,
        "rag": rag,
        "scoring": extra.pop("scoring", "LogLikelihood"),
        "n": extra.pop("n", 1),
        "questions": 40,
        "accuracyMean": mean,
        "ci95Low": low,
        "ci95High": high,
        "rounds": extra.pop("rounds", [mean]),
        "unparsed": 0,
        **extra,
    }


EVAL = EvalRunStatus.model_validate(
    {
        "phase": "Succeeded",
        "resultsUri": "pvc://crucible-models/team/evalruns/bench/",
        "results": [
            result("tuned", True, 0.725, 0.575, 0.85, accuracyNorm=0.9),
            result("base", True, 0.55, 0.4, 0.7, accuracyNorm=0.775),
            result("tuned", False, 0.6, 0.45, 0.75, accuracyNorm=0.85),
            result("base", False, 0.225, 0.1, 0.35, accuracyNorm=0.275),
            result(
                "gpt", False, 0.643, 0.52, 0.76, scoring="Generation", n=5,
                rounds=[0.6, 0.65, 0.625, 0.675, 0.665], accuracyStddev=0.0297,
            ),
        ],
        "pairedTests": [
            {"a": "tuned", "aRag": False, "b": "base", "bRag": False, "difference": 0.375,
             "ci95Low": 0.225, "ci95High": 0.525, "test": "McNemar", "pValue": 0.000122},
            {"a": "tuned", "aRag": True, "b": "base", "bRag": True, "difference": 0.175,
             "ci95Low": 0.05, "ci95High": 0.3, "test": "McNemar", "pValue": 0.0213},
            {"a": "gpt", "aRag": False, "b": "tuned", "bRag": False, "difference": 0.043,
             "ci95Low": -0.08, "ci95High": 0.16, "test": "PairedT", "pValue": 0.52},
        ],
    }
)  # fmt: skip


def test_an_evalrun_report_shows_its_status_whole(tmp_path: Path) -> None:
    answers = [
        Answered(r.model, r.rag, q, q <= r.accuracy_mean * 40)
        for r in EVAL.results or []
        for q in range(1, 41)
    ]
    page = tmp_path / "bench.html"
    page.write_text(
        evalrun_report(
            "bench",
            "team",
            EVAL,
            answers=answers,
            lineage={"tuned": "FineTuneJob sft (sft of ModelMerge merge (slerp of hf://o/a))"},
        )
    )
    seen = open_page(page)
    assert seen.errors == []
    assert not blank(seen.screenshot)
    assert numbers(figures(seen.dom)) == evalrun_figures(EVAL)
    assert seen.dom.count("<svg") == 3  # accuracy, paired differences, per question
    assert "FineTuneJob sft (sft of ModelMerge merge (slerp of hf://o/a))" in seen.dom


def rating(model: str, value: float, low: float, high: float) -> dict[str, Any]:
    return {"model": model, "rating": value, "ci95Low": low, "ci95High": high}


EXPERIMENT = ExperimentStatus.model_validate(
    {
        "phase": "Succeeded",
        "comparisons": 48,
        "ranking": [
            {**rating("merged", 1043.2, 980.5, 1110.9), "baseline": False},
            {**rating("instruct", 956.8, 889.1, 1019.5), "baseline": False},
        ],
        "taskRankings": [
            {"task": "operate", "evalRun": "search-operate", "comparisons": 24, "ratings": [
                rating("merged", 1050.0, 960.0, 1140.0),
                rating("instruct", 950.0, 860.0, 1040.0),
            ]},
        ],
        "heldOut": {"task": "measure", "winner": "merged", "runnerUp": "instruct",
                    "ratingDifference": 61.5, "ci95Low": -40.25, "ci95High": 170.0,
                    "comparisons": 12, "holds": False, "ratings": [
                        rating("merged", 1030.75, 950.0, 1100.0),
                        rating("instruct", 969.25, 900.0, 1050.0),
                    ]},
    }
)  # fmt: skip


def test_an_experiment_report_shows_its_ratings_and_verdict(tmp_path: Path) -> None:
    page = tmp_path / "search.html"
    page.write_text(experiment_report("search", "team", EXPERIMENT))
    seen = open_page(page)
    assert seen.errors == []
    assert not blank(seen.screenshot)
    shown = figures(seen.dom)
    assert shown[key("held-out-holds")] == "no"
    assert numbers(shown) == experiment_figures(EXPERIMENT)


def test_a_page_with_an_error_is_caught(tmp_path: Path) -> None:
    """The checks can fail: a console error and a missing image are seen, a blank page is."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<html><body><script>console.error("boom")</script><img src="x.png"></body></html>'
    )
    seen = open_page(page)
    assert any("boom" in e for e in seen.errors)
    assert any("ERR_FILE_NOT_FOUND" in e for e in seen.errors)
    empty = tmp_path / "empty.html"
    empty.write_text("<html><body></body></html>")
    assert blank(open_page(empty).screenshot)


def test_lineage_says_what_each_model_was_made_from() -> None:
    from crucible.metrics.report import lineage

    def run(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {"kind": kind, "metadata": {"name": name}, "spec": spec}

    stored = {"uri": "pvc://store/models/instruct"}
    resources = [
        run("FineTuneJob", "variant", {"method": "cpt", "baseModel": stored}),
        run(
            "ModelMerge",
            "merge",
            {
                "method": "slerp",
                "models": [stored, {"modelRef": {"kind": "FineTuneJob", "name": "variant"}}],
            },
        ),
        run(
            "FineTuneJob",
            "sft",
            {"baseModel": {"modelRef": {"kind": "ModelMerge", "name": "merge"}}},
        ),
    ]
    models = [
        {"name": "base", **stored},
        {"name": "tuned", "modelRef": {"kind": "FineTuneJob", "name": "sft"}},
        {"name": "gpt", "endpoint": {"url": "https://api.example.com/v1", "model": "gpt-4"}},
        {"name": "gone", "modelRef": {"kind": "ModelMerge", "name": "deleted"}},
    ]
    assert lineage(models, resources) == {
        "base": "pvc://store/models/instruct",
        "tuned": "FineTuneJob sft (sft of ModelMerge merge (slerp of pvc://store/models/instruct, "
        "FineTuneJob variant (cpt of pvc://store/models/instruct)))",
        "gpt": "endpoint https://api.example.com/v1 (gpt-4)",
        "gone": "ModelMerge deleted",
    }
