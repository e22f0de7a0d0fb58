"""The eval workload: the multiple-choice set against every endpoint, with and without
retrieved context (crucible.workloads.rounds), optional LLM-as-judge ratings
(crucible.workloads.judge), and the figures (crucible.workloads.results): per model the mean,
the between-round sample stddev and a bootstrap interval over questions; Welch's t-tests where
rounds vary, paired tests over questions. Every answer is written as JSONL so each figure can
be recomputed, and journalled as it arrives (crucible.workloads.answers) so that a restarted
pod resumes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import aiohttp

from crucible.api.common import Phase
from crucible.api.contract import EvalTask
from crucible.api.evalrun import EvalRunStatus, JudgeRating, ModelResult
from crucible.metrics.report import REPORT_FILE, Answered, evalrun_report
from crucible.workloads.answers import Answer, AnswerJournal, AnswerKey, fingerprint
from crucible.workloads.common import (
    Reporter,
    atomic_directory,
    log,
    resolve_uri,
    run_main,
    write_json,
)
from crucible.workloads.judge import (
    JUDGED_ANSWERS_FILE,
    JUDGEMENTS_FILE,
    JudgedAnswers,
    JudgeRound,
    Verdict,
    judged_items,
    reusable_answers,
)
from crucible.workloads.mcq import Question, load_questions
from crucible.workloads.openai_client import TIMEOUT, Client
from crucible.workloads.prompts import load_prompts
from crucible.workloads.results import paired_tests, summaries, welch_tests
from crucible.workloads.rounds import Rounds
from crucible.workloads.stats import rate

Retriever = Callable[[str], str]


async def ask(
    task: EvalTask,
    questions: Sequence[Question],
    contexts: dict[int, str] | None,
    prompts: Sequence[str],
    *,
    journal: AnswerJournal,
    given: dict[AnswerKey, Answer],
) -> tuple[list[Answer], list[Verdict], JudgedAnswers]:
    """Every answer (those `given` kept, the new ones journalled) and the judge's verdicts."""
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        client = Client(session, task.concurrency)
        answers = (
            await Rounds(
                client, task, questions, contexts, given=given, record=journal.record
            ).ask()
            if questions
            else []
        )
        if task.judge is None:
            return answers, [], {}
        reused = {} if prompts else reusable_answers(answers)
        judging = JudgeRound(client, task, judged_items(task, questions, prompts), reused)
        return answers, await judging.verdicts(), judging.answers


def ratings_of(task: EvalTask, verdicts: Sequence[Verdict]) -> list[JudgeRating]:
    if not verdicts:
        return []
    return [
        JudgeRating(
            model=r.model,
            rating=r.rating,
            ci95_low=r.ci95_low,
            ci95_high=r.ci95_high,
            regularized=r.regularized,
        )
        for r in rate([v[:3] for v in verdicts], task.bootstrap_samples, task.seed)
    ]


def evaluate(task: EvalTask, retriever: Retriever | None = None) -> list[ModelResult]:
    started = time.monotonic()
    reporter = Reporter(task)
    output = Path(task.output_path)
    cache = output.parent / ".cache"
    files = {
        name: Path(data.path) if data.path else resolve_uri(data.uri or "", task.mounts, cache)
        for name, data in (("dataset", task.dataset), ("prompts", task.prompts))
        if data is not None
    }
    questions = load_questions(files["dataset"]) if "dataset" in files else []
    prompts = load_prompts(files["prompts"]) if "prompts" in files else []
    contexts = None
    if task.rag is not None and questions:
        retriever = retriever or make_retriever(task)
        contexts = {q.number: retriever(q.text) for q in questions}

    journal = AnswerJournal(output, fingerprint(task, list(files.values())))
    given = journal.load()
    if given:
        log.info("resuming: %d answers already given", len(given))
    journal.open(given)

    try:
        answers, verdicts, judged_answers = asyncio.run(
            ask(task, questions, contexts, prompts, journal=journal, given=given)
        )
    finally:
        journal.close()
    results = summaries(answers, questions, task.seed) if questions else []
    paired = paired_tests(answers, questions, task.seed) if questions else []
    ratings = ratings_of(task, verdicts)
    with atomic_directory(output) as staging:
        with (staging / "results.jsonl").open("w") as stream:
            for answer in answers:
                stream.write(json.dumps(asdict(answer)) + "\n")
        if verdicts:
            with (staging / JUDGEMENTS_FILE).open("w") as stream:
                for x, y, score, item in verdicts:
                    stream.write(json.dumps({"a": x, "b": y, "scoreA": score, "item": item}) + "\n")
            with (staging / JUDGED_ANSWERS_FILE).open("w") as stream:
                for (model, item), text in sorted(judged_answers.items()):
                    stream.write(json.dumps({"model": model, "item": item, "text": text}) + "\n")
        (staging / REPORT_FILE).write_text(
            evalrun_report(
                task.name,
                task.namespace,
                EvalRunStatus(
                    phase=Phase.SUCCEEDED,
                    results=results or None,
                    paired_tests=paired or None,
                    judge_ratings=ratings or None,
                    results_uri=task.output_uri + "results.jsonl",
                ),
                answers=[
                    Answered(a.model, a.rag, a.question, a.correct) for a in answers if a.round == 0
                ],
                lineage=task.lineage,
            )
        )
        write_json(
            staging / "summary.json",
            {
                "seed": task.seed,
                "repeats": task.repeats,
                "questions": len(questions),
                "prompts": len(prompts),
                "results": [r.to_api() for r in results],
                "welch": welch_tests(results),
                "pairedTests": [t.to_api() for t in paired],
                "judgeRatings": [r.to_api() for r in ratings],
                "judgeComparisons": len(verdicts),
                "seconds": round(time.monotonic() - started, 3),
            },
        )
    journal.remove()  # the results are in place: nothing left to resume
    reporter.finish(
        results=results or None,
        paired_tests=paired or None,
        judge_ratings=ratings or None,
        judge_comparisons=len(verdicts) if task.judge else None,
        results_uri=task.output_uri + "results.jsonl",
        message=f"{len(answers)} answers and {len(verdicts)} verdicts in "
        f"{time.monotonic() - started:.1f} s",
    )
    return results


def make_retriever(task: EvalTask) -> Retriever:
    from crucible.workloads.retrieval import PgRetriever

    assert task.rag is not None
    return PgRetriever.from_task(task)


def main(argv: list[str] | None = None) -> int:
    return run_main(evaluate, argv, EvalTask, "Benchmark models on multiple-choice questions.")


if __name__ == "__main__":
    raise SystemExit(main())
