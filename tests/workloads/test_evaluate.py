"""The eval workload against a scripted OpenAI-compatible server, and its statistics against
hand-computed values."""

from __future__ import annotations

import itertools
import json
import math
import multiprocessing
import os
import random
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from crucible.api.contract import ChatEndpoint, DataFile, EvalTask
from crucible.workloads.answers import Answer, AnswerJournal
from crucible.workloads.common import WorkloadError
from crucible.workloads.evaluate import evaluate
from crucible.workloads.mcq import load_questions, parse_answer
from crucible.workloads.prompts import load_prompts
from crucible.workloads.stats import (
    bootstrap_interval,
    bradley_terry,
    lead,
    paired_test,
    rate,
    summarize,
    welch_t_test,
)
from tests.conftest import NITRO, requires_nitro, wait_for
from tests.workloads.scripted_server import ScriptedServer, serving

NITRO_MCQ = NITRO / "mcq_nitro.csv"


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("C", "C"),
        ("C.", "C"),
        ("(C)", "C"),
        ("Answer: C", "C"),
        ("answer: C", "C"),
        ("The answer is C because the docs say so.", "C"),
        ("C) It loads the model", "C"),
        ("  B\n", "B"),
        ("Option D", "D"),
        ("I think it is A.", "A"),
        ("A or B", None),
        ("I don't know", None),
        ("", None),
        ("A, B or C?", None),
        ("Answer: A. The answer is B.", None),
    ],
)
def test_answer_parsing(text: str, letter: str | None) -> None:
    assert parse_answer(text) == letter


@requires_nitro
def test_nitro_questions_load_with_multiline_cells() -> None:
    questions = load_questions(NITRO_MCQ)
    assert len(questions) == 50
    assert {q.correct for q in questions} == {"A", "B", "C", "D"}
    palchat = next(q for q in questions if "PalChat" in q.text)
    assert "\n" in palchat.options["A"] and not palchat.options["A"].startswith("A.")


def test_summary_matches_hand_computation() -> None:
    summary = summarize([0.5, 0.6, 0.7])
    assert summary.mean == pytest.approx(0.6)
    assert summary.stddev == pytest.approx(0.1)  # sqrt(((.1)^2 + 0 + (.1)^2) / 2)
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, df=2)
    assert (summary.ci95_low, summary.ci95_high) == (
        pytest.approx(0.6 - half),
        pytest.approx(0.6 + half),
    )


def test_welch_matches_hand_computation() -> None:
    test = welch_t_test([0.5, 0.6, 0.7], [0.4, 0.45, 0.5])
    # means .6 and .45; variances .01 and .0025; n 3 each
    se2 = 0.01 / 3 + 0.0025 / 3
    assert test.t == pytest.approx(0.15 / math.sqrt(se2))
    assert test.df == pytest.approx(se2**2 / ((0.01 / 3) ** 2 / 2 + (0.0025 / 3) ** 2 / 2))
    assert 0.05 < test.p_value < 0.15


def test_interval_over_questions_is_the_binomial_one_and_reproducible() -> None:
    """20 of 40 right: the bootstrap interval over questions is close to the normal
    approximation, 0.5 ± 1.96·sqrt(0.25/40) = ±0.155, and the seed fixes it."""
    scores = [1.0, 0.0] * 20
    low, high = bootstrap_interval(scores, seed=3)
    assert low == pytest.approx(0.5 - 0.155, abs=0.02) and high == pytest.approx(0.655, abs=0.02)
    assert bootstrap_interval(scores, seed=3) == (low, high)


def test_paired_tests_match_hand_computation() -> None:
    # McNemar: of 9 discordant questions a alone got 8 right: p = 2·P(X ≤ 1 | 9, ½) = 20/512.
    a = [1.0] * 8 + [0.0] + [1.0] * 5 + [0.0] * 6
    b = [0.0] * 8 + [1.0] + [1.0] * 5 + [0.0] * 6
    mcnemar = paired_test(a, b, seed=0)
    assert (mcnemar.test, mcnemar.difference) == ("McNemar", pytest.approx(7 / 20))
    assert mcnemar.p_value == pytest.approx(20 / 512)
    assert mcnemar.ci95_low < 7 / 20 < mcnemar.ci95_high
    # Scores averaged over rounds: differences .5, 0, .5, 0 → t = .25 / (sd/2) = √3, 3 df.
    t = paired_test([1.0, 0.5, 0.5, 0.0], [0.5, 0.5, 0.0, 0.0], seed=0)
    assert t.test == "PairedT" and t.p_value == pytest.approx(0.18169, abs=1e-4)
    assert paired_test(a, a, seed=0).p_value == 1.0


def test_bradley_terry_recovers_known_strengths() -> None:
    truth = {"a": 1200.0, "b": 1000.0, "c": 900.0, "d": 700.0}
    rng = random.Random(7)
    judgements = []
    for (x, rx), (y, ry) in itertools.combinations(truth.items(), 2):
        p = 1 / (1 + 10 ** ((ry - rx) / 400))
        judgements += [(x, y, 1.0 if rng.random() < p else 0.0) for _ in range(400)]
    fitted = bradley_terry(judgements)
    centre = sum(truth.values()) / 4 - 1000
    for model, rating in truth.items():
        assert fitted[model] == pytest.approx(rating - centre, abs=30)
    ratings = rate(judgements, bootstrap=100)
    assert [r.model for r in ratings] == ["a", "b", "c", "d"]
    assert all(r.ci95_low <= r.rating <= r.ci95_high for r in ratings)


def test_a_lead_has_an_interval_of_its_own() -> None:
    """The leader's rating minus the other's, with the bootstrap interval of that difference:
    clear of zero for a real lead, straddling it for an even match."""
    rng = random.Random(3)
    clear = [("a", "b", 1.0 if rng.random() < 0.75 else 0.0) for _ in range(300)]
    found = lead(clear, "a", "b", bootstrap=100, seed=5)
    fitted = bradley_terry(clear)
    assert found.difference == pytest.approx(fitted["a"] - fitted["b"])
    assert 0 < found.ci95_low <= found.difference <= found.ci95_high
    even = [("a", "b", float(i % 2)) for i in range(40)]
    tie = lead(even, "a", "b", bootstrap=100)
    assert tie.difference == pytest.approx(0, abs=1e-6) and tie.ci95_low < 0 < tie.ci95_high


def test_bradley_terry_is_the_exact_mle_when_it_exists_and_says_when_it_is_not() -> None:
    from scipy.optimize import minimize

    rng = random.Random(3)
    strengths = {"a": 2.0, "b": 1.0, "c": 0.5}
    judgements = []
    for x, y in itertools.combinations(strengths, 2):
        p = strengths[x] / (strengths[x] + strengths[y])
        judgements += [(x, y, 1.0 if rng.random() < p else 0.0) for _ in range(1000)]
    models = sorted(strengths)

    def negative_log_likelihood(log_s: list[float]) -> float:
        s = dict(zip(models, log_s, strict=True))
        return -sum(
            score * (s[i] - math.log(math.exp(s[i]) + math.exp(s[j])))
            + (1 - score) * (s[j] - math.log(math.exp(s[i]) + math.exp(s[j])))
            for i, j, score in judgements
        )

    fitted = bradley_terry(judgements)
    strength = {m: 10 ** ((fitted[m] - 1000) / 400) for m in models}
    # The MLE solves the score equations: each model's expected wins equal its wins.
    for m in models:
        won = sum(score if i == m else 1 - score for i, j, score in judgements if m in (i, j))
        expected = sum(
            strength[m] / (strength[i] + strength[j]) for i, j, _ in judgements if m in (i, j)
        )
        assert expected == pytest.approx(won, abs=1e-6)
    # ... and agrees with a general-purpose optimizer (to that optimizer's precision).
    exact = minimize(negative_log_likelihood, [0.0] * 3, method="BFGS").x
    exact -= exact.mean()
    for model, log_strength in zip(models, exact, strict=True):
        assert math.log(strength[model]) == pytest.approx(log_strength, abs=1e-4)
    assert not any(r.regularized for r in rate(judgements, bootstrap=10))
    # A model that never lost has no finite MLE: a weak prior, and the ratings say so.
    unbeaten = [*judgements, *[("d", m, 1.0) for m in models for _ in range(5)]]
    ratings = rate(unbeaten, bootstrap=10)
    assert all(r.regularized for r in ratings) and ratings[0].model == "d"
    assert all(math.isfinite(r.rating) for r in ratings)


def write_mcq(path: Path, count: int) -> Path:
    rows = ["question,a,b,c,d,correct"]
    for i in range(count):
        correct = "ABCD"[i % 4]
        rows.append(f'"Q{i}: which?","A. a{i}","B. b{i}","C. c{i}","D. d{i}",{correct}')
    path.write_text("\n".join(rows) + "\n")
    return path


def correct_letter(user: str) -> str:
    number = int(re.search(r"Question: Q(\d+):", user).group(1))  # type: ignore[union-attr]
    return "ABCD"[number % 4]


def script(model: str, user: str, messages: list[dict[str, str]]) -> str:
    letter = correct_letter(user)
    number = int(re.search(r"Q(\d+):", user).group(1))  # type: ignore[union-attr]
    if model == "oracle":
        return f"The answer is {letter} because it is."
    if model == "half":  # right on even questions, unparseable on odd ones
        return f"({letter})" if number % 2 == 0 else "maybe A or B"
    if model == "ragged":  # right only when the context gives the answer away
        return f"Answer: {letter}" if "CONTEXT" in user else "A"
    if model == "judge":
        first = user.split("First answer (A):")[1].split("Second answer (B):", maxsplit=1)[0]
        second = user.split("Second answer (B):")[1]
        good = lambda t: f"The answer is {letter}" in t  # noqa: E731
        return (
            "A"
            if good(first) and not good(second)
            else ("B" if good(second) and not good(first) else "TIE")
        )
    raise AssertionError(model)


def task(tmp_path: Path, server: ScriptedServer, models: list[str], **changes: Any) -> EvalTask:
    fields: dict[str, Any] = {
        "namespace": "team",
        "name": "bench",
        "output_uri": "pvc://store/team/evalruns/bench/",
        "output_path": str(tmp_path / "out"),
        "endpoints": [ChatEndpoint(name=m, base_url=server.url, model=m) for m in models],
        "dataset": DataFile(path=str(write_mcq(tmp_path / "mcq.csv", 20))),
        "repeats": 3,
        "seed": 11,
        "temperature": 0.0,
        "max_tokens": 16,
        "concurrency": 4,
    }
    fields.update(changes)
    return EvalTask(**fields)


def test_scores_are_exact_and_every_answer_is_recorded(tmp_path: Path) -> None:
    with serving(ScriptedServer(script)) as server:
        results = evaluate(task(tmp_path, server, ["oracle", "half"]))
    # A seed per round and question, the same for both models.
    seeds = {(b["model"], b["seed"]) for b in server.bodies}
    assert len(seeds) == 120 and len({seed for _, seed in seeds}) == 60
    by_model = {r.model: r for r in results}
    assert by_model["oracle"].rounds == [1.0, 1.0, 1.0] and by_model["oracle"].unparsed == 0
    assert by_model["half"].rounds == [0.5, 0.5, 0.5]
    assert by_model["half"].unparsed == 30  # 10 odd questions x 3 rounds
    assert by_model["half"].n == 3 and by_model["half"].questions == 20
    lines = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * 3 * 20
    # Questions shuffled per round, the same order for every model, from the recorded seed.
    order = {
        (a["model"], a["round"]): [
            b["question"] for b in lines if (b["model"], b["round"]) == (a["model"], a["round"])
        ]
        for a in lines
    }
    assert order[("oracle", 0)] == order[("half", 0)] != order[("oracle", 1)]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    # Rounds that never vary leave Welch's test nothing to test; the paired test over
    # questions sees the 10 questions only the oracle gets right: McNemar, p = 2 / 2**10.
    assert summary["seed"] == 11 and summary["welch"] == []
    (paired,) = summary["pairedTests"]
    assert (paired["a"], paired["b"], paired["test"]) == ("half", "oracle", "McNemar")
    assert paired["difference"] == -0.5 and paired["pValue"] == pytest.approx(2 / 2**10)
    assert by_model["half"].scoring == "Generation" and by_model["half"].accuracy_norm is None
    # The report beside them shows these figures (tests/report opens such pages in Chromium).
    report = (tmp_path / "out" / "report.html").read_text()
    assert 'data-figure="accuracy" data-model="half" data-rag="false" data-value="0.5"' in report
    assert 'data-figure="p-value"' in report and report.count("<svg") == 3


def test_retries_never_lose_or_double_count(tmp_path: Path) -> None:
    failures = {"oracle": [429, 500, 503, 429, 502]}
    with serving(ScriptedServer(script, failures)) as server:
        results = evaluate(task(tmp_path, server, ["oracle"], concurrency=3))
        assert server.served["oracle"] == 60
        assert server.requests["oracle"] == 65
        assert server.max_in_flight <= 3
    assert results[0].rounds == [1.0, 1.0, 1.0]


def test_constrained_answers_ask_for_a_letter_and_fall_back_where_refused(
    tmp_path: Path,
) -> None:
    with serving(ScriptedServer(script)) as server:
        evaluate(task(tmp_path, server, ["oracle"], constrain_answers=True))
        assert len(server.bodies) == 60
        assert all(
            b["structured_outputs"] == {"choice": ["A", "B", "C", "D"]} for b in server.bodies
        )
    refusing = ScriptedServer(script, refused_parameters=("structured_outputs",))
    with serving(refusing) as server:
        (result,) = evaluate(task(tmp_path, server, ["oracle"], constrain_answers=True))
        assert server.served["oracle"] == 60  # every question answered once, unconstrained
        assert all("structured_outputs" not in b for b in server.bodies)
    assert result.rounds == [1.0, 1.0, 1.0]


def test_rag_and_no_rag_are_both_reported(tmp_path: Path) -> None:
    from crucible.api.contract import EvalRag
    from crucible.api.ragindex import Embedding

    rag = EvalRag(table="docs", top_k=3, compare_without_rag=True, embedding=Embedding())
    with serving(ScriptedServer(script)) as server:
        results = evaluate(
            task(tmp_path, server, ["ragged"], rag=rag),
            retriever=lambda question: f"CONTEXT for {question}",
        )
        prompts = [
            m["content"]
            for b in server.bodies
            for m in b["messages"]
            if m["role"] == "user" and "CONTEXT" in m["content"]
        ]
    by_rag = {r.rag: r for r in results}
    assert by_rag[True].accuracy_mean == 1.0
    assert by_rag[False].accuracy_mean == pytest.approx(5 / 20)  # always A: right 1 in 4
    assert len(prompts) == 60


def test_judge_ratings_rank_the_better_model(tmp_path: Path) -> None:
    judge = ChatEndpoint(name="judge", base_url="", model="judge")
    with serving(ScriptedServer(script)) as server:
        judge = judge.model_copy(update={"base_url": server.url})
        evaluate(
            task(tmp_path, server, ["oracle", "half"], judge=judge, bootstrap_samples=50, repeats=2)
        )
        assert server.served["judge"] == 2 * 20  # both orders, every question
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    ratings = summary["judgeRatings"]
    assert [r["model"] for r in ratings] == ["oracle", "half"]
    assert ratings[0]["ci95Low"] > ratings[1]["ci95High"]


def open_script(model: str, user: str, messages: list[dict[str, str]]) -> str:
    """Open prompts "P<n>: …": "expert" answers them, "novice" does not; the judge prefers
    an answer that names the prompt's number."""
    if model == "judge":
        number = re.search(r"P(\d+):", user).group(1)  # type: ignore[union-attr]
        first = user.split("First answer (A):")[1].split("Second answer (B):", maxsplit=1)[0]
        second = user.split("Second answer (B):")[1]
        good = lambda t: f"about {number}" in t  # noqa: E731
        return "A" if good(first) and not good(second) else ("B" if good(second) else "TIE")
    number = re.search(r"P(\d+):", user).group(1)  # type: ignore[union-attr]
    return f"An answer about {number}." if model == "expert" else "I do not know."


def test_the_judge_compares_answers_to_open_prompts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without multiple-choice questions: each model answers each prompt once, the judge
    compares every two answers in both orders, and every verdict is kept with its prompt."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"P{n}: explain"}) + "\n" for n in range(6)))
    report = tmp_path / "report.json"
    monkeypatch.setenv("CRUCIBLE_REPORT_FILE", str(report))
    with serving(ScriptedServer(open_script)) as server:
        judge = ChatEndpoint(name="judge", base_url=server.url, model="judge")
        results = evaluate(
            task(
                tmp_path,
                server,
                ["expert", "novice"],
                dataset=None,
                prompts=DataFile(path=str(prompts)),
                judge=judge,
                bootstrap_samples=50,
            )
        )
        assert (server.served["expert"], server.served["novice"], server.served["judge"]) == (
            6,
            6,
            2 * 6,
        )
    assert results == []
    verdicts = [
        json.loads(x) for x in (tmp_path / "out" / "judgements.jsonl").read_text().splitlines()
    ]
    assert sorted((v["a"], v["item"]) for v in verdicts) == sorted(
        (m, n) for m in ("expert", "novice") for n in range(1, 7)
    )
    assert all(v["scoreA"] == (1.0 if v["a"] == "expert" else 0.0) for v in verdicts)
    # The judge was held to its three words; what it read is kept beside its verdicts.
    asked = [b for b in server.bodies if b["model"] == "judge"]
    assert all(b["structured_outputs"] == {"choice": ["A", "B", "TIE"]} for b in asked)
    read = [
        json.loads(x) for x in (tmp_path / "out" / "judged-answers.jsonl").read_text().splitlines()
    ]
    assert len(read) == 12 and {"model": "expert", "item": 3, "text": "An answer about 2."} in read
    sent = json.loads(report.read_text())
    assert sent["judgeComparisons"] == 12 and "results" not in sent
    assert [r["model"] for r in sent["judgeRatings"]] == ["expert", "novice"]


def test_a_prompt_set_without_prompts_names_the_line(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "P1: fine"}\n\n{"question": "P2: no prompt field"}\n')
    with pytest.raises(WorkloadError, match=r"prompts .*prompts.jsonl, line 3: no prompt"):
        load_prompts(prompts)


def test_a_judge_that_never_answers_a_or_b_fails_clearly(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "P1: explain"}) + "\n")

    def mumbling(model: str, user: str, messages: list[dict[str, str]]) -> str:
        return "Both are nice." if model == "judge" else open_script(model, user, messages)

    with serving(ScriptedServer(mumbling)) as server:
        judge = ChatEndpoint(name="judge", base_url=server.url, model="judge")
        job = task(
            tmp_path,
            server,
            ["expert", "novice"],
            dataset=None,
            prompts=DataFile(path=str(prompts)),
            judge=judge,
        )
        with pytest.raises(WorkloadError, match="no readable verdict in 2 comparisons"):
            evaluate(job)


def test_report_carries_the_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = tmp_path / "report.json"
    monkeypatch.setenv("CRUCIBLE_REPORT_FILE", str(report))
    with serving(ScriptedServer(script)) as server:
        evaluate(task(tmp_path, server, ["oracle"]))
    sent = json.loads(report.read_text())
    assert sent["results"][0]["accuracyMean"] == 1.0
    assert sent["resultsUri"] == "pvc://store/team/evalruns/bench/results.jsonl"


def test_an_eval_killed_midway_resumes_without_asking_anything_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRUCIBLE_REPORT_FILE", str(tmp_path / "report.json"))
    for run in ("reference", "killed"):
        (tmp_path / run).mkdir()
    with serving(ScriptedServer(script, delay=0.03)) as server:
        undisturbed = evaluate(task(tmp_path / "reference", server, ["oracle", "half"]))
        before = server.served.total()
        killed = task(tmp_path / "killed", server, ["oracle", "half"], concurrency=2)
        # The eval pod dies (SIGKILL) part-way: a child process evaluating, killed once the
        # server has answered some of its questions.
        child = multiprocessing.get_context("fork").Process(target=evaluate, args=(killed,))
        child.start()
        wait_for(
            lambda: server.served.total() - before >= 50,
            timeout=60,
            interval=0.01,
            what="50 answers",
        )
        os.kill(child.pid or 0, signal.SIGKILL)
        child.join()
        asked_before_kill = server.served.total() - before
        assert 50 <= asked_before_kill < 120
        assert not (tmp_path / "killed" / "out").exists()  # no half-written results
        resumed = evaluate(killed)
        # Every question of every model and round was asked once in total, but for those in
        # flight when the pod died (at most `concurrency`): their answers never reached it.
        assert 120 <= server.served.total() - before <= 120 + killed.concurrency
    assert [r.to_api() for r in resumed] == [r.to_api() for r in undisturbed]
    lines = (tmp_path / "killed" / "out" / "results.jsonl").read_text().splitlines()
    keys = {(a["model"], a["round"], a["question"]) for a in map(json.loads, lines)}
    assert len(lines) == len(keys) == 120
    assert not list((tmp_path / "killed").glob(".*.answers.jsonl"))  # done: journal removed


def test_a_journal_of_other_settings_is_not_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRUCIBLE_REPORT_FILE", str(tmp_path / "report.json"))
    with serving(ScriptedServer(script)) as server:
        first = task(tmp_path, server, ["oracle"])
        journal = AnswerJournal(Path(first.output_path), "another task's fingerprint")
        journal.open({})
        journal.record(Answer("oracle", False, 0, 0, 1, "D", "D", False, 1))
        journal.close()
        results = evaluate(first)
        assert server.served["oracle"] == 60  # nothing taken from the stale journal
    assert results[0].rounds == [1.0, 1.0, 1.0]


# -- log-likelihood scoring ------------------------------------------------------------------


def likelihood(model: str, head: str, answer: str) -> float:
    """Per-character log-probability of an option: "knows" likes the right option (named
    after the question's right letter by write_mcq: "a3" for A); "verbose" likes long
    options per character but pays for their length; "confused" likes none."""
    letter = answer.strip()[:1].upper()
    right = letter == correct_letter(head) if "Question: Q" in head else "right" in answer
    if model == "knows":
        return -0.1 if right else -1.0
    if model == "verbose":
        return -0.3 if right else -0.4
    return -1.0


def test_log_likelihood_scores_each_option_once_and_reports_acc_and_acc_norm(
    tmp_path: Path,
) -> None:
    with serving(ScriptedServer(script, likelihood=likelihood)) as server:
        results = evaluate(task(tmp_path, server, ["knows"], scoring="LogLikelihood"))
        # One request per question, a prompt per option, none of them a chat.
        assert server.served["knows completions"] == 20 and server.served["knows"] == 0
        assert all(len(b["prompt"]) == 4 for b in server.bodies)
    (result,) = results
    # Deterministic: scored once, whatever `repeats` (3) says, and no stddev between rounds.
    assert (result.scoring, result.n, result.rounds) == ("LogLikelihood", 1, [1.0])
    assert result.accuracy_stddev is None and result.accuracy_norm == 1.0
    assert (result.ci95_low, result.ci95_high) == (1.0, 1.0)
    answers = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    second = next(a for a in answers if a["question"] == 2)  # Q1, right answer B: " b1"
    assert second["loglikelihoods"] == [-3.0, -0.3, -3.0, -3.0]
    assert second["parsed"] == second["parsed_norm"] == "B" and second["correct_norm"]


def test_acc_norm_divides_by_the_options_length(tmp_path: Path) -> None:
    """The right option is long: its total log-probability is the lowest (acc 0) but per
    byte it is the highest (acc_norm 1), as lm-evaluation-harness's acc_norm would say."""
    rows = ["question,a,b,c,d,correct"]
    for i in range(8):
        rows.append(f"Which one {i}?,the right and long answer,no,nah,nope,A")
    mcq = tmp_path / "long.csv"
    mcq.write_text("\n".join(rows) + "\n")
    with serving(ScriptedServer(script, likelihood=likelihood)) as server:
        (result,) = evaluate(
            task(tmp_path, server, ["verbose"], scoring="LogLikelihood", dataset=DataFile(
                path=str(mcq)))
        )  # fmt: skip
    assert result.accuracy_mean == 0.0 and result.accuracy_norm == 1.0


def test_auto_scores_by_likelihood_where_it_can_and_says_which(tmp_path: Path) -> None:
    """A completions endpoint with log-probabilities is scored by likelihood; a chat-only
    endpoint (a hosted model) is asked for a letter in rounds. Each row says which."""
    with (
        serving(ScriptedServer(script, likelihood=likelihood)) as served,
        serving(ScriptedServer(script)) as hosted,
    ):
        endpoints = [
            ChatEndpoint(name="knows", base_url=served.url, model="knows"),
            ChatEndpoint(name="oracle", base_url=hosted.url, model="oracle"),
        ]
        results = evaluate(task(tmp_path, served, [], endpoints=endpoints, scoring="Auto"))
        assert served.served["knows completions"] == 20 and served.served["knows"] == 0
        assert hosted.requests["oracle completions"] == 1  # asked once whether it can
        assert hosted.served["oracle"] == 60
    by_model = {r.model: r for r in results}
    assert by_model["knows"].scoring == "LogLikelihood" and by_model["knows"].n == 1
    assert by_model["oracle"].scoring == "Generation" and by_model["oracle"].n == 3
    assert by_model["oracle"].accuracy_stddev == 0.0


def test_log_likelihood_from_an_endpoint_that_cannot_names_the_field(tmp_path: Path) -> None:
    with (
        serving(ScriptedServer(script)) as server,
        pytest.raises(WorkloadError, match=r"spec.scoring is LogLikelihood, but .*oracle"),
    ):
        evaluate(task(tmp_path, server, ["oracle"], scoring="LogLikelihood"))


def test_an_empty_option_is_no_candidate_and_an_empty_answer_is_refused(tmp_path: Path) -> None:
    """The Nitro set has a question whose option A is empty: it has no text to score, so it
    cannot be chosen (an empty continuation would otherwise be the likeliest). An empty
    correct option makes the question unanswerable: refused, naming the row and column."""
    mcq = tmp_path / "empty.csv"
    mcq.write_text("question,a,b,c,d,correct\nQ0: which?,,b0,c0,d0,A\n")
    with pytest.raises(WorkloadError, match=r"question 1, column 'a': the correct option is empty"):
        load_questions(mcq)
    mcq.write_text("question,a,b,c,d,correct\nQ1: which?,A. ,b1,c1,d1,B\n")
    with serving(ScriptedServer(script, likelihood=likelihood)) as server:
        (result,) = evaluate(
            task(tmp_path, server, ["confused"], scoring="LogLikelihood", dataset=DataFile(
                path=str(mcq)))
        )  # fmt: skip
        assert len(server.bodies[0]["prompt"]) == 3  # the three options with text
    (answer,) = [
        json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    ]
    # Every option alike: the first candidate, B, wins — not the empty A.
    assert answer["loglikelihoods"] == [None, -3.0, -3.0, -3.0] and answer["parsed"] == "B"
    assert result.accuracy_mean == 1.0


def test_retrieval_lift_is_a_paired_test_over_the_same_questions(tmp_path: Path) -> None:
    """With the context "knows" is right; without it, it is confused: the same model with
    and without RAG are compared question by question."""
    from crucible.api.contract import EvalRag
    from crucible.api.ragindex import Embedding

    def helped(model: str, head: str, answer: str) -> float:
        return likelihood(model if "CONTEXT" in head else "confused", head, answer)

    rag = EvalRag(table="docs", top_k=3, compare_without_rag=True, embedding=Embedding())
    with serving(ScriptedServer(script, likelihood=helped)) as server:
        evaluate(
            task(tmp_path, server, ["knows"], rag=rag, scoring="LogLikelihood"),
            retriever=lambda question: f"CONTEXT for {question}",
        )
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    with_rag, without = summary["results"]
    assert (with_rag["rag"], with_rag["accuracyMean"]) == (True, 1.0)
    # Confused: every option alike, the first (A) wins — right on 5 of 20.
    assert (without["rag"], without["accuracyMean"]) == (False, 0.25)
    (paired,) = summary["pairedTests"]
    assert (paired["aRag"], paired["bRag"], paired["test"]) == (True, False, "McNemar")
    assert paired["difference"] == 0.75 and paired["pValue"] == pytest.approx(2 / 2**15)
    assert 0.5 < paired["ci95Low"] < 0.75 < paired["ci95High"] <= 1.0
