"""The ranking workload: pooled Bradley-Terry over every task's verdicts, and the held-out
verdict, recomputable from the files it leaves in the store."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from crucible.api.contract import JudgedTask, RankTask
from crucible.workloads.common import WorkloadError
from crucible.workloads.rank import rank
from crucible.workloads.stats import lead, rate

STRENGTH = {"a": 0.8, "b": 0.5, "gpt": 0.3}  # chance each wins against an average model


def verdicts(path: Path, games: int, seed: int, models: dict[str, float]) -> Path:
    """Verdicts in both orders, as an EvalRun's judge writes them."""
    rng = random.Random(seed)
    lines = []
    for item in range(games):
        for (x, px), (y, py) in itertools.combinations(models.items(), 2):
            won = rng.random() < px / (px + py)
            lines.append({"a": x, "b": y, "scoreA": 1.0 if won else 0.0, "item": item})
            lines.append({"a": y, "b": x, "scoreA": 0.0 if won else 1.0, "item": item})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def task(tmp_path: Path, files: dict[str, Path], winner: str | None = None) -> RankTask:
    return RankTask(
        namespace="team",
        name="search",
        output_uri="pvc://store/team/experiments/search/rank/",
        output_path=str(tmp_path / "out"),
        tasks=[JudgedTask(name=n, judgements_path=str(p)) for n, p in files.items()],
        baselines=["gpt"],
        winner=winner,
        bootstrap_samples=60,
        seed=3,
    )


def test_the_ranking_pools_every_task_and_is_recomputable_from_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = tmp_path / "report.json"
    monkeypatch.setenv("CRUCIBLE_REPORT_FILE", str(report))
    files = {
        "docs": verdicts(tmp_path / "docs.jsonl", 30, 1, STRENGTH),
        "ops": verdicts(tmp_path / "ops.jsonl", 30, 2, STRENGTH),
    }
    rank(task(tmp_path, files))
    sent = json.loads(report.read_text())
    assert [r["model"] for r in sent["ranking"]] == ["a", "b", "gpt"]
    assert [r["baseline"] for r in sent["ranking"]] == [False, False, True]
    assert sent["comparisons"] == 2 * 30 * 3 * 2
    # Recomputed from the comparisons left in the store: the same figures.
    stored = [
        json.loads(line)
        for line in (tmp_path / "out" / "comparisons.jsonl").read_text().split("\n")
        if line
    ]
    assert {c["task"] for c in stored} == {"docs", "ops"}
    again = rate([(c["a"], c["b"], c["scoreA"]) for c in stored], 60, 3)
    assert [(r.model, round(r.rating, 3), round(r.ci95_low, 3)) for r in again] == [
        (r["model"], r["rating"], r["ci95Low"]) for r in sent["ranking"]
    ]
    assert json.loads((tmp_path / "out" / "ranking.json").read_text())["comparisons"] == 360
    report = (tmp_path / "out" / "report.html").read_text()
    first = sent["ranking"][0]
    assert f'data-figure="rating" data-model="a" data-value="{first["rating"]!r}"' in report


def test_the_held_out_verdict_is_the_winners_lead_over_the_best_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = tmp_path / "report.json"
    monkeypatch.setenv("CRUCIBLE_REPORT_FILE", str(report))
    held = verdicts(tmp_path / "faq.jsonl", 100, 5, {"a": 0.85, "b": 0.35, "gpt": 0.3})
    rank(task(tmp_path, {"faq": held}, winner="a"))
    verdict = json.loads(report.read_text())["heldOut"]
    assert (verdict["task"], verdict["winner"], verdict["runnerUp"]) == ("faq", "a", "b")
    judged = [(c["a"], c["b"], c["scoreA"]) for c in map(json.loads, held.read_text().splitlines())]
    expected = lead(judged, "a", "b", 60, 3)
    assert verdict["ratingDifference"] == round(expected.difference, 3)
    assert verdict["ci95Low"] == round(expected.ci95_low, 3) > 0
    assert verdict["holds"] is True

    # A winner the held-out task does not favour: its lead does not hold.
    even = verdicts(tmp_path / "even.jsonl", 10, 6, {"a": 0.5, "b": 0.5})
    rank(task(tmp_path, {"faq": even}, winner="a"))
    verdict = json.loads(report.read_text())["heldOut"]
    assert verdict["ci95Low"] < 0 and verdict["holds"] is False


def test_no_verdict_at_all_fails_naming_the_tasks(tmp_path: Path) -> None:
    empty = tmp_path / "docs.jsonl"
    empty.write_text("")
    with pytest.raises(WorkloadError, match="no verdict on docs"):
        rank(task(tmp_path, {"docs": empty}))
