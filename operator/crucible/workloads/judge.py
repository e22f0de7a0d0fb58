"""LLM-as-judge: every two models' answers to the same item, in both presentation orders,
compared by a judge model that says A, B or TIE. The verdicts are rated (Bradley-Terry) by
crucible.workloads.stats."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from crucible.api.contract import ChatEndpoint, EvalTask
from crucible.api.evalrun import Scoring
from crucible.workloads.answers import Answer
from crucible.workloads.common import WorkloadError
from crucible.workloads.mcq import DEFAULT_SYSTEM_PROMPT, Question, prompt
from crucible.workloads.openai_client import Client
from crucible.workloads.rounds import messages_for

JUDGEMENTS_FILE = "judgements.jsonl"
JUDGED_ANSWERS_FILE = "judged-answers.jsonl"  # what the judge read, per model and item
VERDICTS = {"A": 1.0, "B": 0.0, "TIE": 0.5}  # the judge's word → the first answer's score
DEFAULT_JUDGE_PROMPT = (
    "You compare two answers to the same question. Reply with exactly one word: A if the first "
    "answer is better, B if the second is, or TIE if neither is better."
)


@dataclass(frozen=True)
class Judged:
    """What the judge compares two answers to: a multiple-choice question or an open prompt."""

    number: int
    text: str  # as the judge reads it
    messages: list[dict[str, str]]  # as a model is asked it


Verdict = tuple[str, str, float, int]  # model A, model B, A's score (1, 0.5, 0), item number
JudgedAnswers = dict[tuple[str, int], str]  # (model, item number) → the answer judged


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


def reusable_answers(answers: Sequence[Answer]) -> JudgedAnswers:
    """Multiple-choice answers already generated that the judge can read: the first round's,
    without retrieved context where there is one."""
    generated = [a for a in answers if a.round == 0 and a.scoring == Scoring.GENERATION]
    return {(a.model, a.question): a.text for a in generated if not a.rag} or {
        (a.model, a.question): a.text for a in generated
    }


class JudgeRound:
    """One judging of `items`: the answers it reads (`answers`, completed by `complete`) and
    the judge's verdicts on them."""

    def __init__(
        self, client: Client, task: EvalTask, items: Sequence[Judged], answers: JudgedAnswers
    ) -> None:
        assert task.judge is not None
        self.client, self.task, self.items, self.judge = client, task, items, task.judge
        self.answers = dict(answers)
        self.instructions = task.judge_prompt or DEFAULT_JUDGE_PROMPT

    async def answer(self, endpoint: ChatEndpoint, item: Judged) -> None:
        task = self.task
        text, _ = await self.client.chat(
            endpoint, item.messages, task.temperature, task.max_tokens, seed=task.seed + item.number
        )
        self.answers[(endpoint.name, item.number)] = text

    async def complete(self) -> None:
        """Ask each endpoint each item it has no answer to yet."""
        await asyncio.gather(
            *(
                self.answer(e, item)
                for e in self.task.endpoints
                for item in self.items
                if (e.name, item.number) not in self.answers
            )
        )

    async def verdict(self, x: str, y: str, item: Judged) -> Verdict | None:
        """The judge on x's answer (A) against y's (B); None when it says something else. A
        judge vLLM serves is held to one of its three words; one that refuses is asked
        without."""
        content = (
            f"{item.text}\n\nFirst answer (A):\n{self.answers[(x, item.number)]}\n\n"
            f"Second answer (B):\n{self.answers[(y, item.number)]}"
        )
        text, _ = await self.client.chat(
            self.judge,
            [
                {"role": "system", "content": self.instructions},
                {"role": "user", "content": content},
            ],
            temperature=0.0,
            max_tokens=8,
            seed=self.task.seed,
            optional={"structured_outputs": {"choice": list(VERDICTS)}},
        )
        word = text.strip().upper().split()[0].strip(".:") if text.strip() else ""
        score = VERDICTS.get(word)
        return None if score is None else (x, y, score, item.number)

    async def verdicts(self) -> list[Verdict]:
        """Each pair of models, each item, both presentation orders; ties allowed."""
        await self.complete()
        models = sorted({m for m, _ in self.answers})
        jobs = [
            self.verdict(x, y, item)
            for a, b in itertools.combinations(models, 2)
            for item in self.items
            for x, y in ((a, b), (b, a))
        ]
        found = [v for v in await asyncio.gather(*jobs) if v is not None]
        if jobs and not found:
            raise WorkloadError(
                f"the judge gave no readable verdict in {len(jobs)} comparisons (it must reply "
                "A, B or TIE): check spec.judge.prompt, or use a judge model that follows it"
            )
        return found
