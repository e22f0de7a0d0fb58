"""The eval workload: the multiple-choice set against every endpoint, with and without
retrieved context. Each option is scored by its log-likelihood where the endpoint returns
prompt log-probabilities (once: it is deterministic), else the model is asked for a letter in
R rounds, questions shuffled per round with a recorded seed. Summary per model: mean, the
between-round sample stddev, a bootstrap interval over questions; Welch's t-tests where
rounds vary, paired tests over questions; optional LLM-as-judge ratings. Every answer is
written as JSONL so each figure can be recomputed."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp

from crucible.api.common import Phase
from crucible.api.contract import ChatEndpoint, EvalTask
from crucible.api.evalrun import EvalRunStatus, JudgeRating, ModelResult, PairedTest, Scoring
from crucible.metrics.report import REPORT_FILE, Answered, evalrun_report
from crucible.workloads.common import (
    Reporter,
    WorkloadError,
    atomic_directory,
    log,
    resolve_uri,
    run_main,
    sha256_of,
    write_json,
)
from crucible.workloads.mcq import (
    DEFAULT_SYSTEM_PROMPT,
    LETTERS,
    Question,
    cloze,
    load_questions,
    parse_answer,
    prompt,
)
from crucible.workloads.prompts import load_prompts
from crucible.workloads.stats import (
    bootstrap_interval,
    paired_test,
    rate,
    summarize,
    welch_t_test,
)

JUDGEMENTS_FILE = "judgements.jsonl"
JUDGED_ANSWERS_FILE = "judged-answers.jsonl"  # what the judge read, per model and item
VERDICTS = {"A": 1.0, "B": 0.0, "TIE": 0.5}  # the judge's word → the first answer's score
RETRIED_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504}
MAX_ATTEMPTS = 8
TIMEOUT = aiohttp.ClientTimeout(total=300, connect=30)
DEFAULT_JUDGE_PROMPT = (
    "You compare two answers to the same question. Reply with exactly one word: A if the first "
    "answer is better, B if the second is, or TIE if neither is better."
)
Retriever = Callable[[str], str]


@dataclass(frozen=True)
class Answer:
    model: str
    rag: bool
    round: int
    position: int
    question: int
    text: str
    parsed: str | None
    correct: bool
    attempts: int
    scoring: str = Scoring.GENERATION.value
    # Log-likelihood scoring: each option's summed log-probability, A to D (None for an empty
    # option, which is no candidate), and the choice when each is divided by the option's
    # length in bytes (acc_norm).
    loglikelihoods: list[float | None] | None = None
    parsed_norm: str | None = None
    correct_norm: bool | None = None


AnswerKey = tuple[str, bool, int, int]  # model, rag, round, question


def key_of(answer: Answer) -> AnswerKey:
    return (answer.model, answer.rag, answer.round, answer.question)


class AnswerJournal:
    """Every answer appended as it arrives, beside the output: a restarted eval pod asks only
    what is missing, and no question counts twice. Its first line fingerprints the task and
    the question set; a journal written for other settings is started afresh."""

    def __init__(self, output: Path, fingerprint: str) -> None:
        self.path = output.parent / f".{output.name}.answers.jsonl"
        self.fingerprint = fingerprint
        self._stream: IO[str]

    def load(self) -> dict[AnswerKey, Answer]:
        """The answers already given; a line cut short by a kill is dropped."""
        if not self.path.exists():
            return {}
        lines = self.path.read_text(encoding="utf-8").splitlines()
        if not lines or lines[0] != json.dumps({"fingerprint": self.fingerprint}):
            return {}
        answers: dict[AnswerKey, Answer] = {}
        for line in lines[1:]:
            try:
                answer = Answer(**json.loads(line))
            except (json.JSONDecodeError, TypeError):
                continue
            answers.setdefault(key_of(answer), answer)
        return answers

    def open(self, kept: dict[AnswerKey, Answer]) -> None:
        """Rewrite the journal with what is kept (dropping any cut line), then append."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._stream = self.path.open("w", encoding="utf-8")
        self._stream.write(json.dumps({"fingerprint": self.fingerprint}) + "\n")
        for answer in kept.values():
            self.record(answer)

    def record(self, answer: Answer) -> None:
        self._stream.write(json.dumps(asdict(answer)) + "\n")
        self._stream.flush()  # a killed pod loses at most the answers in flight

    def close(self) -> None:
        self._stream.close()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def fingerprint(task: EvalTask, inputs: Sequence[Path]) -> str:
    """What decides the answers: every setting but the concurrency, and the input files."""
    settings = {k: v for k, v in task.to_api().items() if k != "concurrency"}
    return hashlib.sha256(
        (json.dumps(settings, sort_keys=True) + "".join(sha256_of(p) for p in inputs)).encode()
    ).hexdigest()


class RequestRejectedError(WorkloadError):
    """The server refused a request outright (a 4xx other than rate limits): retrying the
    same request cannot help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class LikelihoodUnavailableError(WorkloadError):
    """The endpoint does not return prompt log-probabilities."""


class Client:
    """OpenAI-compatible chat completions with bounded concurrency and retries that never
    lose or double-count a question: each call returns exactly one answer or raises.

    `optional` request parameters (JSON mode, a choice constraint) are sent until an endpoint
    refuses them (400/422); from then on that endpoint is asked without, and says so once."""

    def __init__(self, session: aiohttp.ClientSession, concurrency: int) -> None:
        self.session = session
        self.slots = asyncio.Semaphore(concurrency)
        self.refused: set[str] = set()  # endpoints that refused the optional parameters

    async def chat(
        self,
        endpoint: ChatEndpoint,
        messages: list[dict[str, str]],
        temperature: float,
        max_tokens: int,
        seed: int,
        *,
        optional: dict[str, Any] | None = None,
    ) -> tuple[str, int]:
        body = {
            "model": endpoint.model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "seed": seed,
        }
        if optional and endpoint.name not in self.refused:
            try:
                return await self._chat(endpoint, {**body, **optional})
            except RequestRejectedError as error:
                if error.status not in (400, 422):
                    raise
                if endpoint.name not in self.refused:
                    log.warning(
                        "%s refuses %s (%s); asking without", endpoint.name, optional, error
                    )
                self.refused.add(endpoint.name)
        return await self._chat(endpoint, body)

    async def _chat(self, endpoint: ChatEndpoint, body: dict[str, Any]) -> tuple[str, int]:
        answer, attempts = await self._post(endpoint, "/chat/completions", body)
        return answer["choices"][0]["message"]["content"] or "", attempts

    async def loglikelihoods(
        self, endpoint: ChatEndpoint, context: str, continuations: Sequence[str]
    ) -> tuple[list[float], int]:
        """Each continuation's log-probability given the context, in one completions request
        with echo (the prompt's own log-probabilities, nothing generated): one prompt per
        continuation, whose tokens are those ending past the context (by `text_offset`; a
        token spanning the boundary counts as the continuation's, as a shared prefix would)."""
        body = {
            "model": endpoint.model,
            "prompt": [context + c for c in continuations],
            "max_tokens": 0,
            "echo": True,
            "logprobs": 0,
            "temperature": 0.0,
        }
        try:
            response, attempts = await self._post(endpoint, "/completions", body)
        except RequestRejectedError as error:
            raise LikelihoodUnavailableError(str(error)) from error
        choices = sorted(response.get("choices") or [], key=lambda c: c.get("index", 0))
        logprobs = [c.get("logprobs") or {} for c in choices]
        if len(choices) != len(continuations) or not all(
            lp.get("token_logprobs") and lp.get("text_offset") for lp in logprobs
        ):
            raise LikelihoodUnavailableError(
                f"{endpoint.name}: {endpoint.base_url} returned no prompt log-probabilities"
            )
        sums = []
        for lp, continuation in zip(logprobs, continuations, strict=True):
            ends = [*lp["text_offset"][1:], len(context) + len(continuation)]
            tail = [
                value
                for value, end in zip(lp["token_logprobs"], ends, strict=True)
                if end > len(context)
            ]
            if not tail or any(value is None for value in tail):
                raise LikelihoodUnavailableError(
                    f"{endpoint.name}: {endpoint.base_url} returned no log-probability for an "
                    "option's tokens"
                )
            sums.append(float(sum(tail)))
        return sums, attempts

    async def _post(
        self, endpoint: ChatEndpoint, path: str, body: dict[str, Any]
    ) -> tuple[dict[str, Any], int]:
        headers = {}
        if endpoint.api_key_env:
            headers["Authorization"] = f"Bearer {os.environ.get(endpoint.api_key_env, '')}"
        url = endpoint.base_url.rstrip("/") + path
        for attempt in range(1, MAX_ATTEMPTS + 1):
            delay = min(0.25 * 2 ** (attempt - 1), 10.0)
            async with self.slots:
                try:
                    async with self.session.post(url, json=body, headers=headers) as response:
                        if response.status == 200:
                            return await response.json(), attempt
                        text = await response.text()
                        if response.status not in RETRIED_STATUSES:
                            raise RequestRejectedError(
                                response.status,
                                f"{endpoint.name}: {url} answered {response.status}: {text[:300]}",
                            )
                        retry_after = response.headers.get("Retry-After", "")
                        if retry_after.replace(".", "", 1).isdigit():
                            delay = min(float(retry_after), 30.0)
                except (TimeoutError, aiohttp.ClientConnectionError) as error:
                    log.warning("%s: %s (attempt %d)", endpoint.name, error, attempt)
            await asyncio.sleep(delay)
        raise WorkloadError(f"{endpoint.name}: {url} failed {MAX_ATTEMPTS} times in a row")


def messages_for(
    question: Question, system_prompt: str, context: str | None
) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": prompt(question, context)},
    ]


async def run_rounds(
    client: Client,
    task: EvalTask,
    questions: Sequence[Question],
    contexts: dict[int, str] | None,
    *,
    given: dict[AnswerKey, Answer] | None = None,
    record: Callable[[Answer], None] = lambda _: None,
) -> list[Answer]:
    """Every endpoint, RAG setting, round and question, each asked exactly once: those
    `given` already are not asked again; each new answer is `record`ed as it arrives.
    Log-likelihood scoring is deterministic, so it has one round."""
    given = dict(given or {})
    system_prompt = task.system_prompt or DEFAULT_SYSTEM_PROMPT
    settings = (
        [False]
        if contexts is None
        else ([True, False] if task.rag and task.rag.compare_without_rag else [True])
    )
    orders = []
    for round_ in range(task.repeats):
        order = list(questions)
        random.Random(task.seed + round_).shuffle(order)  # the same order for every model
        orders.append(order)

    # vLLM's structured outputs: the answer is one of the letters, nothing else.
    choice = {"structured_outputs": {"choice": list(LETTERS)}} if task.constrain_answers else None

    def context_of(rag: bool, question: Question) -> str | None:
        return contexts.get(question.number) if rag and contexts else None

    async def generated(
        endpoint: ChatEndpoint, rag: bool, round_: int, position: int, question: Question
    ) -> Answer:
        text, attempts = await client.chat(
            endpoint,
            messages_for(question, system_prompt, context_of(rag, question)),
            task.temperature,
            task.max_tokens,
            # Its own seed per round and question (the same for every model): one seed per
            # round would make a near-uniform model give one letter to every question.
            seed=task.seed + round_ * len(questions) + question.number,
            optional=choice,
        )
        parsed = parse_answer(text)
        answer = Answer(
            endpoint.name,
            rag,
            round_,
            position,
            question.number,
            text,
            parsed,
            parsed == question.correct,
            attempts,
        )
        record(answer)
        return answer

    async def likelihood(
        endpoint: ChatEndpoint, rag: bool, position: int, question: Question
    ) -> Answer:
        context, continuations = cloze(question, context_of(rag, question))
        found, attempts = await client.loglikelihoods(
            endpoint, context, list(continuations.values())
        )
        scores = dict(zip(continuations, found, strict=True))
        best = max(scores, key=lambda letter: scores[letter])
        best_norm = max(
            scores, key=lambda letter: scores[letter] / len(continuations[letter].encode())
        )
        answer = Answer(
            endpoint.name,
            rag,
            0,
            position,
            question.number,
            "",
            best,
            best == question.correct,
            attempts,
            scoring=Scoring.LOG_LIKELIHOOD.value,
            loglikelihoods=[
                None if scores.get(letter) is None else round(scores[letter], 6)
                for letter in LETTERS
            ],
            parsed_norm=best_norm,
            correct_norm=best_norm == question.correct,
        )
        record(answer)
        return answer

    async def scoring_of(endpoint: ChatEndpoint) -> str:
        if task.scoring != Scoring.AUTO:
            return task.scoring
        earlier = {a.scoring for a in given.values() if a.model == endpoint.name}
        if earlier:
            return earlier.pop()
        # Auto: its first question, by log-likelihood, says whether the endpoint can; the
        # answer counts when it comes back.
        try:
            answer = await likelihood(endpoint, settings[0], 0, orders[0][0])
        except LikelihoodUnavailableError as error:
            log.warning("%s: %s; scoring it by generation", endpoint.name, error)
            return Scoring.GENERATION.value
        given[key_of(answer)] = answer
        return Scoring.LOG_LIKELIHOOD.value

    scorings = await asyncio.gather(*(scoring_of(e) for e in task.endpoints))

    async def known(answer: Answer) -> Answer:
        return answer

    jobs = []
    for endpoint, scoring in zip(task.endpoints, scorings, strict=True):
        by_likelihood = scoring == Scoring.LOG_LIKELIHOOD
        for rag, round_ in itertools.product(settings, range(1 if by_likelihood else task.repeats)):
            for position, q in enumerate(orders[round_]):
                done = given.get((endpoint.name, rag, round_, q.number))
                if done:
                    jobs.append(known(done))
                elif by_likelihood:
                    jobs.append(likelihood(endpoint, rag, position, q))
                else:
                    jobs.append(generated(endpoint, rag, round_, position, q))
    try:
        return list(await asyncio.gather(*jobs))
    except LikelihoodUnavailableError as error:
        raise WorkloadError(
            f"spec.scoring is LogLikelihood, but {error}: set spec.scoring to Auto (which "
            "scores such a model by generation) or to Generation"
        ) from error


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


@dataclass(frozen=True)
class Judged:
    """What the judge compares two answers to: a multiple-choice question or an open prompt."""

    number: int
    text: str  # as the judge reads it
    messages: list[dict[str, str]]  # as a model is asked it


Verdict = tuple[str, str, float, int]  # model A, model B, A's score (1, 0.5, 0), item number


def judged_items(
    task: EvalTask, questions: Sequence[Question], prompts: Sequence[str]
) -> list[Judged]:
    """The open prompts when there are any, else the multiple-choice questions."""
    if prompts:
        system = [{"role": "system", "content": task.system_prompt}] if task.system_prompt else []
        return [
            Judged(number, text, [*system, {"role": "user", "content": text}])
            for number, text in enumerate(prompts, start=1)
        ]
    system_prompt = task.system_prompt or DEFAULT_SYSTEM_PROMPT
    return [Judged(q.number, prompt(q), messages_for(q, system_prompt, None)) for q in questions]


async def judge_round(
    client: Client,
    task: EvalTask,
    items: Sequence[Judged],
    answers: Sequence[Answer],
    *,
    open_prompts: bool,
) -> tuple[list[Verdict], dict[tuple[str, int], str]]:
    """Each pair of models, each item, both presentation orders; ties allowed. The judge
    reads generated answers: a multiple-choice answer already generated (first round, without
    retrieved context where there is one) is reused; any other is asked for. Returns the
    verdicts and the answers judged (model, item number → text). A judge vLLM serves is held
    to one of its three words (structured outputs); one that refuses is asked without."""
    judge = task.judge
    assert judge is not None
    first: dict[tuple[str, int], str] = {}
    if not open_prompts:
        generated = [a for a in answers if a.round == 0 and a.scoring == Scoring.GENERATION]
        first = {(a.model, a.question): a.text for a in generated if not a.rag} or {
            (a.model, a.question): a.text for a in generated
        }

    async def answer_for_judge(endpoint: ChatEndpoint, item: Judged) -> None:
        text, _ = await client.chat(
            endpoint, item.messages, task.temperature, task.max_tokens, seed=task.seed + item.number
        )
        first[(endpoint.name, item.number)] = text

    await asyncio.gather(
        *(
            answer_for_judge(e, item)
            for e in task.endpoints
            for item in items
            if (e.name, item.number) not in first
        )
    )
    models = sorted({m for m, _ in first})
    instructions = task.judge_prompt or DEFAULT_JUDGE_PROMPT

    async def verdict(x: str, y: str, item: Judged) -> Verdict | None:
        content = (
            f"{item.text}\n\nFirst answer (A):\n{first[(x, item.number)]}\n\n"
            f"Second answer (B):\n{first[(y, item.number)]}"
        )
        text, _ = await client.chat(
            judge,
            [{"role": "system", "content": instructions}, {"role": "user", "content": content}],
            temperature=0.0,
            max_tokens=8,
            seed=task.seed,
            optional={"structured_outputs": {"choice": list(VERDICTS)}},
        )
        word = text.strip().upper().split()[0].strip(".:") if text.strip() else ""
        score = VERDICTS.get(word)
        return None if score is None else (x, y, score, item.number)

    jobs = [
        verdict(x, y, item)
        for a, b in itertools.combinations(models, 2)
        for item in items
        for x, y in ((a, b), (b, a))
    ]
    verdicts = [v for v in await asyncio.gather(*jobs) if v is not None]
    if jobs and not verdicts:
        raise WorkloadError(
            f"the judge gave no readable verdict in {len(jobs)} comparisons (it must reply A, "
            "B or TIE): check spec.judge.prompt, or use a judge model that follows it"
        )
    return verdicts, first


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

    async def run() -> tuple[list[Answer], tuple[list[Verdict], dict[tuple[str, int], str]]]:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            client = Client(session, task.concurrency)
            answers = (
                await run_rounds(
                    client, task, questions, contexts, given=given, record=journal.record
                )
                if questions
                else []
            )
            judged = (
                await judge_round(
                    client,
                    task,
                    judged_items(task, questions, prompts),
                    answers,
                    open_prompts=bool(prompts),
                )
                if task.judge
                else ([], {})
            )
            return answers, judged

    try:
        answers, (verdicts, judged_answers) = asyncio.run(run())
    finally:
        journal.close()
    results = summaries(answers, questions, task.seed) if questions else []
    paired = paired_tests(answers, questions, task.seed) if questions else []
    ratings = (
        [
            JudgeRating(
                model=r.model,
                rating=r.rating,
                ci95_low=r.ci95_low,
                ci95_high=r.ci95_high,
                regularized=r.regularized,
            )
            for r in rate([v[:3] for v in verdicts], task.bootstrap_samples, task.seed)
        ]
        if verdicts
        else []
    )
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
    reporter.update(
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
