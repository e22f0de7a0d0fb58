"""The pure parts of the local tools: the tables of `crucible status` and `crucible
leaderboard`."""

from __future__ import annotations

from typing import Any

from crucible.cli.status import leaderboard_table, status_table


def resource(kind: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
    """A resource as the API server holds it: conditions complete, as the schema requires."""
    for condition in status.get("conditions") or []:
        condition.setdefault("status", "True" if status.get("phase") == "Succeeded" else "False")
        condition.setdefault("lastTransitionTime", "2026-11-22T10:00:00Z")
    return {"kind": kind, "metadata": {"name": name}, "status": status}


def result(model: str, rag: bool, mean: float) -> dict[str, Any]:
    return {
        "model": model,
        "rag": rag,
        "n": 5,
        "questions": 10,
        "accuracyMean": mean,
        "accuracyStddev": 0.0447,
        "ci95Low": mean - 0.0554,
        "ci95High": mean + 0.0554,
        "rounds": [mean] * 5,
        "unparsed": 3,
    }


def test_status_table_shows_phase_reason_and_progress() -> None:
    table = status_table(
        [
            resource(
                "FineTuneJob",
                "sft",
                {
                    "phase": "Running",
                    "progress": {"step": 4, "totalSteps": 10, "loss": 2.5},
                    "conditions": [
                        {"type": "Ready", "reason": "JobRunning", "message": "Job sft is running"}
                    ],
                },
            ),
            resource(
                "EvalRun",
                "eval",
                {
                    "phase": "Waiting",
                    "conditions": [
                        {
                            "type": "Ready",
                            "reason": "WaitingForDependency",
                            "message": "waiting for FineTuneJob 'sft'",
                        }
                    ],
                },
            ),
            resource("RagIndex", "docs", {}),
        ]
    ).splitlines()
    assert table[0].split() == ["KIND", "NAME", "PHASE", "REASON", "PROGRESS", "MESSAGE"]
    assert table[1].split()[:7] == [
        "FineTuneJob", "sft", "Running", "JobRunning", "step", "4/10", "loss",
    ]  # fmt: skip
    assert "2.500" in table[1] and table[1].endswith("Job sft is running")
    assert table[2].split()[:4] == ["EvalRun", "eval", "Waiting", "WaitingForDependency"]
    assert table[3].split() == ["RagIndex", "docs", "New"]


def test_leaderboard_lists_each_model_and_rag_setting_best_first() -> None:
    scored_once = {
        **result("tuned", True, 0.5),
        "scoring": "LogLikelihood",
        "n": 1,
        "accuracyStddev": None,
        "accuracyNorm": 0.6,
        "rounds": [0.5],
        "unparsed": 0,
    }
    evalrun = resource(
        "EvalRun",
        "bench",
        {
            "results": [result("merged", True, 0.3), scored_once, result("tuned", False, 0.4)],
            "pairedTests": [
                {"a": "tuned", "aRag": True, "b": "tuned", "bRag": False, "difference": 0.1,
                 "ci95Low": -0.05, "ci95High": 0.25, "test": "McNemar", "pValue": 0.29},
                {"a": "tuned", "aRag": True, "b": "merged", "bRag": True, "difference": 0.2,
                 "ci95Low": 0.05, "ci95High": 0.35, "test": "McNemar", "pValue": 0.0123},
            ],
        },
    )  # fmt: skip
    table = leaderboard_table([evalrun, resource("RagIndex", "docs", {})])
    rows = table.splitlines()
    assert rows[0].split() == [
        "EVALRUN", "MODEL", "RAG", "SCORING", "ACCURACY", "CI95", "(QUESTIONS)", "SD",
        "(ROUNDS)", "ACC_NORM", "ROUNDS", "QUESTIONS", "UNPARSED",
    ]  # fmt: skip
    assert [r.split()[:4] for r in rows[1:4]] == [
        ["bench", "tuned", "yes", "LogLikelihood"],
        ["bench", "tuned", "no", "Generation"],
        ["bench", "merged", "yes", "Generation"],
    ]
    # Scored once: no stddev between rounds is claimed, the interval over questions is.
    assert rows[1].split()[4:] == ["0.500", "[0.445,", "0.555]", "-", "0.600", "1", "10", "0"]
    assert rows[2].split()[4:] == ["0.400", "[0.345,", "0.455]", "0.045", "-", "5", "10", "3"]
    # The paired tests follow, the most significant first.
    pairs = table.split("Paired tests over questions")[1].splitlines()[1:]
    assert pairs[0].split() == ["EVALRUN", "A", "B", "DIFFERENCE", "CI95", "TEST", "P"]
    assert pairs[1].split() == [
        "bench", "tuned", "+RAG", "merged", "+RAG", "+0.200", "[+0.050,", "+0.350]", "McNemar",
        "0.0123",
    ]  # fmt: skip
    assert pairs[2].split()[:4] == ["bench", "tuned", "+RAG", "tuned"]
    assert leaderboard_table([]) == "no EvalRun has results yet"


def test_the_leaderboard_shows_an_experiments_ranking_and_verdict() -> None:
    ranking = [
        {"model": "b", "baseline": False, "rating": 1080.4, "ci95Low": 1040.0, "ci95High": 1121.0},
        {"model": "gpt", "baseline": True, "rating": 919.6, "ci95Low": 879.0, "ci95High": 960.0},
    ]
    verdict = {
        "task": "faq",
        "winner": "b",
        "runnerUp": "gpt",
        "ratingDifference": 90.0,
        "ci95Low": -12.0,
        "ci95High": 160.0,
        "comparisons": 12,
        "holds": False,
        "ratings": [],
    }
    search = resource(
        "Experiment",
        "search",
        {"phase": "Succeeded", "ranking": ranking, "comparisons": 240, "heldOut": verdict},
    )
    lines = leaderboard_table([search]).splitlines()
    assert lines[1].split() == [
        "EXPERIMENT",
        "RANK",
        "MODEL",
        "KIND",
        "RATING",
        "CI95",
        "COMPARISONS",
    ]
    assert lines[2].split() == ["search", "1", "b", "candidate", "1080", "[1040,", "1121]", "240"]
    assert lines[3].split()[:4] == ["search", "2", "gpt", "baseline"]
    assert lines[-1].split() == ["search", "faq", "b", "gpt", "+90", "[-12,", "+160]", "no"]
