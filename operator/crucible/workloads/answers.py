"""The eval workload's answers: one per model, RAG setting, round and question, appended to a
journal as they arrive, so that a restarted pod asks only what is missing."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from crucible.api.contract import EvalTask
from crucible.api.evalrun import Scoring
from crucible.workloads.common import sha256_of


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
