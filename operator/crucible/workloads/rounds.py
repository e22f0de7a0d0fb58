"""Asking the multiple-choice set: every endpoint, RAG setting, round and question, each asked
exactly once. An option is scored by its log-likelihood where the endpoint returns prompt
log-probabilities (once: it is deterministic), else the model is asked for a letter in R
rounds, questions shuffled per round with a recorded seed."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable, Sequence
from typing import Any

from crucible.api.contract import ChatEndpoint, EvalTask
from crucible.api.evalrun import Scoring
from crucible.workloads.answers import Answer, AnswerKey, key_of
from crucible.workloads.common import WorkloadError, log
from crucible.workloads.mcq import (
    DEFAULT_SYSTEM_PROMPT,
    LETTERS,
    Question,
    cloze,
    parse_answer,
    prompt,
)
from crucible.workloads.openai_client import Client, LikelihoodUnavailableError


def messages_for(
    question: Question, system_prompt: str, context: str | None
) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": prompt(question, context)},
    ]


async def already(answer: Answer) -> Answer:
    """An answer given before a restart, where a new one would be asked."""
    return answer


class Rounds:
    """One eval's questions, asked of every endpoint: those `given` already are not asked
    again; each new answer is `record`ed as it arrives."""

    def __init__(
        self,
        client: Client,
        task: EvalTask,
        questions: Sequence[Question],
        contexts: dict[int, str] | None,
        *,
        given: dict[AnswerKey, Answer] | None = None,
        record: Callable[[Answer], None] = lambda _: None,
    ) -> None:
        self.client, self.task, self.questions, self.contexts = client, task, questions, contexts
        self.given = dict(given or {})
        self.record = record
        self.system_prompt = task.system_prompt or DEFAULT_SYSTEM_PROMPT
        self.settings = (
            [False]
            if contexts is None
            else ([True, False] if task.rag and task.rag.compare_without_rag else [True])
        )
        self.orders = []
        for round_ in range(task.repeats):
            order = list(questions)
            random.Random(task.seed + round_).shuffle(order)  # the same order for every model
            self.orders.append(order)
        # vLLM's structured outputs: the answer is one of the letters, nothing else.
        self.choice: dict[str, Any] | None = (
            {"structured_outputs": {"choice": list(LETTERS)}} if task.constrain_answers else None
        )

    def context_of(self, rag: bool, question: Question) -> str | None:
        return self.contexts.get(question.number) if rag and self.contexts else None

    async def generated(
        self, endpoint: ChatEndpoint, rag: bool, round_: int, position: int, question: Question
    ) -> Answer:
        task = self.task
        text, attempts = await self.client.chat(
            endpoint,
            messages_for(question, self.system_prompt, self.context_of(rag, question)),
            task.temperature,
            task.max_tokens,
            # Its own seed per round and question (the same for every model): one seed per
            # round would make a near-uniform model give one letter to every question.
            seed=task.seed + round_ * len(self.questions) + question.number,
            optional=self.choice,
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
        self.record(answer)
        return answer

    async def likelihood(
        self, endpoint: ChatEndpoint, rag: bool, position: int, question: Question
    ) -> Answer:
        context, continuations = cloze(question, self.context_of(rag, question))
        found, attempts = await self.client.loglikelihoods(
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
        self.record(answer)
        return answer

    async def scoring_of(self, endpoint: ChatEndpoint) -> str:
        """How the endpoint is scored: as the spec says, as before a restart, or (Auto) by
        log-likelihood when its first question can be (that answer counts)."""
        if self.task.scoring != Scoring.AUTO:
            return self.task.scoring
        earlier = {a.scoring for a in self.given.values() if a.model == endpoint.name}
        if earlier:
            return earlier.pop()
        try:
            answer = await self.likelihood(endpoint, self.settings[0], 0, self.orders[0][0])
        except LikelihoodUnavailableError as error:
            log.warning("%s: %s; scoring it by generation", endpoint.name, error)
            return Scoring.GENERATION.value
        self.given[key_of(answer)] = answer
        return Scoring.LOG_LIKELIHOOD.value

    async def ask(self) -> list[Answer]:
        task = self.task
        scorings = await asyncio.gather(*(self.scoring_of(e) for e in task.endpoints))
        jobs = []
        for endpoint, scoring in zip(task.endpoints, scorings, strict=True):
            by_likelihood = scoring == Scoring.LOG_LIKELIHOOD
            rounds = range(1 if by_likelihood else task.repeats)
            for rag, round_ in itertools.product(self.settings, rounds):
                for position, q in enumerate(self.orders[round_]):
                    done = self.given.get((endpoint.name, rag, round_, q.number))
                    if done:
                        jobs.append(already(done))
                    elif by_likelihood:
                        jobs.append(self.likelihood(endpoint, rag, position, q))
                    else:
                        jobs.append(self.generated(endpoint, rag, round_, position, q))
        try:
            return list(await asyncio.gather(*jobs))
        except LikelihoodUnavailableError as error:
            raise WorkloadError(
                f"spec.scoring is LogLikelihood, but {error}: set spec.scoring to Auto (which "
                "scores such a model by generation) or to Generation"
            ) from error
