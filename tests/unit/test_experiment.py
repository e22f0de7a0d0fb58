"""Experiment: what it creates and when, decided from what exists (a pure function)."""

from __future__ import annotations

from typing import Any

from crucible.api.contract import WorkloadReport
from crucible.api.experiment import ExperimentSpec, HeldOutVerdict, RankedModel
from crucible.api.kinds import EXPERIMENT
from crucible.config import OperatorConfig
from crucible.resources.common import Owner
from crucible.resources.experiment import RANK_JOB, VERDICT_JOB, Decision, Observed, decide
from tests.manifests import task_of

CONFIG = OperatorConfig()
OWNER = Owner(EXPERIMENT, "search", "team", "uid-9")


def spec(**changes: Any) -> ExperimentSpec:
    data = {
        "candidates": [
            {"name": "a", "uri": "pvc://crucible-models/models/a"},
            {"name": "b", "modelRef": {"kind": "ModelMerge", "name": "merged"}},
        ],
        "tasks": [
            {
                "name": "docs",
                "dataset": {"configMap": {"name": "docs-qa", "key": "qa.jsonl"}},
                "evaluation": {"prompts": {"configMap": {"name": "docs-p", "key": "p.jsonl"}}},
            },
            {
                "name": "ops",
                "dataset": {"configMap": {"name": "ops-qa", "key": "qa.jsonl"}},
                "evaluation": {"prompts": {"configMap": {"name": "ops-p", "key": "p.jsonl"}}},
            },
        ],
        "heldOut": {
            "name": "faq",
            "dataset": {"configMap": {"name": "faq-qa", "key": "qa.jsonl"}},
            "evaluation": {"prompts": {"configMap": {"name": "faq-p", "key": "p.jsonl"}}},
        },
        "fineTune": {"hyperparameters": {"maxSteps": 4}, "resources": {"gpus": 0}},
        "judge": {"uri": "pvc://crucible-models/models/judge"},
        "validation": {"top": 1, "baseline": "a"},
        "maxConcurrentJobs": 2,
        **changes,
    }
    return ExperimentSpec.model_validate(data)


def run(manifest: dict[str, Any], phase: str | None, **status: Any) -> dict[str, Any]:
    """A child as the API would show it in `phase`."""
    conditions = []
    if phase in ("Succeeded", "Failed"):
        reason = "Succeeded" if phase == "Succeeded" else "OOMKilled"
        conditions = [
            {
                "type": "Ready",
                "status": "True" if phase == "Succeeded" else "False",
                "reason": reason,
                "message": "ran out of memory" if phase == "Failed" else "",
                "lastTransitionTime": "2026-11-23T10:00:00Z",
            }
        ]
    body = {**manifest, "metadata": {**manifest["metadata"], "uid": "u"}}
    body["status"] = {"phase": phase, "conditions": conditions, **status} if phase else {}
    return body


def step(seen: Observed, spec_: ExperimentSpec, **phases: str) -> Decision:
    """Decide, then give every child just created (or named) the phase asked for."""
    decision = decide(OWNER, spec_, seen, CONFIG)
    for manifest in decision.create:
        name = manifest["metadata"]["name"]
        if manifest["kind"] in ("FineTuneJob", "EvalRun"):
            seen.runs[name] = run(manifest, "Running")
        elif manifest["kind"] == "Job":
            job = RANK_JOB if name.endswith("-rank") else VERDICT_JOB
            seen.jobs[job] = {**manifest, "status": {}}
    for key, phase in phases.items():
        finish(seen, key.replace("_", "-"), phase)
    return decision


def finish(seen: Observed, name: str, phase: str) -> None:
    body = seen.runs[name]
    judged = {"judgeComparisons": 8, "judgeRatings": []} if body["kind"] == "EvalRun" else {}
    seen.runs[name] = run(body, phase, **(judged if phase == "Succeeded" else {}))


def names(decision: Decision) -> list[str]:
    """The child runs and Jobs it creates (a Job's ConfigMaps and identity left aside)."""
    kinds = ("FineTuneJob", "EvalRun", "Job")
    return [m["metadata"]["name"] for m in decision.create if m["kind"] in kinds]


def test_children_fan_out_within_the_bound_task_by_task() -> None:
    s = spec()
    seen = Observed(runs={})
    first = step(seen, s)
    assert names(first) == ["search-a-docs", "search-b-docs"]
    tuned = first.create[0]
    assert tuned["metadata"]["ownerReferences"][0]["uid"] == "uid-9"
    assert tuned["metadata"]["labels"]["crucible.dev/kind"] == "Experiment"
    assert tuned["metadata"]["labels"]["crucible.dev/name"] == "search"
    assert tuned["spec"]["baseModel"] == {"uri": "pvc://crucible-models/models/a"}
    assert tuned["spec"]["dataset"]["configMap"] == {"name": "docs-qa", "key": "qa.jsonl"}
    assert tuned["spec"]["hyperparameters"]["maxSteps"] == 4
    assert first.create[1]["spec"]["baseModel"] == {
        "modelRef": {"kind": "ModelMerge", "name": "merged"}
    }
    assert first.phase == "Running" and first.reason == "Searching"
    # Both slots taken: nothing more starts, the rest wait without existing.
    second = step(seen, s)
    assert second.create == []
    progress = second.fields["progress"]
    assert (progress.active, progress.fine_tune_jobs.running) == (2, 2)
    assert progress.fine_tune_jobs.not_started == 2
    # The task's fine-tunes done: its evaluation and the next task's first fine-tune start.
    third = step(seen, s, search_a_docs="Succeeded", search_b_docs="Succeeded")
    assert third.create == []
    fourth = step(seen, s)
    assert names(fourth) == ["search-docs", "search-a-ops"]
    evaluation = next(m for m in fourth.create if m["kind"] == "EvalRun")
    assert [m["name"] for m in evaluation["spec"]["models"]] == ["a", "b"]
    assert evaluation["spec"]["models"][0]["modelRef"] == {
        "kind": "FineTuneJob",
        "name": "search-a-docs",
    }
    assert evaluation["spec"]["judge"]["uri"] == "pvc://crucible-models/models/judge"
    assert evaluation["spec"]["prompts"]["configMap"]["name"] == "docs-p"


def test_a_failed_fine_tune_is_reported_and_the_task_goes_on_without_it() -> None:
    s = spec(baselines=[{"name": "gpt", "endpoint": {"url": "https://x/v1", "model": "gpt"}}])
    seen = Observed(runs={})
    step(seen, s)
    step(seen, s, search_a_docs="Succeeded", search_b_docs="Failed")
    decision = step(seen, s)
    evaluation = next(m for m in decision.create if m["kind"] == "EvalRun")
    assert [m["name"] for m in evaluation["spec"]["models"]] == ["a", "gpt"]
    (failure,) = decision.fields["failures"]
    assert (failure.kind, failure.name, failure.reason) == (
        "FineTuneJob",
        "search-b-docs",
        "OOMKilled",
    )
    assert failure.consequence == "candidate b is not judged on task docs"


def test_a_task_with_fewer_than_two_models_is_left_out_and_said_so() -> None:
    s = spec(tasks=[spec().tasks[0]], maxConcurrentJobs=4)
    seen = Observed(runs={})
    step(seen, s)
    decision = step(seen, s, search_a_docs="Failed", search_b_docs="Failed")
    decision = decide(OWNER, s, seen, CONFIG)
    assert (decision.phase, decision.reason) == ("Failed", "NoComparisons")
    assert "Task docs: 0 model(s) left to compare on task docs" in decision.message


def ranked(*models: str) -> WorkloadReport:
    return WorkloadReport(
        comparisons=48,
        results_uri="pvc://crucible-models/team/experiments/search/rank/ranking.json",
        ranking=[
            RankedModel(
                model=m,
                baseline=False,
                rating=1100 - 100 * i,
                ci95_low=1050 - 100 * i,
                ci95_high=1150 - 100 * i,
            )
            for i, m in enumerate(models)
        ],
    )


def complete(seen: Observed, job: str, report: WorkloadReport) -> None:
    seen.jobs[job]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    seen.reports[job] = report


def searched(s: ExperimentSpec) -> Observed:
    """Every search child done."""
    seen = Observed(runs={})
    for _ in range(6):
        step(seen, s)
        for name, body in list(seen.runs.items()):
            if body["status"]["phase"] == "Running":
                finish(seen, name, "Succeeded")
    return seen


def test_the_ranking_then_the_held_out_task_then_the_verdict() -> None:
    s = spec(maxConcurrentJobs=4)
    seen = searched(s)
    assert set(seen.runs) == {
        "search-a-docs",
        "search-b-docs",
        "search-a-ops",
        "search-b-ops",
        "search-docs",
        "search-ops",
    }
    assert RANK_JOB in seen.jobs
    rank = decide(OWNER, s, seen, CONFIG)
    assert (rank.reason, rank.fields["progress"].stage) == ("Ranking", "Ranking")
    assert [r.task for r in rank.fields["task_rankings"]] == ["docs", "ops"]
    complete(seen, RANK_JOB, ranked("b", "a"))
    # b won the search: b (the top 1) and the baseline candidate a go to the held-out task.
    held = step(seen, s)
    assert names(held) == ["search-b-faq", "search-a-faq"]
    assert held.fields["ranking"][0].model == "b" and held.fields["comparisons"] == 48
    step(seen, s, search_b_faq="Succeeded", search_a_faq="Succeeded")
    evaluation = step(seen, s)
    assert names(evaluation) == ["search-faq"]
    step(seen, s, search_faq="Succeeded")
    verdict = step(seen, s)
    assert names(verdict) == ["search-verdict"]
    complete(
        seen,
        VERDICT_JOB,
        WorkloadReport(
            comparisons=16,
            held_out=HeldOutVerdict(
                task="faq",
                winner="b",
                runner_up="a",
                rating_difference=120.0,
                ci95_low=30.0,
                ci95_high=210.0,
                comparisons=16,
                holds=True,
                ratings=[],
            ),
        ),
    )
    done = decide(OWNER, s, seen, CONFIG)
    assert (done.phase, done.reason, done.fields["progress"].stage) == (
        "Succeeded",
        "Succeeded",
        "Done",
    )
    assert "on faq its lead over a holds (+120, 95% interval [+30, +210])" in done.message
    assert done.create == []


def test_the_ranking_job_reads_every_judged_task() -> None:
    s = spec(maxConcurrentJobs=4)
    seen = searched(s)
    job = seen.jobs[RANK_JOB]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"][:3] == ["python", "-m", "crucible.workloads.rank"]
    seen_again = Observed(runs=dict(seen.runs))
    creation = decide(OWNER, s, seen_again, CONFIG).create
    task = task_of(next(m for m in creation if m["kind"] == "Job"))
    assert [t["judgementsPath"] for t in task["tasks"]] == [
        "/models/team/evalruns/search-docs/judgements.jsonl",
        "/models/team/evalruns/search-ops/judgements.jsonl",
    ]
    assert task["outputPath"] == "/models/team/experiments/search/rank"
    assert "winner" not in task


def test_a_winning_baseline_candidate_is_checked_against_the_runner_up() -> None:
    """Top 1 is a, which is also the baseline candidate; with no hosted baseline the held-out
    task would have one model and no comparison: b, the runner-up, goes too."""
    s = spec(maxConcurrentJobs=4)
    seen = searched(s)
    complete(seen, RANK_JOB, ranked("a", "b"))
    assert names(decide(OWNER, s, seen, CONFIG)) == ["search-a-faq", "search-b-faq"]
