"""Grafana dashboards as code (grafana-foundation-sdk), generated into the Helm chart by
`crucible dashboards`; a test fails when the committed JSON differs from what this writes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, dashboard, prometheus, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

# The Grafana line these are written for (the SDK's version is pinned to it in pyproject).
GRAFANA_VERSION = "11.6"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
SELECTOR = 'namespace=~"$namespace", evalrun=~"$evalrun"'


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    instant: bool = False


def _target(query: Query, ref: str) -> prometheus.Dataquery:
    target = (
        prometheus.Dataquery()
        .expr(query.expr)
        .legend_format(query.legend or "__auto")
        .ref_id(ref)
        .datasource(DATASOURCE)
    )
    return target.instant() if query.instant else target.range()


def _with_targets(panel: object, queries: list[Query]) -> None:
    for i, query in enumerate(queries):
        panel.with_target(_target(query, chr(ord("A") + i)))  # type: ignore[attr-defined]


def bar(
    title: str,
    description: str,
    queries: list[Query],
    unit: str,
    *,
    w: int = 12,
    maximum: float | None = None,
) -> bargauge.Panel:
    panel = (
        bargauge.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .span(w)
        .height(9)
        .datasource(DATASOURCE)
        .min(0)
    )
    if maximum is not None:
        panel = panel.max(maximum)
    _with_targets(panel, queries)
    return panel


def series(
    title: str, description: str, queries: list[Query], unit: str, w: int = 12
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .span(w)
        .height(9)
        .datasource(DATASOURCE)
    )
    _with_targets(panel, queries)
    return panel


def grid(title: str, description: str, queries: list[Query], w: int = 24) -> table.Panel:
    panel = (
        table.Panel()
        .title(title)
        .description(description)
        .span(w)
        .height(9)
        .datasource(DATASOURCE)
        .decimals(3)
    )
    _with_targets(panel, queries)
    return panel


def _variables(board: dashboard.Dashboard) -> dashboard.Dashboard:
    board = board.with_variable(
        dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
    )
    for name, query in (
        ("namespace", "label_values(crucible_eval_accuracy, namespace)"),
        ("evalrun", 'label_values(crucible_eval_accuracy{namespace=~"$namespace"}, evalrun)'),
    ):
        board = board.with_variable(
            dashboard.QueryVariable(name)
            .label(name.capitalize())
            .query(query)
            .datasource(DATASOURCE)
            .include_all(True)
            .all_value(".*")
            .multi(True)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        )
    return board


def _board(uid: str, title: str, description: str) -> dashboard.Dashboard:
    return _variables(
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["crucible"])
        .refresh("1m")
        .time("now-7d", "now")
        .timezone("browser")
        .editable()
    )


def leaderboard() -> dashboard.Dashboard:
    acc = f"crucible_eval_accuracy{{{SELECTOR}}}"
    row = "max by (evalrun, model, rag, dataset, scoring)"
    pair = "max by (evalrun, a, a_rag, b, b_rag, test)"
    return (
        _board(
            "crucible-leaderboard",
            "Crucible / Eval leaderboard",
            "Accuracy per model, with and without RAG: its 95% interval over questions, the "
            "standard deviation between rounds where rounds vary, and paired tests.",
        )
        .with_panel(
            bar(
                "Accuracy (mean over rounds)",
                "crucible_eval_accuracy per model and RAG setting.",
                [Query(f"max by (model, rag) ({acc})", "{{model}} rag={{rag}}", instant=True)],
                "percentunit",
                maximum=1,
            )
        )
        .with_panel(
            bar(
                "95% interval over questions (width)",
                "crucible_eval_accuracy_ci95_upper minus _lower: the uncertainty of having only "
                "these questions, which deterministic scoring does not remove.",
                [
                    Query(
                        f"max by (model, rag) (crucible_eval_accuracy_ci95_upper{{{SELECTOR}}} "
                        f"- crucible_eval_accuracy_ci95_lower{{{SELECTOR}}})",
                        "{{model}} rag={{rag}}",
                        instant=True,
                    )
                ],
                "percentunit",
            )
        )
        .with_panel(
            grid(
                "Leaderboard",
                "Mean, 95% interval over questions, stddev between rounds (absent when scored "
                "once), length-normalised accuracy (log-likelihood scoring), rounds and "
                "questions of every result; the scoring label says how it was scored.",
                [
                    Query(f"{row} ({acc})", instant=True),
                    *(
                        Query(f"{row} ({metric}{{{SELECTOR}}})", instant=True)
                        for metric in (
                            "crucible_eval_accuracy_ci95_lower",
                            "crucible_eval_accuracy_ci95_upper",
                            "crucible_eval_accuracy_stddev",
                            "crucible_eval_accuracy_norm",
                            "crucible_eval_rounds",
                            "crucible_eval_questions",
                        )
                    ),
                ],
            )
        )
        .with_panel(
            grid(
                "Paired tests over questions",
                "Accuracy of a minus b on the same questions and the p-value of McNemar's "
                "test (or a paired t-test where rounds are averaged): a small p-value says the "
                "difference is real.",
                [
                    Query(f"{pair} (crucible_eval_paired_difference{{{SELECTOR}}})", instant=True),
                    Query(f"{pair} (crucible_eval_paired_p_value{{{SELECTOR}}})", instant=True),
                ],
            )
        )
        .with_panel(
            bar(
                "RAG effect (accuracy with RAG minus without)",
                "Per model, how many points retrieval adds.",
                [
                    Query(
                        f'max by (model) (crucible_eval_accuracy{{{SELECTOR}, rag="true"}}) - '
                        f'max by (model) (crucible_eval_accuracy{{{SELECTOR}, rag="false"}})',
                        "{{model}}",
                        instant=True,
                    )
                ],
                "percentunit",
                w=24,
            )
        )
    )


def accuracy_over_time() -> dashboard.Dashboard:
    return (
        _board(
            "crucible-accuracy-history",
            "Crucible / Accuracy over time",
            "Each model's accuracy across EvalRuns, to spot regressions.",
        )
        .with_panel(
            series(
                "Accuracy per model",
                "Mean accuracy of the latest EvalRuns.",
                [
                    Query(
                        f"max by (model, rag) (crucible_eval_accuracy{{{SELECTOR}}})",
                        "{{model}} rag={{rag}}",
                    )
                ],
                "percentunit",
                w=24,
            )
        )
        .with_panel(
            series(
                "Accuracy with its 95% interval over questions",
                "The bounds of the bootstrap interval over questions, per model and RAG setting.",
                [
                    Query(
                        f"max by (model, rag) (crucible_eval_accuracy_ci95_upper{{{SELECTOR}}})",
                        "{{model}} rag={{rag}} upper",
                    ),
                    Query(
                        f"max by (model, rag) (crucible_eval_accuracy_ci95_lower{{{SELECTOR}}})",
                        "{{model}} rag={{rag}} lower",
                    ),
                ],
                "percentunit",
                w=24,
            )
        )
    )


def judge() -> dashboard.Dashboard:
    namespace = 'namespace=~"$namespace"'
    ranked = "max by (experiment, model, baseline)"
    verdict = "max by (experiment, task, winner, runner_up)"
    return (
        _board(
            "crucible-judge",
            "Crucible / Judge ratings",
            "Bradley-Terry ratings from pairwise LLM-as-judge comparisons: per EvalRun, and "
            "each Experiment's ranking over all its tasks with its held-out verdict.",
        )
        .with_panel(
            bar(
                "Judge rating",
                "crucible_eval_judge_rating per model.",
                [
                    Query(
                        f"max by (model) (crucible_eval_judge_rating{{{SELECTOR}}})",
                        "{{model}}",
                        instant=True,
                    )
                ],
                "none",
                w=24,
            )
        )
        .with_panel(
            grid(
                "Experiment ranking",
                "Each Experiment's models (candidates and baselines) by Bradley-Terry rating "
                "over all its tasks' comparisons, with the bootstrap 95% interval "
                "(crucible_experiment_rating, _ci95_lower, _ci95_upper).",
                [
                    Query(f"{ranked} ({metric}{{{namespace}}})", instant=True)
                    for metric in (
                        "crucible_experiment_rating",
                        "crucible_experiment_rating_ci95_lower",
                        "crucible_experiment_rating_ci95_upper",
                    )
                ],
                w=14,
            )
        )
        .with_panel(
            grid(
                "Held-out verdict",
                "The search winner's rating lead over the best other model on the held-out "
                "task, the lower bound of its 95% interval, and whether it holds (1) or not (0).",
                [
                    Query(f"{verdict} ({metric}{{{namespace}}})", instant=True)
                    for metric in (
                        "crucible_experiment_held_out_lead",
                        "crucible_experiment_held_out_lead_ci95_lower",
                        "crucible_experiment_held_out_holds",
                    )
                ],
                w=10,
            )
        )
    )


def pipeline_health() -> dashboard.Dashboard:
    return (
        _board(
            "crucible-pipeline",
            "Crucible / Pipeline health",
            "Resources by phase, run durations, failures and reconcile errors.",
        )
        .with_panel(
            bar(
                "Resources by phase",
                "crucible_resources.",
                [
                    Query(
                        "sum by (kind, phase) (crucible_resources)",
                        "{{kind}} {{phase}}",
                        instant=True,
                    )
                ],
                "none",
            )
        )
        .with_panel(
            bar(
                "Failed runs",
                "Resources in phase Failed, by kind.",
                [
                    Query(
                        'sum by (kind) (crucible_resources{phase="Failed"})',
                        "{{kind}}",
                        instant=True,
                    )
                ],
                "none",
            )
        )
        .with_panel(
            series(
                "Run duration (p90)",
                "From start to success or failure.",
                [
                    Query(
                        "histogram_quantile(0.9, sum by (le, kind) "
                        "(rate(crucible_job_duration_seconds_bucket[$__rate_interval])))",
                        "{{kind}}",
                    )
                ],
                "s",
            )
        )
        .with_panel(
            series(
                "Reconcile errors",
                "Unexpected errors per second, by kind.",
                [
                    Query(
                        "sum by (kind) (rate(crucible_reconcile_errors_total[$__rate_interval]))",
                        "{{kind}}",
                    )
                ],
                "reqps",
            )
        )
        .with_panel(
            grid(
                "Served models",
                "What each ModelServing serves (the promoted generation of its spec), its "
                "ready replicas, and whether its current spec passed its gate (1) or not (0): "
                "then the model promoted before keeps serving.",
                [
                    Query(
                        "crucible_model_serving_info * on (namespace, modelserving) group_left "
                        "crucible_model_serving_ready_replicas",
                        instant=True,
                    ),
                    Query("crucible_model_serving_gate_holds", instant=True),
                ],
            )
        )
        .with_panel(
            series(
                "Reconcile latency (p99)",
                "One reconcile step.",
                [
                    Query(
                        "histogram_quantile(0.99, sum by (le, kind) (rate("
                        "crucible_reconcile_duration_seconds_bucket[$__rate_interval])))",
                        "{{kind}}",
                    )
                ],
                "s",
                w=24,
            )
        )
    )


DASHBOARDS = {
    "crucible-leaderboard.json": leaderboard,
    "crucible-accuracy-history.json": accuracy_over_time,
    "crucible-judge.json": judge,
    "crucible-pipeline.json": pipeline_health,
}


def render_dashboards() -> dict[str, str]:
    return {
        name: json.dumps(build().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
        for name, build in DASHBOARDS.items()
    }


def write_dashboards(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_dashboards().items():
        (directory / name).write_text(text)
        written.append(directory / name)
    return written
