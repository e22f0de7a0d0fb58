"""Experiment: its children are Crucible runs (a FineTuneJob per candidate and task, an EvalRun
per task) and two ranking Jobs; what it does next is crucible.resources.experiment.decide, from
what exists. The status comes from the watches' view; before creating anything the reconcile
reads its children from the API, since a view that lags could start more than the bound allows.
Children are created with deterministic names and adopted when they exist: a restart at any
moment makes nothing twice and loses nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from crucible.api import API_VERSION
from crucible.api.common import Phase, Reason
from crucible.api.experiment import ExperimentSpec
from crucible.api.kinds import EVAL_RUN, EXPERIMENT, FINE_TUNE_JOB
from crucible.controllers.lifecycle import (
    Context,
    Controller,
    Result,
    create_one,
    final_report,
    live_report,
    status_of,
    timestamp,
)
from crucible.controllers.registry import register
from crucible.resources import experiment
from crucible.resources.common import (
    LABEL_KIND,
    LABEL_NAME,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    child_name,
)
from crucible.resources.status import describe_validation_error

JOBS = (experiment.RANK_JOB, experiment.VERDICT_JOB)


async def observe(ctx: Context, *, fresh: bool) -> experiment.Observed:
    """The experiment's children: from the watches' view, or with `fresh` its child runs read
    from the API. A ranking Job that completed has its final report read as every run's is."""
    ns = ctx.owner.namespace
    if fresh:
        selector = {
            MANAGED_BY_LABEL: MANAGED_BY,
            LABEL_KIND: EXPERIMENT.kind,
            LABEL_NAME: ctx.owner.label,
        }
        runs = [
            *await ctx.kube.list(API_VERSION, FINE_TUNE_JOB.kind, ns, selector),
            *await ctx.kube.list(API_VERSION, EVAL_RUN.kind, ns, selector),
        ]
    else:
        runs = ctx.owned_runs()
    seen = experiment.Observed(runs={r["metadata"]["name"]: r for r in runs})
    for job in JOBS:
        body = ctx.children.get("Job", child_name(ctx.owner.name, job))
        if body is None:
            continue
        seen.jobs[job] = body
        selector = {"job-name": body["metadata"]["name"]}
        seen.pods[job] = list(ctx.children.of_kind("Pod", **selector))
        name = body["metadata"]["name"]
        seen.reports[job] = (
            await final_report(ctx, name, seen.pods[job], selector)
            if _completed(body)
            else live_report(ctx, name)
        )
    return seen


def _completed(job: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Complete" and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


def _remember(ctx: Context, seen: experiment.Observed, created: dict[str, Any]) -> None:
    """Note a child just created in the view the status is derived from."""
    name = created["metadata"]["name"]
    if created["kind"] == "Job":
        seen.jobs[next(j for j in JOBS if child_name(ctx.owner.name, j) == name)] = created
    elif created["kind"] in (FINE_TUNE_JOB.kind, EVAL_RUN.kind):
        seen.runs[name] = created


class ExperimentController(Controller[ExperimentSpec]):
    kind = EXPERIMENT

    async def reconcile(self, ctx: Context) -> Result:
        kept = ctx.current.model_dump(exclude_none=True, exclude={"phase", "conditions"})
        try:
            spec = ExperimentSpec.model_validate(ctx.body.get("spec") or {})
        except ValidationError as error:
            message = describe_validation_error(error)
            return Result(status_of(ctx, Phase.FAILED, Reason.INVALID_SPEC, message, kept))
        seen = await observe(ctx, fresh=False)
        decision = experiment.decide(ctx.owner, spec, seen, ctx.config)
        if decision.create:
            seen = await observe(ctx, fresh=True)
            for manifest in experiment.decide(ctx.owner, spec, seen, ctx.config).create:
                _remember(ctx, seen, await create_one(ctx, manifest))
            decision = experiment.decide(ctx.owner, spec, seen, ctx.config)
        created = [
            timestamp(body["metadata"].get("creationTimestamp"))
            for body in (*seen.runs.values(), *seen.jobs.values())
        ]
        started = ctx.current.start_time or min((c for c in created if c), default=None)
        fields = {
            **kept,
            **{k: v for k, v in decision.fields.items() if v is not None},
            "start_time": started or (datetime.now(UTC) if seen.runs else None),
        }
        return Result(status_of(ctx, decision.phase, decision.reason, decision.message, fields))


register(ExperimentController())
