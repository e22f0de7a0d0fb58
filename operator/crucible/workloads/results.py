"""From answers to figures: each model's accuracy with its intervals, and the tests between
models (Welch's over rounds, paired over questions)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from crucible.api.evalrun import ModelResult, PairedTest
from crucible.workloads.answers import Answer
from crucible.workloads.mcq import Question
from crucible.workloads.stats import bootstrap_interval, paired_test, summarize, welch_t_test


def question_scores(mine: Sequence[Answer], questions: Sequence[Question]) -> list[float]:
    """Each question's score (its mean over rounds), in question order."""
    right: dict[int, list[bool]] = {q.number: [] for q in questions}
    for answer in mine:
        right[answer.question].append(answer.correct)
    return [sum(r) / len(r) if r else 0.0 for r in right.values()]


Row = tuple[str, bool]  # model, rag


def rows_of(answers: Sequence[Answer]) -> dict[Row, list[Answer]]:
    rows: dict[Row, list[Answer]] = {}
    for answer in answers:
        rows.setdefault((answer.model, answer.rag), []).append(answer)
    return dict(sorted(rows.items(), key=lambda item: (item[0][0], not item[0][1])))


def summaries(
    answers: Sequence[Answer], questions: Sequence[Question], seed: int
) -> list[ModelResult]:
    results = []
    for (model, rag), mine in rows_of(answers).items():
        rounds = sorted({a.round for a in mine})
        accuracy = [sum(a.correct for a in mine if a.round == r) / len(questions) for r in rounds]
        summary = summarize(accuracy)
        low, high = bootstrap_interval(question_scores(mine, questions), seed)
        normalised = [a.correct_norm for a in mine if a.correct_norm is not None]
        results.append(
            ModelResult(
                model=model,
                rag=rag,
                scoring=mine[0].scoring,
                n=summary.n,
                questions=len(questions),
                accuracy_mean=summary.mean,
                accuracy_stddev=summary.stddev if summary.n > 1 else None,
                ci95_low=low,
                ci95_high=high,
                accuracy_norm=sum(normalised) / len(normalised) if normalised else None,
                rounds=[round(a, 6) for a in accuracy][:200],
                unparsed=sum(a.parsed is None for a in mine),
            )
        )
    return results


def welch_tests(results: Sequence[ModelResult]) -> list[dict[str, Any]]:
    """Welch's t-test between the rounds of two results of the same RAG setting, offered only
    where rounds vary: deterministic scoring has nothing for it to test."""
    out = []
    for a, b in itertools.combinations(results, 2):
        if a.rag != b.rag or a.n < 2 or b.n < 2 or not (a.accuracy_stddev or b.accuracy_stddev):
            continue
        test = welch_t_test(a.rounds, b.rounds)
        out.append(
            {
                "a": a.model,
                "b": b.model,
                "rag": a.rag,
                "t": test.t,
                "df": test.df,
                "pValue": test.p_value,
            }
        )
    return out


def paired_tests(
    answers: Sequence[Answer], questions: Sequence[Question], seed: int
) -> list[PairedTest]:
    """A paired test over questions between every two results of the same RAG setting or of
    the same model (what retrieval changes)."""
    scores = {row: question_scores(mine, questions) for row, mine in rows_of(answers).items()}
    out = []
    for a, b in itertools.combinations(scores, 2):
        if a[1] != b[1] and a[0] != b[0]:
            continue
        test = paired_test(scores[a], scores[b], seed)
        out.append(
            PairedTest(
                a=a[0],
                a_rag=a[1],
                b=b[0],
                b_rag=b[1],
                difference=round(test.difference, 6),
                ci95_low=round(test.ci95_low, 6),
                ci95_high=round(test.ci95_high, 6),
                test=test.test,
                p_value=test.p_value,
            )
        )
    return out
