"""The quickstart's evaluation questions stay out of its training data. The fine-tunes read
Crucible's documentation and Q&A pairs about it, which state the facts the questions ask
about, in the documentation's words; what must not be there is the questions themselves. The
bounds, each met with room to spare by today's data:

- no training text shares a run of 8 words with any question (the longest shared run today
  is 7 words, a phrase of the documentation that a question quotes);
- no training text holds all three wrong options of a question (at most two today: the
  documentation lists the phases a question offers as wrong answers);
- no training row's words overlap a question's words with its four options by a Jaccard
  index of 0.6 or more (0.57 at most today)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from tests.conftest import QUICKSTART

MAX_SHARED_RUN = 7
MAX_JACCARD = 0.6


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9_]+", text.lower())


def training_texts() -> list[str]:
    """Every text the quickstart trains on: its Q&A rows (prompt and completion), and the
    sections of the documents its continued pre-training reads."""
    rows = [json.loads(line) for line in (QUICKSTART / "qa.jsonl").read_text().splitlines()]
    texts = [" ".join(str(v) for v in row.values()) for row in rows]
    for document in sorted((QUICKSTART / "docs").glob("*.md")):
        texts += re.split(r"\n(?=#{1,6} )", document.read_text())
    return texts


def questions(path: Path = QUICKSTART / "mcq.csv") -> list[dict[str, str]]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


def option(text: str) -> str:
    return " ".join(words(re.sub(r"^\(?[A-D][.):]\s*", "", text)))


def runs(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def test_no_training_text_shares_a_long_run_of_words_with_a_question() -> None:
    texts = [words(t) for t in training_texts()]
    for question in questions():
        asked = runs(words(question["question"]), MAX_SHARED_RUN + 1)
        for text in texts:
            assert not asked & runs(text, MAX_SHARED_RUN + 1), question["question"]


def test_no_training_text_holds_a_questions_wrong_options() -> None:
    texts = [f" {' '.join(words(t))} " for t in training_texts()]
    for question in questions():
        wrong = [option(question[k]) for k in "abcd" if k.upper() != question["correct"]]
        for text in texts:
            assert sum(f" {w} " in text for w in wrong) < len(wrong), question["question"]


def test_no_training_row_restates_a_question_with_its_options() -> None:
    texts = [set(words(t)) for t in training_texts()]
    for question in questions():
        item = set(words(" ".join(question[k] for k in ("question", "a", "b", "c", "d"))))
        for text in texts:
            assert len(item & text) / len(item | text) < MAX_JACCARD, question["question"]
