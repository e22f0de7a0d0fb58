"""Open prompts for the judge: what every model answers and the judge compares pairwise."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from crucible.workloads.common import WorkloadError


def load_prompts(path: Path) -> list[str]:
    """JSONL with a "prompt" field per line (blank lines skipped), or CSV with a "prompt"
    column; an error names the line or row as the file numbers it."""
    if not path.exists():
        raise WorkloadError(f"prompts {path}: no such file")
    prompts: list[str] = []
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as stream:
            reader = csv.DictReader(stream)
            if "prompt" not in (reader.fieldnames or []):
                raise WorkloadError(f"prompts {path}: no 'prompt' column")
            rows = [(reader.line_num, row.get("prompt")) for row in reader]
    else:
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise WorkloadError(f"prompts {path}, line {number}: not JSON ({error})") from None
            rows.append((number, row.get("prompt") if isinstance(row, dict) else None))
    for number, text in rows:
        if not isinstance(text, str) or not text.strip():
            raise WorkloadError(
                f"prompts {path}, line {number}: no prompt; give each line a non-empty prompt"
            )
        prompts.append(text.strip())
    if not prompts:
        raise WorkloadError(f"prompts {path}: no prompts")
    return prompts
