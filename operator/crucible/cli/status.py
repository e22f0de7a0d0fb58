"""`crucible status` and `crucible leaderboard`: the pipeline's progress, then the results per
model — the figures of the EvalRun status, which /metrics exports too."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from crucible.api import GROUP, VERSION
from crucible.api.common import Phase, RunStatus
from crucible.api.evalrun import EvalRunStatus
from crucible.api.experiment import ExperimentStatus
from crucible.api.finetunejob import FineTuneJobStatus
from crucible.api.kinds import KINDS, KINDS_BY_NAME
from crucible.api.modelserving import ModelServingStatus
from crucible.api.ragindex import RagIndexStatus
from crucible.api.syntheticdataset import SyntheticDatasetStatus

DEV_KUBECONFIG = Path(".dev/cluster/admin.kubeconfig")


def custom_objects(kubeconfig: str | None = None) -> Any:
    """An API client for Crucible's resources, with the operator's credentials: the
    kubeconfig given, $KUBECONFIG, or the one `crucible dev up` wrote."""
    from kubernetes import client

    from crucible.controllers.kube import client_configuration

    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path is None and DEV_KUBECONFIG.exists():
        path = str(DEV_KUBECONFIG)
    return client.CustomObjectsApi(client.ApiClient(client_configuration(path)))


def list_resources(custom: Any, namespace: str) -> list[dict[str, Any]]:
    """Every Crucible resource in the namespace, in the recipe's order."""
    items: list[dict[str, Any]] = []
    for kind in KINDS:
        listed = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, kind.plural)
        items += sorted(listed["items"], key=lambda i: i["metadata"]["creationTimestamp"])
    return items


def typed_status(item: dict[str, Any]) -> RunStatus:
    """A resource's status as its kind's typed model."""
    return KINDS_BY_NAME[item["kind"]].read_status(item)


def _progress(status: RunStatus) -> str:
    if isinstance(status, FineTuneJobStatus) and status.progress is not None:
        p = status.progress
        loss = f" loss {p.loss:.3f}" if p.loss is not None else ""
        return f"step {p.step or 0}/{p.total_steps or '?'}{loss}"
    if isinstance(status, RagIndexStatus) and status.chunks is not None:
        return f"{status.documents or 0} documents, {status.chunks} chunks"
    if isinstance(status, SyntheticDatasetStatus) and status.pairs is not None:
        return f"{status.pairs.kept} pairs kept of {status.pairs.generated}"
    if isinstance(status, EvalRunStatus) and status.best_model and status.best_accuracy is not None:
        return f"best {status.best_model} {status.best_accuracy:.3f}"
    if isinstance(status, EvalRunStatus) and status.servers and status.phase == Phase.RUNNING:
        return f"{len(status.servers)} vLLM servers"
    if isinstance(status, ExperimentStatus) and status.progress is not None:
        leader = f", leader {status.ranking[0].model}" if status.ranking else ""
        tunes = status.progress.fine_tune_jobs
        return (
            f"{status.progress.stage}: {tunes.succeeded + tunes.failed} of "
            f"{sum(tunes.model_dump().values())} fine-tunes done{leader}"
        )
    if isinstance(status, ModelServingStatus) and status.promoted is not None:
        live = status.promoted
        gate = " (gate held)" if live.gate is not None else ""
        return (
            f"{live.served_model_name} gen {live.generation}{gate}, "
            f"{status.ready_replicas or 0}/{status.replicas or 0} ready at {status.url}"
        )
    return status.output_uri or ""


def _table(header: list[str], rows: Iterable[list[str]]) -> str:
    rows = [header, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def status_table(items: list[dict[str, Any]]) -> str:
    """One line per resource: what it is, its phase, why, and how far it got."""
    rows = []
    for item in items:
        status = typed_status(item)
        ready = status.ready()
        rows.append(
            [
                item["kind"],
                item["metadata"]["name"],
                status.phase or "New",
                ready.reason if ready else "",
                _progress(status),
                ready.message[:100] if ready and status.phase != Phase.SUCCEEDED else "",
            ]
        )
    return _table(["KIND", "NAME", "PHASE", "REASON", "PROGRESS", "MESSAGE"], rows)


def leaderboard_table(items: list[dict[str, Any]]) -> str:
    """Per EvalRun and model, best first: mean accuracy with its 95% interval over questions,
    the stddev between rounds (where there are several), how it was scored; then, per EvalRun,
    the paired tests that say whether two results differ for real."""
    rows, pairs = [], []
    for item in items:
        status = typed_status(item)
        if not isinstance(status, EvalRunStatus):
            continue
        name = item["metadata"]["name"]
        for r in sorted(status.results or [], key=lambda r: -r.accuracy_mean):
            rows.append(
                [
                    name,
                    r.model,
                    "yes" if r.rag else "no",
                    r.scoring,
                    f"{r.accuracy_mean:.3f}",
                    f"[{r.ci95_low:.3f}, {r.ci95_high:.3f}]",
                    "-" if r.accuracy_stddev is None else f"{r.accuracy_stddev:.3f}",
                    "-" if r.accuracy_norm is None else f"{r.accuracy_norm:.3f}",
                    str(r.n),
                    str(r.questions),
                    str(r.unparsed),
                ]
            )
        for t in sorted(status.paired_tests or [], key=lambda t: t.p_value):
            pairs.append(
                [
                    name,
                    f"{t.a}{' +RAG' if t.a_rag else ''}",
                    f"{t.b}{' +RAG' if t.b_rag else ''}",
                    f"{t.difference:+.3f}",
                    f"[{t.ci95_low:+.3f}, {t.ci95_high:+.3f}]",
                    t.test,
                    f"{t.p_value:.3g}",
                ]
            )
    experiments = experiment_table(items)
    if not rows:
        return experiments or "no EvalRun has results yet"
    header = [
        "EVALRUN",
        "MODEL",
        "RAG",
        "SCORING",
        "ACCURACY",
        "CI95 (QUESTIONS)",
        "SD (ROUNDS)",
        "ACC_NORM",
        "ROUNDS",
        "QUESTIONS",
        "UNPARSED",
    ]
    table = _table(header, rows)
    if pairs:
        table += "\n\nPaired tests over questions (a minus b; small p: a real difference)\n"
        table += _table(["EVALRUN", "A", "B", "DIFFERENCE", "CI95", "TEST", "P"], pairs)
    return table + (f"\n\n{experiments}" if experiments else "")


def experiment_table(items: list[dict[str, Any]]) -> str:
    """Per Experiment: its models by Bradley-Terry rating over every task, with intervals,
    then whether the winner's lead holds on the held-out task."""
    rows, verdicts = [], []
    for item in items:
        status = typed_status(item)
        if not isinstance(status, ExperimentStatus) or not status.ranking:
            continue
        name = item["metadata"]["name"]
        for place, r in enumerate(status.ranking, start=1):
            rows.append(
                [
                    name,
                    str(place),
                    r.model,
                    "baseline" if r.baseline else "candidate",
                    f"{r.rating:.0f}",
                    f"[{r.ci95_low:.0f}, {r.ci95_high:.0f}]",
                    str(status.comparisons or 0),
                ]
            )
        if (v := status.held_out) is not None:
            verdicts.append(
                [
                    name,
                    v.task,
                    v.winner,
                    v.runner_up,
                    f"{v.rating_difference:+.0f}",
                    f"[{v.ci95_low:+.0f}, {v.ci95_high:+.0f}]",
                    "yes" if v.holds else "no",
                ]
            )
    if not rows:
        return ""
    header = ["EXPERIMENT", "RANK", "MODEL", "KIND", "RATING", "CI95", "COMPARISONS"]
    table = "Experiments: Bradley-Terry over every task's judge comparisons\n"
    table += _table(header, rows)
    if verdicts:
        table += "\n\nHeld-out verdicts (the winner's lead over the best other model)\n"
        table += _table(
            ["EXPERIMENT", "TASK", "WINNER", "RUNNER-UP", "LEAD", "CI95", "HOLDS"], verdicts
        )
    return table
