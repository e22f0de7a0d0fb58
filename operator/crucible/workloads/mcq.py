"""Multiple-choice questions: reading the benchmark file, asking, and reading the answer."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from crucible.workloads.common import WorkloadError

LETTERS = ("A", "B", "C", "D")
DEFAULT_SYSTEM_PROMPT = (
    "You answer multiple-choice questions about software documentation. Read the question "
    "and the four options, then answer with the letter of the one correct option (A, B, C or "
    "D) and nothing else."
)
RAG_PREAMBLE = "Use this context from the documentation when it helps:\n\n{context}\n\n"


@dataclass(frozen=True)
class Question:
    number: int
    text: str
    options: dict[str, str]
    correct: str


def load_questions(path: Path) -> list[Question]:
    """question, a, b, c, d, correct — cells may span lines (the Nitro file's do)."""
    if not path.exists():
        raise WorkloadError(f"questions {path}: no such file")
    with path.open(newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        missing = {"question", "a", "b", "c", "d", "correct"} - set(reader.fieldnames or [])
        if missing:
            raise WorkloadError(
                f"questions {path}: missing columns {sorted(missing)}; expected "
                "question, a, b, c, d, correct"
            )
        questions = []
        for number, row in enumerate(reader, start=1):
            correct = (row["correct"] or "").strip().upper()[:1]
            if correct not in LETTERS:
                raise WorkloadError(
                    f"questions {path}, question {number}, column 'correct': "
                    f"{row['correct']!r} is not one of A, B, C, D"
                )
            options = {letter: _option(letter, row[letter.lower()]) for letter in LETTERS}
            if not options[correct]:
                raise WorkloadError(
                    f"questions {path}, question {number}, column {correct.lower()!r}: the "
                    "correct option is empty; give it its text"
                )
            questions.append(Question(number, row["question"].strip(), options, correct))
    if not questions:
        raise WorkloadError(f"questions {path}: no questions")
    return questions


def _option(letter: str, text: str) -> str:
    text = (text or "").strip()
    return re.sub(rf"^\(?{letter}[.):]\s*", "", text, count=1)


def prompt(question: Question, context: str | None = None) -> str:
    options = "\n".join(f"{letter}. {question.options[letter]}" for letter in LETTERS)
    preamble = RAG_PREAMBLE.format(context=context) if context else ""
    return f"{preamble}Question: {question.text}\n\n{options}\n\nAnswer:"


def cloze(question: Question, context: str | None = None) -> tuple[str, dict[str, str]]:
    """lm-evaluation-harness's multiple-choice form: the question as a text to continue, and
    each option as a continuation of it, whose likelihood is scored. An empty option has no
    text to score and is no candidate (the Nitro set has one)."""
    preamble = RAG_PREAMBLE.format(context=context) if context else ""
    return (
        f"{preamble}Question: {question.text}\nAnswer:",
        {letter: f" {text}" for letter, text in question.options.items() if text},
    )


# "Answer: C", "The answer is C", "option C" — an explicit statement wins over other letters.
_EXPLICIT = re.compile(r"\b(?i:answer|option|choice)\s*(?i:is)?\s*:?\s*\(?([ABCD])\b\)?")
# "C", "C.", "(C)", "C) because", "it is C." — a letter standing on its own.
_STANDALONE = re.compile(r"(?<![A-Za-z])\(?([ABCD])\)?(?![A-Za-z])")


def parse_answer(text: str) -> str | None:
    """The one letter the answer gives, or None when it gives none or several (counted as
    wrong and recorded as unparsed)."""
    explicit = {m.group(1) for m in _EXPLICIT.finditer(text)}
    if len(explicit) == 1:
        return explicit.pop()
    if explicit:
        return None
    letters = {m.group(1) for m in _STANDALONE.finditer(text)}
    return letters.pop() if len(letters) == 1 else None
