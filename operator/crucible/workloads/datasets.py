"""Training rows from JSONL or CSV, in the chat, prompt-completion or preference format.
A bad row fails with the file, row and column named — or, where the spec says Skip, is
dropped and counted with its reason."""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crucible.api.finetunejob import DatasetFormat, InvalidRowPolicy
from crucible.workloads.common import WorkloadError

# Columns a chat row may have instead of `messages` (the Nitro Q&A pairs use question/answer).
CHAT_COLUMN_PAIRS = (("question", "answer"), ("instruction", "response"), ("prompt", "response"))
REQUIRED = {
    DatasetFormat.PROMPT_COMPLETION: ("prompt", "completion"),
    DatasetFormat.PREFERENCE: ("prompt", "chosen", "rejected"),
}


class BadRowError(ValueError):
    def __init__(self, column: str | None, problem: str) -> None:
        super().__init__(problem)
        self.column = column
        self.problem = problem


@dataclass
class Examples:
    rows: list[dict[str, Any]]
    numbers: list[int] = field(default_factory=list)  # each row's line/row in the file
    skipped: Counter[str] = field(default_factory=Counter)

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1


def read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Rows of a .jsonl/.json (one object per line) or .csv file (cells may span lines), each
    with the number an error names it by: its line in a JSONL file (blank lines skipped but
    counted), its record in a CSV file (the header being row 1)."""
    if not path.exists():
        raise WorkloadError(f"dataset {path}: no such file")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise WorkloadError(f"dataset {path}: the file is empty")
    if path.suffix.lower() == ".csv":
        return list(enumerate(csv.DictReader(text.splitlines(keepends=True)), start=2))
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise WorkloadError(
                f"dataset {path}, row {number}: not valid JSON ({error.msg})"
            ) from None
        if not isinstance(row, dict):
            raise WorkloadError(f"dataset {path}, row {number}: expected a JSON object")
        rows.append((number, row))
    return rows


def _text(row: dict[str, Any], column: str) -> str:
    if column not in row or row[column] is None:
        raise BadRowError(column, f"column {column!r} is missing")
    value = row[column]
    if not isinstance(value, str) or not value.strip():
        raise BadRowError(column, f"column {column!r} is empty or not text")
    return value.strip()


def _chat(row: dict[str, Any], system_prompt: str | None) -> dict[str, Any]:
    if "messages" in row:
        messages = row["messages"]
        if (
            not isinstance(messages, list)
            or not messages
            or not all(
                isinstance(m, dict)
                and isinstance(m.get("content"), str)
                and m.get("role") in ("system", "user", "assistant")
                for m in messages
            )
        ):
            raise BadRowError(
                "messages",
                "column 'messages' must be a list of {role: system|user|assistant, content: text}",
            )
    else:
        pair = next((p for p in CHAT_COLUMN_PAIRS if p[0] in row), None)
        if pair is None:
            raise BadRowError(
                None,
                "a chat row needs 'messages', or 'question' and 'answer' "
                f"columns (it has: {', '.join(sorted(row)) or 'none'})",
            )
        messages = [
            {"role": "user", "content": _text(row, pair[0])},
            {"role": "assistant", "content": _text(row, pair[1])},
        ]
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return {"messages": messages}


def to_example(
    row: dict[str, Any], fmt: DatasetFormat, system_prompt: str | None
) -> dict[str, Any]:
    if fmt == DatasetFormat.CHAT:
        return _chat(row, system_prompt)
    return {column: _text(row, column) for column in REQUIRED[fmt]}


def load_examples(
    path: Path, fmt: DatasetFormat, system_prompt: str | None, policy: InvalidRowPolicy
) -> Examples:
    examples = Examples(rows=[])
    for number, row in read_rows(path):
        try:
            examples.rows.append(to_example(row, DatasetFormat(fmt), system_prompt))
            examples.numbers.append(number)
        except BadRowError as bad:
            if policy == InvalidRowPolicy.SKIP:
                examples.skip(bad.problem)
                continue
            where = f"dataset {path}, row {number}" + (
                f", column {bad.column!r}" if bad.column else ""
            )
            raise WorkloadError(
                f"{where}: {bad.problem} (spec.dataset.onInvalidRow: Skip drops such rows)"
            ) from None
    if not examples.rows:
        raise WorkloadError(f"dataset {path}: no usable rows ({dict(examples.skipped)})")
    return examples
