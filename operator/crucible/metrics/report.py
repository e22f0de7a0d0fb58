"""The HTML report of an EvalRun or an Experiment: one self-contained file (its figures inline
SVG drawn by matplotlib, its style inline, nothing fetched), with every figure of the status
also in a table, each number marked with what it is (`data-figure` and its keys) so that a
reader — or a test — can find it.

matplotlib renders to SVG with its text kept as text (svg.fonttype none), so the page needs
no network, no script and no font of its own; the choice over Vega-Lite or plotly, whose
pages need their JavaScript inlined (megabytes) to open offline."""

from __future__ import annotations

import html
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crucible.api.evalrun import EvalRunStatus, JudgeRating, ModelResult, PairedTest
from crucible.api.experiment import ExperimentStatus

REPORT_FILE = "report.html"  # what the eval and rank workloads write beside their results
STYLE = """
body { font-family: "DejaVu Sans", sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td.text { text-align: left; }
.note { color: #555; font-size: 0.9em; max-width: 60em; }
svg { max-width: 100%; height: auto; }
"""


@dataclass(frozen=True)
class Answered:
    """One model's scored answer to one question (a row of the EvalRun's results.jsonl)."""

    model: str
    rag: bool
    question: int
    correct: bool


def _setting(model: str, rag: bool) -> str:
    return f"{model} +RAG" if rag else model


def _mark(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _cell(value: float | int | str | None, figure: str, *, digits: str = ".3f", **keys: Any) -> str:
    """A table cell holding one figure of the status, marked with what it is; data-value
    keeps a float whole, as the status has it."""
    shown = (
        "-" if value is None else f"{value:{digits}}" if isinstance(value, float) else str(value)
    )
    marks = [f'data-figure="{figure}"']
    marks += [f'data-{k.replace("_", "-")}="{html.escape(_mark(v))}"' for k, v in keys.items()]
    if value is not None:
        marks.append(
            f'data-value="{html.escape(repr(value) if isinstance(value, float) else str(value))}"'
        )
    return f"<td {' '.join(marks)}>{html.escape(shown)}</td>"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(f"<tr>{''.join(row)}</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _text(value: str) -> str:
    return f'<td class="text">{html.escape(value)}</td>'


def _svg(figure: Any) -> str:
    import matplotlib.pyplot as plt

    out = io.StringIO()
    figure.savefig(out, format="svg", bbox_inches="tight")
    plt.close(figure)
    text = out.getvalue()
    return text[text.index("<svg") :]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("svg")
    matplotlib.rcParams.update({"svg.fonttype": "none", "font.family": "DejaVu Sans"})
    import matplotlib.pyplot as plt

    return plt


def _interval_plot(
    labels: Sequence[str],
    values: Sequence[float],
    lows: Sequence[float],
    highs: Sequence[float],
    xlabel: str,
    *,
    reference: float | None = None,
    notes: Sequence[str] = (),
) -> str:
    """Points with their 95% intervals, one row each (a forest plot)."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(8, 0.45 * len(labels) + 1.0))
    rows = list(range(len(labels)))[::-1]
    # The interval as a line and the point on it: a bootstrap interval need not hold the point
    # estimate (a skewed rating's may not), which error bars cannot draw.
    axes.hlines(rows, lows, highs, color="#2b6cb0", linewidth=2)
    axes.plot(values, rows, "o", color="#2b6cb0")
    if reference is not None:
        axes.axvline(reference, color="#999", linewidth=1, linestyle="--")
    axes.set_yticks(rows, labels)
    axes.set_xlabel(xlabel)
    for row, note in zip(rows, notes, strict=False):
        axes.annotate(note, (1.01, row), xycoords=("axes fraction", "data"), va="center")
    axes.grid(axis="x", color="#eee")
    return _svg(figure)


def _grid_plot(
    settings: Sequence[str], questions: Sequence[int], right: set[tuple[str, int]]
) -> str:
    """Which setting (model, with or without RAG) answered which question right."""
    plt = _pyplot()
    figure, axes = plt.subplots(
        figsize=(min(14, 2 + 0.22 * len(questions)), 0.4 * len(settings) + 1)
    )
    matrix = [[1 if (s, q) in right else 0 for q in questions] for s in settings]
    axes.imshow(matrix, cmap="Greens", vmin=0, vmax=1.4, aspect="auto")
    axes.set_yticks(range(len(settings)), settings)
    step = max(1, len(questions) // 20)
    axes.set_xticks(range(0, len(questions), step), [str(q) for q in questions[::step]])
    axes.set_xlabel("question")
    return _svg(figure)


def _page(title: str, sections: Iterable[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{''.join(sections)}</body></html>\n"
    )


def _accuracy_section(results: Sequence[ModelResult]) -> str:
    ordered = sorted(results, key=lambda r: (-r.accuracy_mean, r.model, not r.rag))
    plot = _interval_plot(
        [_setting(r.model, r.rag) for r in ordered],
        [r.accuracy_mean for r in ordered],
        [r.ci95_low for r in ordered],
        [r.ci95_high for r in ordered],
        "accuracy (95% interval over questions)",
        notes=[
            f"sd {r.accuracy_stddev:.3f} over {r.n} rounds" if r.accuracy_stddev is not None else ""
            for r in ordered
        ],
    )
    rows = [
        [
            _text(_setting(r.model, r.rag)),
            _text(r.scoring),
            _cell(r.accuracy_mean, "accuracy", model=r.model, rag=r.rag),
            _cell(r.ci95_low, "ci95-low", model=r.model, rag=r.rag),
            _cell(r.ci95_high, "ci95-high", model=r.model, rag=r.rag),
            _cell(r.accuracy_stddev, "stddev", model=r.model, rag=r.rag),
            _cell(r.accuracy_norm, "accuracy-norm", model=r.model, rag=r.rag),
            _cell(r.n, "rounds", model=r.model, rag=r.rag),
            _cell(r.questions, "questions", model=r.model, rag=r.rag),
        ]
        for r in ordered
    ]
    header = ["model", "scoring", "accuracy", "CI95 low", "CI95 high", "SD (rounds)", "acc_norm"]
    return (
        "<h2>Accuracy</h2>"
        '<p class="note">Mean accuracy per model, with and without retrieved context; the '
        "bar is a 95% bootstrap interval over questions; SD is the standard deviation between "
        "rounds, where there are several (log-likelihood scoring is deterministic: one round)."
        f"</p>{plot}{_table([*header, 'rounds', 'questions'], rows)}"
    )


def _paired_section(tests: Sequence[PairedTest]) -> str:
    if not tests:
        return ""
    plot = _interval_plot(
        [f"{_setting(t.a, t.a_rag)} - {_setting(t.b, t.b_rag)}" for t in tests],
        [t.difference for t in tests],
        [t.ci95_low for t in tests],
        [t.ci95_high for t in tests],
        "difference in accuracy (95% paired interval)",
        reference=0.0,
        notes=[f"{t.test} p = {t.p_value:.3g}" for t in tests],
    )
    rows = [
        [
            _text(_setting(t.a, t.a_rag)),
            _text(_setting(t.b, t.b_rag)),
            _cell(t.difference, "difference", **_pair(t)),
            _cell(t.ci95_low, "difference-ci95-low", **_pair(t)),
            _cell(t.ci95_high, "difference-ci95-high", **_pair(t)),
            _text(t.test),
            _cell(t.p_value, "p-value", digits=".3g", **_pair(t)),
        ]
        for t in tests
    ]
    return (
        "<h2>Paired differences</h2>"
        '<p class="note">Each pair of results on the same questions: the difference of their '
        "accuracies with its paired bootstrap interval, and the paired test's p-value "
        "(McNemar's where each question is scored once). An interval that excludes 0 is a "
        f"difference the questions support.</p>{plot}"
        f"{_table(['a', 'b', 'a - b', 'CI95 low', 'CI95 high', 'test', 'p'], rows)}"
    )


def _pair(test: PairedTest) -> dict[str, Any]:
    return {"a": test.a, "a_rag": test.a_rag, "b": test.b, "b_rag": test.b_rag}


def _grid_section(answers: Sequence[Answered] | None, results: Sequence[ModelResult]) -> str:
    if not answers:
        return (
            '<h2>Per question</h2><p class="note">The answers are in the model store '
            "(results.jsonl beside the summary); the report the eval workload wrote there has "
            "this grid.</p>"
        )
    settings = [_setting(r.model, r.rag) for r in results]
    questions = sorted({a.question for a in answers})
    right = {(_setting(a.model, a.rag), a.question) for a in answers if a.correct}
    return (
        "<h2>Per question</h2>"
        '<p class="note">Which model got which question right (dark: right).</p>'
        f"{_grid_plot(settings, questions, right)}"
    )


def _ratings_section(title: str, ratings: Sequence[JudgeRating], figure: str, **keys: Any) -> str:
    plot = _interval_plot(
        [r.model for r in ratings],
        [r.rating for r in ratings],
        [r.ci95_low for r in ratings],
        [r.ci95_high for r in ratings],
        "Bradley-Terry rating (95% bootstrap interval)",
        reference=1000.0,
    )
    rows = [
        [
            _text(r.model),
            _cell(r.rating, figure, model=r.model, **keys),
            _cell(r.ci95_low, f"{figure}-ci95-low", model=r.model, **keys),
            _cell(r.ci95_high, f"{figure}-ci95-high", model=r.model, **keys),
        ]
        for r in ratings
    ]
    table = _table(["model", "rating", "CI95 low", "CI95 high"], rows)
    return f"<h2>{html.escape(title)}</h2>{plot}{table}"


def _lineage_section(lineage: Mapping[str, str]) -> str:
    if not lineage:
        return ""
    rows = [[_text(model), _text(made)] for model, made in lineage.items()]
    return (
        "<h2>Lineage</h2>"
        '<p class="note">What each model is, from the statuses of the runs that made it.</p>'
        f"{_table(['model', 'made from'], rows)}"
    )


def evalrun_report(
    name: str,
    namespace: str,
    status: EvalRunStatus,
    *,
    answers: Sequence[Answered] | None = None,
    lineage: Mapping[str, str] | None = None,
) -> str:
    """The page of an EvalRun's results (its status; the grid from `answers`, when given)."""
    results = status.results or []
    sections = [
        f'<p class="note">EvalRun {html.escape(namespace)}/{html.escape(name)}, '
        f"{html.escape(str(status.phase))}; results in "
        f"{html.escape(status.results_uri or '-')}</p>",
        _accuracy_section(results) if results else "<p>No results yet.</p>",
        _paired_section(status.paired_tests or []),
        _grid_section(answers, results) if results else "",
    ]
    if status.judge_ratings:
        sections.append(_ratings_section("Judge ratings", status.judge_ratings, "judge-rating"))
    sections.append(_lineage_section(lineage or {}))
    return _page(f"EvalRun {name}", sections)


def experiment_report(
    name: str, namespace: str, status: ExperimentStatus, *, lineage: Mapping[str, str] | None = None
) -> str:
    """The page of an Experiment: its ratings overall and per task, and the held-out verdict."""
    sections = [
        f'<p class="note">Experiment {html.escape(namespace)}/{html.escape(name)}, '
        f"{html.escape(str(status.phase))}; {status.comparisons or 0} comparisons ranked.</p>"
    ]
    if status.ranking:
        overall = [
            JudgeRating(model=r.model, rating=r.rating, ci95_low=r.ci95_low, ci95_high=r.ci95_high)
            for r in status.ranking
        ]
        sections.append(_ratings_section("Ranking over every task", overall, "rating"))
    for task in status.task_rankings or []:
        sections.append(
            _ratings_section(f"Task {task.task}", task.ratings, "task-rating", task=task.task)
        )
    verdict = status.held_out
    if verdict is not None:
        plot = _interval_plot(
            [f"{verdict.winner} - {verdict.runner_up}"],
            [verdict.rating_difference],
            [verdict.ci95_low],
            [verdict.ci95_high],
            "rating lead on the held-out task (95% bootstrap interval)",
            reference=0.0,
        )
        row = [
            _text(verdict.task),
            _text(verdict.winner),
            _text(verdict.runner_up),
            _cell(verdict.rating_difference, "held-out-lead"),
            _cell(verdict.ci95_low, "held-out-ci95-low"),
            _cell(verdict.ci95_high, "held-out-ci95-high"),
            _cell("yes" if verdict.holds else "no", "held-out-holds"),
        ]
        sections.append(
            _ratings_section(f"Held-out task {verdict.task}", verdict.ratings, "held-out-rating")
        )
        sections.append(
            "<h2>Held-out verdict</h2>"
            + plot
            + _table(
                ["task", "winner", "runner-up", "lead", "CI95 low", "CI95 high", "holds"], [row]
            )
        )
    sections.append(_lineage_section(lineage or {}))
    return _page(f"Experiment {name}", sections)


def _made_from(
    source: Mapping[str, Any],
    resources: Mapping[tuple[str, str], Mapping[str, Any]],
    depth: int = 0,
) -> str:
    """A model source in words, down to the stored models it was made from."""
    if source.get("uri"):
        return str(source["uri"])
    if source.get("endpoint"):
        endpoint = source["endpoint"]
        return f"endpoint {endpoint.get('url')} ({endpoint.get('model')})"
    ref = source.get("modelRef") or {}
    kind, name = ref.get("kind", "?"), ref.get("name", "?")
    found = resources.get((kind, name))
    if found is None or depth > 8:
        return f"{kind} {name}"
    spec = found.get("spec") or {}
    if kind == "ModelMerge":
        inputs = [m for m in [spec.get("baseModel"), *spec.get("models", [])] if m]
        made = ", ".join(_made_from(m, resources, depth + 1) for m in inputs)
        return f"ModelMerge {name} ({spec.get('method')} of {made})"
    base = _made_from(spec.get("baseModel") or {}, resources, depth + 1)
    return f"FineTuneJob {name} ({spec.get('method', 'sft')} of {base})"


def lineage(
    models: Iterable[Mapping[str, Any]], resources: Iterable[Mapping[str, Any]]
) -> dict[str, str]:
    """Each model of an EvalRun (its spec.models) in words: what it was made from, through the
    ModelMerges and FineTuneJobs of the namespace."""
    by_name = {(r["kind"], r["metadata"]["name"]): r for r in resources}
    return {m["name"]: _made_from(m, by_name) for m in models}
