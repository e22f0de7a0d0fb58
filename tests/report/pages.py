"""What a report page shows, read from its DOM, and what it must show, read from a status:
every figure is a cell marked data-figure (with the model, setting or pair it belongs to in
further data- attributes) whose data-value is the number."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

from crucible.api.evalrun import EvalRunStatus
from crucible.api.experiment import ExperimentStatus

Key = tuple[tuple[str, str], ...]


class _Figures(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: dict[Key, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        marks = {k.removeprefix("data-"): v or "" for k, v in attrs if k.startswith("data-")}
        if "figure" in marks and "value" in marks:
            value = marks.pop("value")
            self.found[tuple(sorted(marks.items()))] = value


def figures(dom: str) -> dict[Key, str]:
    """The page's figures by their marks."""
    parser = _Figures()
    parser.feed(dom)
    return parser.found


def key(figure: str, **marks: Any) -> Key:
    spelled = {
        k.replace("_", "-"): str(v).lower() if isinstance(v, bool) else str(v)
        for k, v in marks.items()
    }
    return tuple(sorted({"figure": figure, **spelled}.items()))


def evalrun_figures(status: EvalRunStatus) -> dict[Key, float]:
    """Every number of an EvalRun's status that its report shows."""
    expected: dict[Key, float] = {}
    for r in status.results or []:
        for figure, value in (
            ("accuracy", r.accuracy_mean),
            ("ci95-low", r.ci95_low),
            ("ci95-high", r.ci95_high),
            ("stddev", r.accuracy_stddev),
            ("accuracy-norm", r.accuracy_norm),
            ("rounds", r.n),
            ("questions", r.questions),
        ):
            if value is not None:
                expected[key(figure, model=r.model, rag=r.rag)] = float(value)
    for t in status.paired_tests or []:
        pair = {"a": t.a, "a_rag": t.a_rag, "b": t.b, "b_rag": t.b_rag}
        expected[key("difference", **pair)] = t.difference
        expected[key("difference-ci95-low", **pair)] = t.ci95_low
        expected[key("difference-ci95-high", **pair)] = t.ci95_high
        expected[key("p-value", **pair)] = t.p_value
    return expected


def experiment_figures(status: ExperimentStatus) -> dict[Key, float]:
    """Every number of an Experiment's status that its report shows (its verdict, held or
    not, is the one word among them)."""
    expected: dict[Key, float] = {}
    for r in status.ranking or []:
        expected[key("rating", model=r.model)] = r.rating
        expected[key("rating-ci95-low", model=r.model)] = r.ci95_low
        expected[key("rating-ci95-high", model=r.model)] = r.ci95_high
    for task in status.task_rankings or []:
        for r in task.ratings:
            expected[key("task-rating", model=r.model, task=task.task)] = r.rating
            expected[key("task-rating-ci95-low", model=r.model, task=task.task)] = r.ci95_low
            expected[key("task-rating-ci95-high", model=r.model, task=task.task)] = r.ci95_high
    verdict = status.held_out
    if verdict is not None:
        for r in verdict.ratings:
            expected[key("held-out-rating", model=r.model)] = r.rating
            expected[key("held-out-rating-ci95-low", model=r.model)] = r.ci95_low
            expected[key("held-out-rating-ci95-high", model=r.model)] = r.ci95_high
        expected[key("held-out-lead")] = verdict.rating_difference
        expected[key("held-out-ci95-low")] = verdict.ci95_low
        expected[key("held-out-ci95-high")] = verdict.ci95_high
    return expected


def numbers(shown: dict[Key, str]) -> dict[Key, float]:
    """The figures that are numbers (all but the held-out verdict's yes or no)."""
    return {k: float(v) for k, v in shown.items() if k != key("held-out-holds")}
