"""The synthesize workload: documents → chunks → a teacher model writes question/answer pairs
about each chunk (several passes, bounded concurrency, retries) → pairs that are unreadable,
empty, too long, not grounded in their chunk or duplicated are dropped and counted → JSONL
(chat or preference rows) split into train and validation, with a manifest. The same
documents and settings reuse an earlier result instead of asking the teacher again."""

from __future__ import annotations

import asyncio
import json
import random
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from crucible.api.contract import SynthTask
from crucible.api.syntheticdataset import DroppedPairs, PairCounts, SyntheticFormat
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
from crucible.workloads.documents import (
    TokenCounter,
    TokenizerCounter,
    WordCounter,
    chunk,
    content_hash,
    documents_of,
)
from crucible.workloads.openai_client import TIMEOUT, Client

TRAIN_FILE = "train.jsonl"
VALIDATION_FILE = "validation.jsonl"
MANIFEST_FILE = "manifest.json"
JSON_MODE = {"response_format": {"type": "json_object"}}
REJECTED_SYSTEM_PROMPT = "Answer the user's question briefly."
# Words too common to show that an answer comes from its chunk.
STOPWORDS = frozenset(
    re.findall(
        r"\w+",
        "a an and are as at be but by can do does for from has have how if in into is it "
        "its not of on or so than that the their then there these this to was were what "
        "when where which who why will with you your yes no also any all use used using ",
    )
)


@dataclass(frozen=True)
class Chunk:
    document: str
    number: int
    text: str


@dataclass(frozen=True)
class Pair:
    question: str
    answer: str
    chunk: Chunk
    pass_: int


# -- parsing the teacher's replies --------------------------------------------------------


def _pairs_in(value: Any) -> list[tuple[str, str]] | None:
    """(question, answer) tuples of a decoded JSON value, None when it holds none."""
    if isinstance(value, dict):
        lowered = {str(k).lower(): v for k, v in value.items()}
        question = lowered.get("question", lowered.get("q"))
        answer = lowered.get("answer", lowered.get("a"))
        if question is not None or answer is not None:
            return [(str(question or ""), str(answer or ""))]
        nested = next((v for v in lowered.values() if isinstance(v, list)), None)
        return _pairs_in(nested) if nested is not None else None
    if isinstance(value, list):
        found = [p for item in value for p in (_pairs_in(item) or [])]
        return found or None
    return None


QA_LINES = re.compile(
    r"(?:^|\n)\s*(?:\d+[.)]\s*)?(?:\*\*)?(?:Q|Question)\s*\d*\s*[:.](?:\*\*)?\s*(?P<q>.+?)\s*\n"
    r"\s*(?:\*\*)?(?:A|Answer)\s*\d*\s*[:.](?:\*\*)?\s*(?P<a>.+?)(?=\n\s*(?:\d+[.)]\s*)?"
    r"(?:\*\*)?(?:Q|Question)\s*\d*\s*[:.]|\Z)",
    re.IGNORECASE | re.DOTALL,
)


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """Pairs from a reply: JSON (whole, fenced or embedded in prose), else Q:/A: lines.
    An empty list means the reply could not be read."""
    cleaned = re.sub(r"```(?:json)?", "", text, flags=re.IGNORECASE).strip()
    decoder = json.JSONDecoder()
    for start in [0, *(m.start() for m in re.finditer(r"[\[{]", cleaned))]:
        try:
            value, _ = decoder.raw_decode(cleaned, start)
        except ValueError:
            continue
        pairs = _pairs_in(value)
        if pairs:
            return pairs
    return [(m["q"].strip(), m["a"].strip()) for m in QA_LINES.finditer(cleaned)]


# -- filters --------------------------------------------------------------------------------


def normalize(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def grounding(answer: str, chunk_text: str) -> float:
    """Fraction of the answer's content words that occur in the chunk (0 when it has none)."""
    words = [w for w in normalize(answer).split() if len(w) > 2 and w not in STOPWORDS]
    if not words:
        return 0.0
    vocabulary = set(normalize(chunk_text).split())
    return sum(w in vocabulary for w in words) / len(words)


class Sieve:
    """Decides, pair by pair, what is kept, and counts why the rest is dropped."""

    def __init__(self, task: SynthTask, counter: TokenCounter) -> None:
        self.task = task
        self.counter = counter
        self.seen: set[str] = set()
        self.dropped: Counter[str] = Counter()

    def keep(self, pair: Pair) -> bool:
        reason = self.reason(pair)
        if reason is not None:
            self.dropped[reason] += 1
            return False
        self.seen.add(normalize(pair.question))
        return True

    def reason(self, pair: Pair) -> str | None:
        filters = self.task.filters
        if not pair.question.strip() or not pair.answer.strip():
            return "empty"
        if self.counter.count(f"{pair.question}\n{pair.answer}") > filters.max_pair_tokens:
            return "too_long"
        if (
            filters.min_grounding
            and grounding(pair.answer, pair.chunk.text) < filters.min_grounding
        ):
            return "ungrounded"
        if normalize(pair.question) in self.seen:
            return "duplicate"
        return None


# -- generation -----------------------------------------------------------------------------


def teacher_prompt(task: SynthTask, text: str) -> str:
    return task.prompt.replace("{chunk}", text).replace("{pairs}", str(task.pairs_per_chunk))


async def generate(
    task: SynthTask, chunks: list[Chunk], reporter: Reporter
) -> tuple[list[Pair], int, bool]:
    """Every chunk in every pass, each asked once: the pairs read, the unreadable replies,
    and whether JSON mode was used."""
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        client = Client(session, task.concurrency)

        async def ask(chunk_: Chunk, seed: int) -> str:
            prompt = teacher_prompt(task, chunk_.text)
            messages = [{"role": "user", "content": prompt}]
            reply, _ = await client.chat(
                task.teacher,
                messages,
                task.temperature,
                task.max_tokens,
                seed,
                optional=JSON_MODE,
            )
            return reply

        pairs: list[Pair] = []
        unparsed = 0
        for pass_ in range(task.passes):
            seeds = [task.seed + pass_ * len(chunks) + i for i in range(len(chunks))]
            replies = await asyncio.gather(*(ask(c, s) for c, s in zip(chunks, seeds, strict=True)))
            for chunk_, reply in zip(chunks, replies, strict=True):
                read = parse_pairs(reply)
                unparsed += not read
                pairs += [Pair(q.strip(), a.strip(), chunk_, pass_) for q, a in read]
            log.info("pass %d/%d: %d pairs so far", pass_ + 1, task.passes, len(pairs))
            reporter.update(
                message=f"pass {pass_ + 1}/{task.passes}: {len(pairs)} pairs read so far"
            )
        return pairs, unparsed, task.teacher.name not in client.refused


async def rejected_answers(task: SynthTask, questions: list[str]) -> list[str]:
    assert task.rejected is not None
    rejected = task.rejected
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        client = Client(session, task.concurrency)
        replies = await asyncio.gather(
            *(
                client.chat(
                    rejected,
                    [
                        {"role": "system", "content": REJECTED_SYSTEM_PROMPT},
                        {"role": "user", "content": q},
                    ],
                    task.temperature,
                    task.max_tokens,
                    task.seed + i,
                )
                for i, q in enumerate(questions)
            )
        )
    return [text.strip() for text, _ in replies]


def rows_of(task: SynthTask, kept: list[Pair], dropped: Counter[str]) -> list[dict[str, Any]]:
    def source(pair: Pair) -> dict[str, Any]:
        return {"document": pair.chunk.document, "chunk": pair.chunk.number, "pass": pair.pass_}

    if task.format == SyntheticFormat.CHAT:
        return [
            {
                "messages": [
                    {"role": "user", "content": p.question},
                    {"role": "assistant", "content": p.answer},
                ],
                "source": source(p),
            }
            for p in kept
        ]
    rejected = asyncio.run(rejected_answers(task, [p.question for p in kept]))
    rows = []
    for pair, answer in zip(kept, rejected, strict=True):
        if not answer or normalize(answer) == normalize(pair.answer):
            dropped["no_contrast"] += 1
            continue
        rows.append(
            {
                "prompt": pair.question,
                "chosen": pair.answer,
                "rejected": answer,
                "source": source(pair),
            }
        )
    return rows


# -- output ---------------------------------------------------------------------------------


def earlier_result(task: SynthTask, digest: str) -> Path | None:
    """An output of this or a sibling SyntheticDataset made from the same content hash."""
    output = Path(task.output_path)
    candidates = [output, *sorted(p for p in output.parent.glob("*") if p != output)]
    for folder in candidates:
        manifest = folder / MANIFEST_FILE
        try:
            if json.loads(manifest.read_text()).get("contentHash") == digest:
                return folder
        except (OSError, ValueError):
            continue
    return None


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def counter_for(task: SynthTask) -> TokenCounter:
    if task.tokenizer_uri is None:
        return WordCounter()
    from transformers import AutoTokenizer

    path = resolve_uri(task.tokenizer_uri, task.mounts, Path(task.output_path).parent / ".cache")
    return TokenizerCounter(AutoTokenizer.from_pretrained(path))


def synthesize(task: SynthTask) -> dict[str, Any]:
    started = time.monotonic()
    reporter = Reporter(task)
    output = Path(task.output_path)
    documents = documents_of(task, output.parent / ".cache")
    digest = content_hash(task.settings_hash, documents)
    earlier = earlier_result(task, digest)
    if earlier is not None:
        return reuse(task, earlier, reporter)

    counter = counter_for(task)
    chunks = [
        Chunk(d.name, n, node.get_content())
        for d in documents
        for n, node in enumerate(chunk(d, task.chunking, counter))
    ]
    reporter.update(documents=len(documents), chunks=len(chunks))
    pairs, unparsed, json_mode = asyncio.run(generate(task, chunks, reporter))
    sieve = Sieve(task, counter)
    kept = [p for p in pairs if sieve.keep(p)]
    dropped = sieve.dropped
    dropped["unparsed"] = unparsed
    rows = rows_of(task, kept, dropped)
    random.Random(task.seed).shuffle(rows)
    held_out = round(len(rows) * task.validation_fraction)
    counts = PairCounts(
        generated=len(pairs),
        kept=len(rows),
        train=len(rows) - held_out,
        validation=held_out,
        dropped=DroppedPairs(**dropped),
    )
    if not rows:
        raise WorkloadError(
            f"no usable pair from {len(chunks) * task.passes} teacher replies "
            f"({len(pairs)} pairs read; dropped: {describe(counts.dropped)}); check the "
            "teacher, spec.prompt and spec.filters"
        )
    with atomic_directory(output) as staging:
        write_jsonl(staging / TRAIN_FILE, rows[held_out:])
        write_jsonl(staging / VALIDATION_FILE, rows[:held_out])
        write_json(
            staging / MANIFEST_FILE,
            {
                "contentHash": digest,
                "settingsHash": task.settings_hash,
                "createdAt": datetime.now(UTC).isoformat(),
                "teacher": task.teacher.to_api(),
                "rejected": task.rejected.to_api() if task.rejected else None,
                "jsonMode": json_mode,
                "prompt": task.prompt,
                "seed": task.seed,
                "temperature": task.temperature,
                "passes": task.passes,
                "pairsPerChunk": task.pairs_per_chunk,
                "format": task.format,
                "tokenizer": task.tokenizer_uri or "words",
                "documents": [{"name": d.name, "sha256": d.sha256} for d in documents],
                "chunks": len(chunks),
                "pairs": counts.to_api(),
                "files": {f: sha256_of(staging / f) for f in (TRAIN_FILE, VALIDATION_FILE)},
            },
        )
    summary = {
        "documents": len(documents),
        "chunks": len(chunks),
        "pairs": counts.to_api(),
        "contentHash": digest,
        "seconds": round(time.monotonic() - started, 3),
    }
    log.info("synthesized: %s", summary)
    reporter.finish(
        documents=len(documents),
        chunks=len(chunks),
        pairs=counts,
        content_hash=digest,
        message=f"{counts.kept} of {counts.generated} pairs kept "
        f"({describe(counts.dropped)} dropped) in {summary['seconds']} s",
    )
    return summary


def describe(dropped: DroppedPairs) -> str:
    return ", ".join(f"{k} {v}" for k, v in dropped.to_api().items() if v) or "none"


def reuse(task: SynthTask, earlier: Path, reporter: Reporter) -> dict[str, Any]:
    """The earlier result, copied in place (unless it is this run's own, from a restart)."""
    manifest = json.loads((earlier / MANIFEST_FILE).read_text())
    output = Path(task.output_path)
    if earlier != output:
        with atomic_directory(output) as staging:
            for name in (TRAIN_FILE, VALIDATION_FILE, MANIFEST_FILE):
                shutil.copyfile(earlier / name, staging / name)
    source = task.output_uri.rstrip("/").rsplit("/", 1)[0] + f"/{earlier.name}/"
    counts = PairCounts.model_validate(manifest["pairs"])
    reporter.finish(
        documents=len(manifest["documents"]),
        chunks=manifest["chunks"],
        pairs=counts,
        content_hash=manifest["contentHash"],
        reused_from=source,
        message=f"documents and settings unchanged: reused {source} ({counts.kept} pairs)",
    )
    log.info("reused %s", source)
    return {"reusedFrom": source, "pairs": counts.to_api()}


def main(argv: list[str] | None = None) -> int:
    return run_main(synthesize, argv, SynthTask, "Generate Q&A pairs from documents.")


if __name__ == "__main__":
    raise SystemExit(main())
