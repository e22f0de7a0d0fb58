"""Prometheus metrics of the operator.

Eval results and resources-by-phase are derived at scrape time from the last status the
operator saw of every resource (`RunStatusCollector`): they are rebuilt after a restart as the
reconcile daemons resume, and a deleted resource's series go with it. Reconcile counts and
latencies and Job durations are ordinary counters and histograms.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from crucible.api.common import Phase, RunStatus
from crucible.api.evalrun import EvalRunStatus, ModelResult
from crucible.api.experiment import ExperimentStatus
from crucible.api.kinds import KINDS, KINDS_BY_NAME
from crucible.api.modelserving import ModelServingStatus

EVAL_LABELS = ("namespace", "evalrun", "model", "dataset", "rag", "scoring")

RECONCILES = Counter(
    "crucible_reconcile_total", "Reconcile steps, by kind and result.", ("kind", "result")
)
RECONCILE_ERRORS = Counter(
    "crucible_reconcile_errors_total",
    "Reconcile steps that raised an unexpected error (retried).",
    ("kind",),
)
RECONCILE_SECONDS = Histogram(
    "crucible_reconcile_duration_seconds",
    "Time one reconcile step takes.",
    ("kind",),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
REPORT_REQUESTS = Counter(
    "crucible_report_requests_total",
    "Reports workloads pushed to the report endpoint, by the HTTP status code of the answer "
    "(202 taken; 401, 403 refused; 429 too often).",
    ("code",),
)
KUBE_REQUESTS = Counter(
    "crucible_kube_requests_total",
    "Requests the reconcilers sent to the Kubernetes API (watches excluded), by verb and "
    "HTTP status code.",
    ("verb", "code"),
)
QUEUE_DEPTH = Gauge(
    "crucible_reconcile_queue_depth", "Resources waiting in the work queue for a reconcile."
)
JOB_SECONDS = Histogram(
    "crucible_job_duration_seconds",
    "Wall time of runs from start to success or failure, by kind and outcome.",
    ("kind", "phase"),
    buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400),
)


# Series of every kind exist from the start (at 0), so rate() over them is defined.
for _kind in KINDS:
    RECONCILE_ERRORS.labels(_kind.kind)


def dataset_label(spec: Mapping[str, Any]) -> str:
    """A short, stable name for an EvalRun's question set (its prompt set where it has no
    multiple-choice questions)."""
    dataset = spec.get("dataset") or spec.get("prompts") or {}
    if "configMap" in dataset:
        return f"configmap/{dataset['configMap']['name']}/{dataset['configMap']['key']}"
    if "pvc" in dataset:
        return f"pvc/{dataset['pvc']['claimName']}/{dataset['pvc'].get('path', '')}"
    return str(dataset.get("uri", ""))


RunKey = tuple[str, str, str]  # kind, namespace, name
Observed = tuple[Mapping[str, Any], RunStatus]  # the spec as written, the typed status


class RunStatusCollector(Collector):
    """Holds the last seen spec and status of every resource; renders gauges from them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[RunKey, Observed] = {}
        # A standby replica (leader election) exports none of these: one series per run.
        self.active = True

    def observe(self, kind: str, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        typed = KINDS_BY_NAME[kind].read_status(body)
        with self._lock:
            self._runs[(kind, meta["namespace"], meta["name"])] = (body.get("spec") or {}, typed)

    def forget(self, kind: str, namespace: str, name: str) -> None:
        with self._lock:
            self._runs.pop((kind, namespace, name), None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            runs = dict(self._runs) if self.active else {}
        by_phase = GaugeMetricFamily(
            "crucible_resources", "Crucible resources by kind and phase.", labels=("kind", "phase")
        )
        counts: dict[tuple[str, str], int] = {}
        for (kind, _, _), (_, status) in runs.items():
            key = (kind, status.phase or Phase.PENDING.value)
            counts[key] = counts.get(key, 0) + 1
        for (kind, phase), count in sorted(counts.items()):
            by_phase.add_metric([kind, phase], count)
        yield by_phase
        evals = {
            (namespace, name): (spec, status)
            for (kind, namespace, name), (spec, status) in runs.items()
            if isinstance(status, EvalRunStatus)
        }
        yield from self._eval_families(evals)
        yield from self._trend_families(evals)
        yield from self._experiment_families(
            {
                (namespace, name): status
                for (_, namespace, name), (_, status) in runs.items()
                if isinstance(status, ExperimentStatus)
            }
        )
        yield from self._serving_families(
            {
                (namespace, name): status
                for (_, namespace, name), (_, status) in runs.items()
                if isinstance(status, ModelServingStatus)
            }
        )

    @staticmethod
    def _serving_families(
        servings: dict[tuple[str, str], ModelServingStatus],
    ) -> Iterator[GaugeMetricFamily]:
        """Which model each ModelServing serves, since when, how ready, and the gate figures
        it was promoted on; whether the current spec passed its gate."""
        live_labels = ("namespace", "modelserving", "model", "model_uri", "generation")
        live = GaugeMetricFamily(
            "crucible_model_serving_info",
            "1 for the model a ModelServing serves (the promoted generation of its spec).",
            labels=live_labels,
        )
        since = GaugeMetricFamily(
            "crucible_model_serving_promoted_timestamp_seconds",
            "When the model served was promoted (Unix time).",
            labels=live_labels,
        )
        ready = GaugeMetricFamily(
            "crucible_model_serving_ready_replicas",
            "Replicas of the served model that are ready.",
            labels=("namespace", "modelserving"),
        )
        figure = GaugeMetricFamily(
            "crucible_model_serving_promoted_gate_value",
            "The figures the served model's gate compared when it was promoted.",
            labels=("namespace", "modelserving", "evalrun", "rule", "figure"),
        )
        holds = GaugeMetricFamily(
            "crucible_model_serving_gate_holds",
            "1 when the current spec passed its gate, else 0 (then the model promoted before "
            "keeps serving).",
            labels=("namespace", "modelserving", "evalrun", "generation"),
        )
        for (namespace, name), status in sorted(servings.items()):
            if (promoted := status.promoted) is not None:
                values = [
                    namespace,
                    name,
                    promoted.served_model_name,
                    promoted.model_uri,
                    str(promoted.generation),
                ]
                live.add_metric(values, 1.0)
                since.add_metric(values, promoted.promoted_at.timestamp())
                ready.add_metric([namespace, name], status.ready_replicas or 0)
                gate = promoted.gate
                for i, check in enumerate(gate.checks if gate else []):
                    for key, value in sorted(check.values.items()):
                        labels = [namespace, name, gate.eval_run if gate else "", f"rules[{i}]"]
                        figure.add_metric([*labels, key], value)
            if (verdict := status.gate) is not None:
                holds.add_metric(
                    [namespace, name, verdict.eval_run, str(verdict.generation)],
                    1.0 if verdict.holds else 0.0,
                )
        yield from (live, since, ready, figure, holds)

    @staticmethod
    def _experiment_families(
        experiments: dict[tuple[str, str], ExperimentStatus],
    ) -> Iterator[GaugeMetricFamily]:
        """Each Experiment's overall ranking and its held-out verdict."""
        labels = ("namespace", "experiment", "model", "baseline")
        rating = GaugeMetricFamily(
            "crucible_experiment_rating",
            "Bradley-Terry rating over all tasks' judge comparisons (candidates and baselines).",
            labels=labels,
        )
        low = GaugeMetricFamily(
            "crucible_experiment_rating_ci95_lower",
            "Lower bound of the bootstrap 95% interval of the rating.",
            labels=labels,
        )
        high = GaugeMetricFamily(
            "crucible_experiment_rating_ci95_upper",
            "Upper bound of the bootstrap 95% interval of the rating.",
            labels=labels,
        )
        comparisons = GaugeMetricFamily(
            "crucible_experiment_comparisons",
            "Judge verdicts the overall ranking is fitted to.",
            labels=("namespace", "experiment"),
        )
        verdict_labels = ("namespace", "experiment", "task", "winner", "runner_up")
        lead = GaugeMetricFamily(
            "crucible_experiment_held_out_lead",
            "The search winner's rating minus the runner-up's on the held-out task.",
            labels=verdict_labels,
        )
        lead_low = GaugeMetricFamily(
            "crucible_experiment_held_out_lead_ci95_lower",
            "Lower bound of the bootstrap 95% interval of that lead (above 0: it holds).",
            labels=verdict_labels,
        )
        holds = GaugeMetricFamily(
            "crucible_experiment_held_out_holds",
            "1 when the winner's lead holds on the held-out task, else 0.",
            labels=verdict_labels,
        )
        for (namespace, name), status in sorted(experiments.items()):
            for ranked in status.ranking or []:
                values = [namespace, name, ranked.model, _flag(ranked.baseline)]
                rating.add_metric(values, ranked.rating)
                low.add_metric(values, ranked.ci95_low)
                high.add_metric(values, ranked.ci95_high)
            if status.comparisons is not None:
                comparisons.add_metric([namespace, name], status.comparisons)
            verdict = status.held_out
            if verdict is not None:
                values = [namespace, name, verdict.task, verdict.winner, verdict.runner_up]
                lead.add_metric(values, verdict.rating_difference)
                lead_low.add_metric(values, verdict.ci95_low)
                holds.add_metric(values, 1.0 if verdict.holds else 0.0)
        yield from (rating, low, high, comparisons, lead, lead_low, holds)

    @staticmethod
    def _eval_families(
        evals: dict[tuple[str, str], tuple[Mapping[str, Any], EvalRunStatus]],
    ) -> Iterator[GaugeMetricFamily]:
        def family(name: str, text: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, text, labels=(*EVAL_LABELS, *extra))

        accuracy = family("crucible_eval_accuracy", "Mean accuracy over rounds, in [0, 1].")
        stddev = family(
            "crucible_eval_accuracy_stddev",
            "Sample standard deviation between rounds (absent with a single round).",
        )
        low = family(
            "crucible_eval_accuracy_ci95_lower",
            "Lower bound of the bootstrap 95% interval of the accuracy over questions.",
        )
        high = family(
            "crucible_eval_accuracy_ci95_upper",
            "Upper bound of the bootstrap 95% interval of the accuracy over questions.",
        )
        norm = family(
            "crucible_eval_accuracy_norm",
            "Length-normalised accuracy (log-likelihood scoring only).",
        )
        rounds = family("crucible_eval_rounds", "Rounds the accuracy is computed over (n).")
        questions = family("crucible_eval_questions", "Questions per round.")
        per_round = family("crucible_eval_round_accuracy", "Accuracy of one round.", ("round",))
        pair_labels = ("namespace", "evalrun", "dataset", "a", "a_rag", "b", "b_rag", "test")
        difference = GaugeMetricFamily(
            "crucible_eval_paired_difference",
            "Accuracy of result a minus result b on the same questions.",
            labels=pair_labels,
        )
        p_value = GaugeMetricFamily(
            "crucible_eval_paired_p_value",
            "Two-sided p-value of the paired test over questions between results a and b.",
            labels=pair_labels,
        )
        rating = GaugeMetricFamily(
            "crucible_eval_judge_rating",
            "Bradley-Terry rating from the LLM judge.",
            labels=("namespace", "evalrun", "model", "dataset"),
        )
        for (namespace, name), (spec, status) in sorted(evals.items()):
            dataset = dataset_label(spec)
            for result in status.results or []:
                labels = [namespace, name, result.model, dataset, _flag(result.rag), result.scoring]
                accuracy.add_metric(labels, result.accuracy_mean)
                if result.accuracy_stddev is not None:
                    stddev.add_metric(labels, result.accuracy_stddev)
                low.add_metric(labels, result.ci95_low)
                high.add_metric(labels, result.ci95_high)
                if result.accuracy_norm is not None:
                    norm.add_metric(labels, result.accuracy_norm)
                rounds.add_metric(labels, result.n)
                questions.add_metric(labels, result.questions)
                for i, score in enumerate(result.rounds):
                    per_round.add_metric([*labels, str(i + 1)], score)
            for pair in status.paired_tests or []:
                pair_values = [
                    namespace,
                    name,
                    dataset,
                    pair.a,
                    _flag(pair.a_rag),
                    pair.b,
                    _flag(pair.b_rag),
                    pair.test,
                ]
                difference.add_metric(pair_values, pair.difference)
                p_value.add_metric(pair_values, pair.p_value)
            for judged in status.judge_ratings or []:
                rating.add_metric([namespace, name, judged.model, dataset], judged.rating)
        yield from (accuracy, stddev, low, high, norm, rounds, questions, per_round)
        yield from (difference, p_value, rating)

    @staticmethod
    def _trend_families(
        evals: dict[tuple[str, str], tuple[Mapping[str, Any], EvalRunStatus]],
    ) -> Iterator[GaugeMetricFamily]:
        """Latest versus previous finished EvalRun of each model, dataset and RAG setting."""
        history: dict[tuple[str, str, str, str], list[tuple[datetime, ModelResult]]] = {}
        for (namespace, _), (spec, status) in evals.items():
            if status.completion_time is None:
                continue
            for result in status.results or []:
                key = (namespace, result.model, dataset_label(spec), _flag(result.rag))
                history.setdefault(key, []).append((status.completion_time, result))
        labels = ("namespace", "model", "dataset", "rag")
        delta = GaugeMetricFamily(
            "crucible_eval_accuracy_delta",
            "Mean accuracy of the latest EvalRun minus the previous one.",
            labels=labels,
        )
        previous_stddev = GaugeMetricFamily(
            "crucible_eval_accuracy_previous_stddev",
            "Standard deviation of the previous EvalRun's accuracy.",
            labels=labels,
        )
        for key, entries in sorted(history.items()):
            if len(entries) < 2:
                continue
            entries.sort(key=lambda entry: entry[0])
            (_, before), (_, latest) = entries[-2], entries[-1]
            delta.add_metric(list(key), latest.accuracy_mean - before.accuracy_mean)
            if before.accuracy_stddev is not None:
                previous_stddev.add_metric(list(key), before.accuracy_stddev)
        yield from (delta, previous_stddev)


def _flag(value: bool) -> str:
    return "true" if value else "false"


def register_collector(registry: CollectorRegistry = REGISTRY) -> RunStatusCollector:
    collector = RunStatusCollector()
    registry.register(collector)
    return collector


RUNS = register_collector()
