"""The eval workload: R rounds of the multiple-choice set against every endpoint, with and
without retrieved context, questions shuffled per round with a recorded seed; summary per
model (mean, sample stddev, 95% CI, n), Welch's t-tests, optional LLM-as-judge ratings; every
answer written as JSONL so each figure can be recomputed."""

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

from crucible.api.contract import ChatEndpoint, EvalTask
from crucible.api.evalrun import JudgeRating, ModelResult
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
    load_questions,
    parse_answer,
    prompt,
)
from crucible.workloads.stats import rate, summarize, welch_t_test

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


def fingerprint(task: EvalTask, dataset: Path) -> str:
    """What decides the answers: every setting but the concurrency, and the questions."""
    settings = {k: v for k, v in task.to_api().items() if k != "concurrency"}
    return hashlib.sha256(
        (json.dumps(settings, sort_keys=True) + sha256_of(dataset)).encode()
    ).hexdigest()


class RequestRejectedError(WorkloadError):
    """The server refused a request outright (a 4xx other than rate limits): retrying the
    same request cannot help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


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
                return await self._post(endpoint, {**body, **optional})
            except RequestRejectedError as error:
                if error.status not in (400, 422):
                    raise
                if endpoint.name not in self.refused:
                    log.warning(
                        "%s refuses %s (%s); asking without", endpoint.name, optional, error
                    )
                self.refused.add(endpoint.name)
        return await self._post(endpoint, body)

    async def _post(self, endpoint: ChatEndpoint, body: dict[str, Any]) -> tuple[str, int]:
        headers = {}
        if endpoint.api_key_env:
            headers["Authorization"] = f"Bearer {os.environ.get(endpoint.api_key_env, '')}"
        url = endpoint.base_url.rstrip("/") + "/chat/completions"
        for attempt in range(1, MAX_ATTEMPTS + 1):
            delay = min(0.25 * 2 ** (attempt - 1), 10.0)
            async with self.slots:
                try:
                    async with self.session.post(url, json=body, headers=headers) as response:
                        if response.status == 200:
                            answer = await response.json()
                            return answer["choices"][0]["message"]["content"] or "", attempt
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
    `given` already are not asked again; each new answer is `record`ed as it arrives."""
    given = given or {}
    system_prompt = task.system_prompt or DEFAULT_SYSTEM_PROMPT
    settings = (
        [False]
        if contexts is None
        else ([True, False] if task.rag and task.rag.compare_without_rag else [True])
    )

    # vLLM's structured outputs: the answer is one of the letters, nothing else.
    choice = {"structured_outputs": {"choice": list(LETTERS)}} if task.constrain_answers else None

    async def one(
        endpoint: ChatEndpoint, rag: bool, round_: int, position: int, question: Question
    ) -> Answer:
        context = contexts.get(question.number) if rag and contexts else None
        text, attempts = await client.chat(
            endpoint,
            messages_for(question, system_prompt, context),
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

    async def known(answer: Answer) -> Answer:
        return answer

    jobs = []
    for round_ in range(task.repeats):
        order = list(questions)
        random.Random(task.seed + round_).shuffle(order)  # the same order for every model
        for endpoint, rag in itertools.product(task.endpoints, settings):
            for position, q in enumerate(order):
                done = given.get((endpoint.name, rag, round_, q.number))
                jobs.append(known(done) if done else one(endpoint, rag, round_, position, q))
    return list(await asyncio.gather(*jobs))


def summaries(answers: Sequence[Answer], questions: int) -> list[ModelResult]:
    results = []
    keys = sorted({(a.model, a.rag) for a in answers}, key=lambda k: (k[0], not k[1]))
    for model, rag in keys:
        mine = [a for a in answers if a.model == model and a.rag == rag]
        rounds = sorted({a.round for a in mine})
        accuracy = [sum(a.correct for a in mine if a.round == r) / questions for r in rounds]
        summary = summarize(accuracy)
        results.append(
            ModelResult(
                model=model,
                rag=rag,
                n=summary.n,
                questions=questions,
                accuracy_mean=summary.mean,
                accuracy_stddev=summary.stddev,
                ci95_low=summary.ci95_low,
                ci95_high=summary.ci95_high,
                rounds=[round(a, 6) for a in accuracy][:200],
                unparsed=sum(a.parsed is None for a in mine),
            )
        )
    return results


def comparisons(results: Sequence[ModelResult]) -> list[dict[str, Any]]:
    """Welch's t-test between every two results of the same RAG setting."""
    out = []
    for a, b in itertools.combinations(results, 2):
        if a.rag != b.rag or a.n < 2 or b.n < 2:
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


async def judge_round(
    client: Client, task: EvalTask, questions: Sequence[Question], answers: Sequence[Answer]
) -> list[tuple[str, str, float]]:
    """Each pair of models, each question, both presentation orders; ties allowed."""
    judge = task.judge
    assert judge is not None
    first = {(a.model, a.question): a.text for a in answers if a.round == 0 and not a.rag}
    if not first:
        first = {(a.model, a.question): a.text for a in answers if a.round == 0}
    models = sorted({m for m, _ in first})
    instructions = task.judge_prompt or DEFAULT_JUDGE_PROMPT

    async def verdict(x: str, y: str, question: Question) -> tuple[str, str, float] | None:
        content = (
            f"{prompt(question)}\n\nFirst answer (A):\n{first[(x, question.number)]}\n\n"
            f"Second answer (B):\n{first[(y, question.number)]}"
        )
        text, _ = await client.chat(
            judge,
            [{"role": "system", "content": instructions}, {"role": "user", "content": content}],
            temperature=0.0,
            max_tokens=8,
            seed=task.seed,
        )
        word = text.strip().upper().split()[0].strip(".:") if text.strip() else ""
        score = {"A": 1.0, "B": 0.0, "TIE": 0.5}.get(word)
        return None if score is None else (x, y, score)

    jobs = [
        verdict(x, y, q)
        for a, b in itertools.combinations(models, 2)
        for q in questions
        for x, y in ((a, b), (b, a))
    ]
    return [v for v in await asyncio.gather(*jobs) if v is not None]


def evaluate(task: EvalTask, retriever: Retriever | None = None) -> list[ModelResult]:
    started = time.monotonic()
    reporter = Reporter(task)
    output = Path(task.output_path)
    dataset = (
        Path(task.dataset.path)
        if task.dataset.path
        else resolve_uri(task.dataset.uri or "", task.mounts, output.parent / ".cache")
    )
    questions = load_questions(dataset)
    contexts = None
    if task.rag is not None:
        retriever = retriever or make_retriever(task)
        contexts = {q.number: retriever(q.text) for q in questions}

    journal = AnswerJournal(output, fingerprint(task, dataset))
    given = journal.load()
    if given:
        log.info("resuming: %d answers already given", len(given))
    journal.open(given)

    async def run() -> tuple[list[Answer], list[tuple[str, str, float]]]:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            client = Client(session, task.concurrency)
            answers = await run_rounds(
                client, task, questions, contexts, given=given, record=journal.record
            )
            verdicts = await judge_round(client, task, questions, answers) if task.judge else []
            return answers, verdicts

    try:
        answers, verdicts = asyncio.run(run())
    finally:
        journal.close()
    results = summaries(answers, len(questions))
    ratings = (
        [
            JudgeRating(
                model=r.model,
                rating=r.rating,
                ci95_low=r.ci95_low,
                ci95_high=r.ci95_high,
                regularized=r.regularized,
            )
            for r in rate(verdicts, task.bootstrap_samples, task.seed)
        ]
        if verdicts
        else []
    )
    with atomic_directory(output) as staging:
        with (staging / "results.jsonl").open("w") as stream:
            for answer in answers:
                stream.write(json.dumps(asdict(answer)) + "\n")
        if verdicts:
            with (staging / "judgements.jsonl").open("w") as stream:
                for x, y, score in verdicts:
                    stream.write(json.dumps({"a": x, "b": y, "scoreA": score}) + "\n")
        write_json(
            staging / "summary.json",
            {
                "seed": task.seed,
                "repeats": task.repeats,
                "questions": len(questions),
                "results": [r.to_api() for r in results],
                "welch": comparisons(results),
                "judgeRatings": [r.to_api() for r in ratings],
                "seconds": round(time.monotonic() - started, 3),
            },
        )
    journal.remove()  # the results are in place: nothing left to resume
    reporter.update(
        results=results,
        judge_ratings=ratings or None,
        results_uri=task.output_uri + "results.jsonl",
        message=f"{len(answers)} answers in {time.monotonic() - started:.1f} s",
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
