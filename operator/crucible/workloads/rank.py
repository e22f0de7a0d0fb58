"""An Experiment's rankings, from the judge's verdicts its EvalRuns wrote: over the search
tasks, Bradley-Terry by maximum likelihood over every comparison of every task at once (each
candidate one player across tasks, the fine-tunes of it standing for it) with bootstrap
intervals; on the held-out task, whether the search's winner keeps its lead over the best of
the others, with the bootstrap interval of that lead."""

from __future__ import annotations

import json
from pathlib import Path

from crucible.api.common import Phase
from crucible.api.contract import RankTask
from crucible.api.evalrun import JudgeRating
from crucible.api.experiment import ExperimentStatus, HeldOutVerdict, RankedModel
from crucible.metrics.report import REPORT_FILE, experiment_report
from crucible.workloads.common import (
    Reporter,
    WorkloadError,
    atomic_directory,
    run_main,
    write_json,
)
from crucible.workloads.stats import Judgement, Rating, lead, rate

COMPARISONS_FILE = "comparisons.jsonl"
RANKING_FILE = "ranking.json"


def load_comparisons(task: RankTask) -> list[dict[str, object]]:
    """Every verdict of every task, tagged with its task."""
    comparisons = []
    for judged in task.tasks:
        path = Path(judged.judgements_path)
        if not path.exists():
            raise WorkloadError(f"task {judged.name}: {path} does not exist")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                verdict = json.loads(line)
                comparisons.append(
                    {
                        "task": judged.name,
                        "item": verdict.get("item"),
                        "a": str(verdict["a"]),
                        "b": str(verdict["b"]),
                        "scoreA": float(verdict["scoreA"]),
                    }
                )
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise WorkloadError(f"{path}, line {number}: not a verdict ({error})") from None
    return comparisons


def judge_rating(r: Rating) -> JudgeRating:
    return JudgeRating(
        model=r.model,
        rating=round(r.rating, 3),
        ci95_low=round(r.ci95_low, 3),
        ci95_high=round(r.ci95_high, 3),
        regularized=r.regularized,
    )


def rank(task: RankTask) -> None:
    reporter = Reporter(task)
    comparisons = load_comparisons(task)
    if not comparisons:
        raise WorkloadError(
            "no comparisons to rank: the judge gave no verdict on "
            + ", ".join(t.name for t in task.tasks)
        )
    judgements: list[Judgement] = [
        (str(c["a"]), str(c["b"]), float(c["scoreA"]))  # type: ignore[arg-type]
        for c in comparisons
    ]
    ratings = rate(judgements, task.bootstrap_samples, task.seed)
    document: dict[str, object] = {
        "tasks": [t.name for t in task.tasks],
        "comparisons": len(judgements),
        "bootstrapSamples": task.bootstrap_samples,
        "seed": task.seed,
        "ratings": [judge_rating(r).to_api() for r in ratings],
    }
    if task.winner is None:
        reporter_fields: dict[str, object] = {
            "ranking": [
                RankedModel(
                    model=r.model,
                    baseline=r.model in task.baselines,
                    rating=round(r.rating, 3),
                    ci95_low=round(r.ci95_low, 3),
                    ci95_high=round(r.ci95_high, 3),
                    regularized=r.regularized,
                )
                for r in ratings
            ]
        }
    else:
        others = [r for r in ratings if r.model != task.winner]
        if len(others) == len(ratings) or not others:
            raise WorkloadError(
                f"the held-out task has no verdict between the search's winner {task.winner!r} "
                "and another model: its fine-tune or the other models gave no comparable answers"
            )
        found = lead(judgements, task.winner, others[0].model, task.bootstrap_samples, task.seed)
        verdict = HeldOutVerdict(
            task=task.tasks[0].name,
            winner=task.winner,
            runner_up=found.other,
            rating_difference=round(found.difference, 3),
            ci95_low=round(found.ci95_low, 3),
            ci95_high=round(found.ci95_high, 3),
            comparisons=len(judgements),
            holds=found.ci95_low > 0,
            ratings=[judge_rating(r) for r in ratings],
        )
        document["heldOut"] = verdict.to_api()
        reporter_fields = {"held_out": verdict}
    output = Path(task.output_path)
    with atomic_directory(output) as staging:
        with (staging / COMPARISONS_FILE).open("w", encoding="utf-8") as stream:
            for comparison in comparisons:
                stream.write(json.dumps(comparison) + "\n")
        write_json(staging / RANKING_FILE, document)
        shown = ExperimentStatus.model_validate(
            {"phase": Phase.SUCCEEDED, "comparisons": len(judgements), **reporter_fields}
        )
        (staging / REPORT_FILE).write_text(experiment_report(task.name, task.namespace, shown))
    reporter.finish(
        comparisons=len(judgements),
        results_uri=task.output_uri + RANKING_FILE,
        message=f"{len(judgements)} comparisons of {len(ratings)} models",
        **reporter_fields,
    )


def main(argv: list[str] | None = None) -> int:
    return run_main(rank, argv, RankTask, "Rank an Experiment's models from the judge's verdicts.")


if __name__ == "__main__":
    raise SystemExit(main())
