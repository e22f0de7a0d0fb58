"""Experiment → its children: a FineTuneJob per (candidate, task), an EvalRun per task over
that task's fine-tunes and the baselines, and the ranking Jobs (crucible.workloads.rank)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TypeVar

from crucible.api import API_VERSION
from crucible.api.common import TERMINAL_PHASES, ModelSource, Phase, Reason, RunStatus
from crucible.api.contract import JudgedTask, RankTask, WorkloadReport
from crucible.api.evalrun import EvalRunSpec, EvalRunStatus
from crucible.api.experiment import (
    Candidate,
    ChildCounts,
    ChildFailure,
    ExperimentProgress,
    ExperimentSpec,
    ExperimentTask,
    TaskRanking,
)
from crucible.api.finetunejob import FineTuneJobSpec
from crucible.api.kinds import EVAL_RUN, FINE_TUNE_JOB, KINDS_BY_NAME, Kind
from crucible.config import OperatorConfig
from crucible.resources.common import (
    Owner,
    Workload,
    child_name,
    metadata,
    store_path,
    task_fields,
    workload_children,
    workload_command,
)
from crucible.resources.jobs import Outcome, job_outcome

StatusT = TypeVar("StatusT", bound=RunStatus)

FINE_TUNE_ROLE = "fine-tune"
EVALUATION_ROLE = "evaluation"
RANK_JOB = "rank"  # the search's ranking
VERDICT_JOB = "verdict"  # the held-out task's verdict
JUDGEMENTS_FILE = "judgements.jsonl"  # what an EvalRun's judge wrote (workloads.evaluate)


def fine_tune_name(owner: Owner, candidate: str, task: str) -> str:
    """A FineTuneJob's name, short enough for that kind's own children."""
    return child_name(owner.name, f"{candidate}-{task}", FINE_TUNE_JOB.children.max_name)


def eval_run_name(owner: Owner, task: str) -> str:
    """An EvalRun's name, short enough for that kind's own children."""
    return child_name(owner.name, task, EVAL_RUN.children.max_name)


def _run(owner: Owner, kind: str, name: str, role: str, spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": metadata(owner, name, role),
        "spec": spec.to_api(),
    }


def fine_tune(
    owner: Owner, spec: ExperimentSpec, candidate: Candidate, task: ExperimentTask
) -> dict[str, Any]:
    """The candidate's FineTuneJob on the task, from the spec's template."""
    template = spec.fine_tune
    tune = FineTuneJobSpec(
        base_model=ModelSource(uri=candidate.uri, model_ref=candidate.model_ref),
        method=template.method,
        dataset=task.dataset,
        lora=template.lora,
        hyperparameters=template.hyperparameters,
        merge_adapter=template.merge_adapter,
        resources=template.resources,
    )
    name = fine_tune_name(owner, candidate.name, task.name)
    return _run(owner, FINE_TUNE_JOB.kind, name, FINE_TUNE_ROLE, tune)


def evaluation(
    owner: Owner, spec: ExperimentSpec, task: ExperimentTask, fine_tunes: dict[str, str]
) -> dict[str, Any]:
    """The task's EvalRun: every fine-tune that succeeded (candidate → FineTuneJob name) and
    every baseline, judged by the spec's judge."""
    settings = spec.evaluation
    models: list[dict[str, Any]] = [
        {"name": candidate, "modelRef": {"kind": FINE_TUNE_JOB.kind, "name": tuned}}
        for candidate, tuned in fine_tunes.items()
    ]
    models += [b.to_api() for b in spec.baselines or []]
    run = EvalRunSpec.model_validate(
        {
            "models": models,
            "dataset": task.evaluation.dataset.to_api() if task.evaluation.dataset else None,
            "prompts": task.evaluation.prompts.to_api() if task.evaluation.prompts else None,
            "judge": spec.judge.to_api(),
            "scoring": settings.scoring,
            "repeats": settings.repeats,
            "seed": settings.seed,
            "temperature": settings.temperature,
            "maxTokens": settings.max_tokens,
            "concurrency": settings.concurrency,
            "systemPrompt": settings.system_prompt,
            "serving": settings.serving.to_api(),
            "resources": settings.resources.to_api(),
        }
    )
    return _run(owner, EVAL_RUN.kind, eval_run_name(owner, task.name), EVALUATION_ROLE, run)


def judgements_path(config: OperatorConfig, namespace: str, eval_run: str) -> str:
    """Where an EvalRun of the namespace wrote its judge's verdicts, in the model store."""
    return store_path(config, Owner(EVAL_RUN, eval_run, namespace, ""), JUDGEMENTS_FILE)


def ranking_job(
    owner: Owner,
    spec: ExperimentSpec,
    judged: dict[str, str],
    config: OperatorConfig,
    *,
    winner: str | None = None,
) -> list[dict[str, Any]]:
    """A ranking Job over the verdicts of the EvalRuns `judged` (task → EvalRun name): the
    search's ranking, or with `winner` the held-out verdict. Its report and output folder
    are its own (`<store>/<namespace>/experiments/<name>/<job>/`)."""
    job = RANK_JOB if winner is None else VERDICT_JOB
    task = RankTask(
        **task_fields(owner, config, [], job=job, report=True),
        tasks=[
            JudgedTask(name=t, judgements_path=judgements_path(config, owner.namespace, run))
            for t, run in judged.items()
        ],
        baselines=[b.name for b in spec.baselines or []],
        winner=winner,
        bootstrap_samples=spec.judge.bootstrap_samples,
        seed=spec.evaluation.seed,
    )
    return workload_children(
        Workload(
            owner=owner,
            role=job,
            config=config,
            resources=spec.evaluation.resources,
            image=config.eval_image,
            command=workload_command("rank"),
            claims=[],
        ),
        task,
    )


# -- what to do next, from what exists -------------------------------------------------------


@dataclass
class Observed:
    """What an Experiment's reconcile sees: its child runs by name, and per ranking Job
    (RANK_JOB, VERDICT_JOB) the Job, its pods and its report."""

    runs: dict[str, dict[str, Any]]
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    pods: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    reports: dict[str, WorkloadReport | None] = field(default_factory=dict)


@dataclass
class Decision:
    """The status an Experiment has now, and the children to create (within the bound)."""

    phase: Phase
    reason: Reason
    message: str
    fields: dict[str, Any]
    create: list[dict[str, Any]]


def _failure(kind: str, name: str, status: RunStatus, consequence: str) -> ChildFailure:
    ready = status.ready()
    return ChildFailure(
        kind=kind,
        name=name,
        reason=ready.reason if ready else Reason.CHILD_FAILED,
        message=(ready.message if ready else "")[:4096],
        consequence=consequence,
    )


class _Plan:
    """Walks the experiment's children in a fixed order, counting who runs, creating what is
    missing while the bound allows, and noting the children that failed."""

    def __init__(
        self, owner: Owner, spec: ExperimentSpec, seen: Observed, config: OperatorConfig
    ) -> None:
        self.owner, self.spec, self.seen, self.config = owner, spec, seen, config
        running = sum(
            1
            for body in seen.runs.values()
            if KINDS_BY_NAME[body["kind"]].read_status(body).phase not in TERMINAL_PHASES
        ) + sum(
            1
            for job, body in seen.jobs.items()
            if job_outcome(body, seen.pods.get(job, [])).phase not in TERMINAL_PHASES
        )
        self.free = spec.max_concurrent_jobs - running
        self.create: list[dict[str, Any]] = []
        self.failures: list[ChildFailure] = []
        self.counts = {FINE_TUNE_JOB.kind: Counter[str](), EVAL_RUN.kind: Counter[str]()}
        self.fields: dict[str, Any] = {}

    def run(self, kind: Kind[Any, StatusT], manifest: dict[str, Any]) -> StatusT | None:
        """A planned child run: its status, or None when it does not exist (it is created
        when a slot is free)."""
        body = self.seen.runs.get(manifest["metadata"]["name"])
        status = None if body is None else kind.read_status(body)
        if status is None:
            if self.free > 0:
                self.create.append(manifest)
                self.free -= 1
                self.counts[kind.kind]["pending"] += 1
            else:
                self.counts[kind.kind]["not_started"] += 1
            return None
        self.counts[kind.kind][(status.phase or Phase.PENDING).lower()] += 1
        return status

    def job(self, job: str, build: Any) -> tuple[Outcome | None, WorkloadReport | None]:
        """A ranking Job's outcome and report; created when missing and a slot is free."""
        body = self.seen.jobs.get(job)
        if body is None:
            if self.free > 0:
                self.create += build()
                self.free -= 1
            return None, None
        return job_outcome(body, self.seen.pods.get(job, [])), self.seen.reports.get(job)

    def fine_tunes(self, task: ExperimentTask, names: list[str]) -> dict[str, str] | None:
        """The candidates' fine-tunes on the task: the succeeded ones (candidate → name) once
        every one has finished, else None."""
        by_name = {c.name: c for c in self.spec.candidates}
        succeeded, settled = {}, True
        for candidate in names:
            manifest = fine_tune(self.owner, self.spec, by_name[candidate], task)
            status = self.run(FINE_TUNE_JOB, manifest)
            if status is None or status.phase not in TERMINAL_PHASES:
                settled = False
            elif status.phase == Phase.SUCCEEDED:
                succeeded[candidate] = manifest["metadata"]["name"]
            else:
                self.failures.append(
                    _failure(
                        FINE_TUNE_JOB.kind,
                        manifest["metadata"]["name"],
                        status,
                        f"candidate {candidate} is not judged on task {task.name}",
                    )
                )
        return succeeded if settled else None

    def evaluation(self, task: ExperimentTask, tuned: dict[str, str]) -> EvalRunStatus | None:
        """The task's EvalRun over `tuned` and the baselines: its status once it has
        finished, else None; a task with fewer than two models is noted as failed instead."""
        models = len(tuned) + len(self.spec.baselines or [])
        if models < 2:
            self.failures.append(
                ChildFailure(
                    kind="Task",
                    name=task.name,
                    reason=Reason.TOO_FEW_MODELS,
                    message=f"{models} model(s) left to compare on task {task.name}",
                    consequence=f"task {task.name} is left out of the ranking",
                )
            )
            return EvalRunStatus(phase=Phase.FAILED)
        manifest = evaluation(self.owner, self.spec, task, tuned)
        status = self.run(EVAL_RUN, manifest)
        if status is None or status.phase not in TERMINAL_PHASES:
            return None
        if status.phase == Phase.FAILED:
            self.failures.append(
                _failure(
                    EVAL_RUN.kind,
                    manifest["metadata"]["name"],
                    status,
                    f"task {task.name} is left out of the ranking",
                )
            )
        return status

    def decision(self, phase: Phase, reason: Reason, message: str, stage: str) -> Decision:
        self.fields["progress"] = ExperimentProgress(
            stage=stage,
            fine_tune_jobs=ChildCounts(**self.counts[FINE_TUNE_JOB.kind]),
            eval_runs=ChildCounts(**self.counts[EVAL_RUN.kind]),
            active=self.spec.max_concurrent_jobs - self.free,
        )
        self.fields["failures"] = self.failures or None
        return Decision(phase, reason, message, self.fields, self.create)

    def searching(self) -> str:
        tunes, evals = self.counts[FINE_TUNE_JOB.kind], self.counts[EVAL_RUN.kind]
        done = tunes["succeeded"] + tunes["failed"]
        started = sum(tunes.values()) - done - tunes["not_started"]
        evaluated = evals["succeeded"] + evals["failed"]
        return (
            f"fine-tunes: {done} done, {started} started, {tunes['not_started']} waiting their "
            f"turn; evaluations: {evaluated} done, {sum(evals.values()) - evaluated} started"
        )


def decide(owner: Owner, spec: ExperimentSpec, seen: Observed, config: OperatorConfig) -> Decision:
    """What the experiment is doing and what to create next, from what exists alone."""
    plan = _Plan(owner, spec, seen, config)
    candidates = [c.name for c in spec.candidates]

    # The search: every candidate on every task, then each task's evaluation.
    judged: dict[str, str] = {}  # task → its EvalRun, succeeded
    rankings, search_done = [], True
    for task in spec.tasks:  # task by task: a task's evaluation starts before later fine-tunes
        succeeded = plan.fine_tunes(task, candidates)
        status = plan.evaluation(task, succeeded) if succeeded is not None else None
        if status is None:
            search_done = False
        elif status.phase == Phase.SUCCEEDED:
            judged[task.name] = eval_run_name(owner, task.name)
            rankings.append(
                TaskRanking(
                    task=task.name,
                    eval_run=judged[task.name],
                    comparisons=status.judge_comparisons or 0,
                    ratings=status.judge_ratings or [],
                )
            )
    plan.fields["task_rankings"] = rankings or None
    if not search_done:
        return plan.decision(Phase.RUNNING, Reason.SEARCHING, plan.searching(), "Search")
    if not judged:
        why = "; ".join(f"{f.kind} {f.name}: {f.message or f.reason}" for f in plan.failures)
        return plan.decision(
            Phase.FAILED, Reason.NO_COMPARISONS, f"no task could be judged: {why}", "Search"
        )

    # The overall ranking, over the comparisons of every judged task.
    outcome, report = plan.job(RANK_JOB, lambda: ranking_job(owner, spec, judged, config))
    if outcome is not None and outcome.phase == Phase.FAILED:
        return plan.decision(Phase.FAILED, outcome.reason, f"ranking: {outcome.message}", "Ranking")
    if outcome is None or outcome.phase != Phase.SUCCEEDED or report is None or not report.ranking:
        message = f"ranking the comparisons of {len(judged)} task(s)"
        return plan.decision(Phase.RUNNING, Reason.RANKING, message, "Ranking")
    plan.fields |= {
        "ranking": report.ranking,
        "comparisons": report.comparisons,
        "results_uri": report.results_uri,
    }
    return _held_out(plan, [r.model for r in report.ranking if not r.baseline], len(judged))


def _held_out(plan: _Plan, ranked: list[str], tasks: int) -> Decision:
    """The top candidates and the baseline candidate on the held-out task, then the verdict
    on whether the winner keeps its lead there."""
    spec, held, winner = plan.spec, plan.spec.held_out, ranked[0]
    chosen = ranked[: spec.validation.top]
    if spec.validation.baseline not in chosen:
        chosen.append(spec.validation.baseline)
    # The winner needs someone to be compared with there: when it is the baseline candidate
    # itself and no hosted baseline runs, the runner-up goes too.
    for runner_up in ranked[len(chosen) :]:
        if len(chosen) + len(spec.baselines or []) >= 2:
            break
        chosen.append(runner_up)
    tuned = plan.fine_tunes(held, chosen)
    if tuned is None:
        message = f"fine-tuning {', '.join(chosen)} on {held.name}"
        return plan.decision(Phase.RUNNING, Reason.VALIDATING, message, "HeldOut")
    if winner not in tuned:
        message = f"the winner {winner}'s fine-tune on the held-out task {held.name} failed"
        return plan.decision(Phase.FAILED, Reason.CHILD_FAILED, message, "HeldOut")
    status = plan.evaluation(held, tuned)
    if status is None:
        message = f"evaluating {', '.join(tuned)} on {held.name}"
        return plan.decision(Phase.RUNNING, Reason.VALIDATING, message, "HeldOut")
    if status.phase == Phase.FAILED:
        message = f"the evaluation on the held-out task {held.name} failed: no verdict"
        return plan.decision(Phase.FAILED, Reason.CHILD_FAILED, message, "HeldOut")
    outcome, report = plan.job(
        VERDICT_JOB,
        lambda: ranking_job(
            plan.owner,
            spec,
            {held.name: eval_run_name(plan.owner, held.name)},
            plan.config,
            winner=winner,
        ),
    )
    if outcome is not None and outcome.phase == Phase.FAILED:
        return plan.decision(Phase.FAILED, outcome.reason, f"verdict: {outcome.message}", "Verdict")
    if outcome is None or outcome.phase != Phase.SUCCEEDED or report is None or not report.held_out:
        message = f"judging the verdict on {held.name}"
        return plan.decision(Phase.RUNNING, Reason.VALIDATING, message, "Verdict")
    verdict = plan.fields["held_out"] = report.held_out
    holds = "holds" if verdict.holds else "does not hold"
    return plan.decision(
        Phase.SUCCEEDED,
        Reason.SUCCEEDED,
        f"{winner} ranks first over {tasks} task(s); on {held.name} its lead over "
        f"{verdict.runner_up} {holds} ({verdict.rating_difference:+.0f}, 95% interval "
        f"[{verdict.ci95_low:+.0f}, {verdict.ci95_high:+.0f}])",
        "Done",
    )
