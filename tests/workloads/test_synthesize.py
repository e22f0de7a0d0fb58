"""The synthesize workload against a deterministic OpenAI-compatible teacher: exact counts of
what is kept and dropped and why, retries, JSON mode and its fallback, preference rows, the
split, reuse of an unchanged result, and the Nitro docs as input."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from crucible.api.contract import ChatEndpoint, SynthTask
from crucible.api.finetunejob import DatasetFormat, InvalidRowPolicy
from crucible.api.ragindex import Chunking
from crucible.api.syntheticdataset import DEFAULT_PROMPT, Filters
from crucible.workloads.common import WorkloadError
from crucible.workloads.datasets import load_examples
from crucible.workloads.synthesize import grounding, parse_pairs, synthesize
from tests.conftest import NITRO, requires_nitro
from tests.workloads.scripted_server import ScriptedServer, serving

NITRO_DOCS = NITRO / "docs"
REFUSED = "Kestrel"  # the teacher refuses to write about the document that mentions it
NOTES = {
    "cache.md": "Crucible caches compiled control plane binaries under the user cache "
    "folder, keyed by version, so only the first setup on a machine pays for the build.",
    "merge.md": "A ModelMerge runs mergekit inside a Job and writes the merged weights "
    "atomically into the model store, with a manifest listing every weight file.",
    "eval.md": "An EvalRun repeats the multiple choice benchmark several rounds and reports "
    "mean accuracy with the sample standard deviation and a confidence interval.",
    "rag.md": "A RagIndex splits markdown at headers, embeds each chunk and upserts vectors "
    "into pgvector inside a single transaction.",
    "other.md": f"The {REFUSED} release notes describe nothing the teacher wants to discuss.",
}


def excerpt(message: str) -> str:
    found = re.search(r"---\n(.*)\n---", message, re.DOTALL)
    assert found, message
    return found.group(1)


def teacher_reply(text: str) -> list[dict[str, str]]:
    """Per chunk: a unique grounded pair, a grounded pair every chunk repeats, an empty one,
    one not grounded in the chunk, and one too long."""
    first = text.split(".", maxsplit=1)[0] + "."
    return [
        {"question": f"What does the note on {text.split()[1]} say?", "answer": first},
        {"question": "What is this about?", "answer": first},
        {"question": " ", "answer": "Nothing."},
        {"question": "Where do penguins vacation?", "answer": "Penguins holiday on volcanoes."},
        {"question": "Tell me everything.", "answer": " ".join([text] * 10)},
    ]


def json_teacher(model: str, user: str, messages: list[dict[str, str]]) -> str:
    text = excerpt(user)
    if REFUSED in text:
        return "I'd rather not."
    return "Sure:\n```json\n" + json.dumps({"pairs": teacher_reply(text)}) + "\n```"


def plain_teacher(model: str, user: str, messages: list[dict[str, str]]) -> str:
    text = excerpt(user)
    if REFUSED in text:
        return "I'd rather not."
    return "\n".join(f"Q: {p['question']}\nA: {p['answer']}" for p in teacher_reply(text))


def write_notes(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in NOTES.items():
        (folder / name).write_text(text + "\n")
    return folder


def make_task(tmp_path: Path, url: str, **overrides: Any) -> SynthTask:
    fields: dict[str, Any] = {
        "namespace": "team",
        "name": "notes",
        "mounts": {"root": "/"},
        "output_uri": "pvc://store/team/syntheticdatasets/notes/",
        "output_path": str(tmp_path / "store" / "notes"),
        "documents_path": str(tmp_path / "docs"),
        "include": ["**/*.md"],
        "chunking": Chunking(),
        "teacher": ChatEndpoint(name="teacher", base_url=url, model="teacher"),
        "pairs_per_chunk": 5,
        "passes": 2,
        "temperature": 0.5,
        "max_tokens": 512,
        "prompt": DEFAULT_PROMPT,
        "format": "chat",
        "validation_fraction": 0.2,
        "filters": Filters(max_pair_tokens=100, min_grounding=0.5),
        "seed": 7,
        "concurrency": 4,
        "settings_hash": "settings-1",
    }
    return SynthTask(**{**fields, **overrides})


@pytest.fixture
def report_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "report.json"
    monkeypatch.setenv("CRUCIBLE_REPORT_FILE", str(path))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_parse_pairs_reads_json_in_any_wrapping_and_qa_lines() -> None:
    pair = {"question": "Q1?", "answer": "A1."}
    assert parse_pairs(json.dumps({"pairs": [pair]})) == [("Q1?", "A1.")]
    assert parse_pairs(json.dumps([pair, {"Q": "Q2?", "A": "A2."}])) == [
        ("Q1?", "A1."),
        ("Q2?", "A2."),
    ]
    assert parse_pairs("Here you go:\n```json\n" + json.dumps(pair) + "\n```\nEnjoy!") == [
        ("Q1?", "A1.")
    ]
    assert parse_pairs("1. Question: Q1?\nAnswer: A1 spans\ntwo lines.\n2. Q: Q2?\nA: A2.") == [
        ("Q1?", "A1 spans\ntwo lines."),
        ("Q2?", "A2."),
    ]
    assert parse_pairs("I cannot help with that.") == []
    assert parse_pairs('{"note": "no pairs here"}') == []


def test_grounding_counts_content_words_found_in_the_chunk() -> None:
    chunk = "Nitro loads a model with the loadmodel endpoint."
    assert grounding("Use the loadmodel endpoint.", chunk) == 1.0
    assert grounding("Call loadmodel, then warm it up.", chunk) == pytest.approx(1 / 3)
    assert grounding("It is.", chunk) == 0.0  # no content words at all


def test_counts_of_kept_and_dropped_pairs_are_exact(tmp_path: Path, report_file: Path) -> None:
    write_notes(tmp_path / "docs")
    server = ScriptedServer(json_teacher, failures={"teacher": [429, 503, 500]})
    with serving(server):
        summary = synthesize(make_task(tmp_path, server.url))
    # 5 chunks (one per note) x 2 passes, each answered once despite three failures.
    assert server.served["teacher"] == 10 and server.requests["teacher"] == 13
    assert all(b["response_format"] == {"type": "json_object"} for b in server.bodies)
    assert all(b["temperature"] == 0.5 for b in server.bodies)
    assert len({b["seed"] for b in server.bodies}) == 10  # every chunk and pass its own seed
    # 4 readable chunks x 2 passes x 5 pairs; per pass and chunk: 1 empty, 1 ungrounded,
    # 1 too long; of the 16 grounded ones 4 unique questions and the shared one survive.
    expected = {
        "generated": 40,
        "kept": 5,
        "train": 4,
        "validation": 1,
        "dropped": {
            "unparsed": 2,
            "empty": 8,
            "duplicate": 11,
            "tooLong": 8,
            "ungrounded": 8,
            "noContrast": 0,
        },
    }
    assert summary["pairs"] == expected
    assert json.loads(report_file.read_text())["pairs"] == expected
    out = tmp_path / "store" / "notes"
    train, validation = read_jsonl(out / "train.jsonl"), read_jsonl(out / "validation.jsonl")
    assert (len(train), len(validation)) == (4, 1)
    questions = sorted(r["messages"][0]["content"] for r in train + validation)
    assert questions.count("What is this about?") == 1 and len(set(questions)) == 5
    for row in train + validation:
        assert row["source"]["document"] in NOTES
        assert row["messages"][1]["content"] in NOTES[row["source"]["document"]]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["jsonMode"] is True and manifest["chunks"] == 5
    assert manifest["teacher"]["model"] == "teacher" and manifest["seed"] == 7
    assert {d["name"] for d in manifest["documents"]} == set(NOTES)
    # What the fine-tune workload reads: every row a valid chat example.
    examples = load_examples(out / "train.jsonl", DatasetFormat.CHAT, None, InvalidRowPolicy.FAIL)
    assert len(examples.rows) == 4


def test_a_server_without_json_mode_is_asked_in_plain_text(
    tmp_path: Path, report_file: Path
) -> None:
    write_notes(tmp_path / "docs")
    server = ScriptedServer(plain_teacher, refused_parameters=("response_format",))
    with serving(server):
        summary = synthesize(make_task(tmp_path, server.url, passes=1))
    assert server.served["teacher"] == 5
    assert all("response_format" not in b for b in server.bodies)
    assert summary["pairs"]["kept"] == 5 and summary["pairs"]["dropped"]["unparsed"] == 1
    manifest = json.loads((tmp_path / "store" / "notes" / "manifest.json").read_text())
    assert manifest["jsonMode"] is False


def test_preference_rows_take_the_rejected_answer_from_the_weaker_model(
    tmp_path: Path, report_file: Path
) -> None:
    write_notes(tmp_path / "docs")

    def script(model: str, user: str, messages: list[dict[str, str]]) -> str:
        if model == "teacher":
            return json_teacher(model, user, messages)
        return "" if user == "What is this about?" else "I am not sure, sorry."

    server = ScriptedServer(script)
    with serving(server):
        summary = synthesize(
            make_task(
                tmp_path,
                server.url,
                format="preference",
                rejected=ChatEndpoint(name="rejected", base_url=server.url, model="weak"),
                validation_fraction=0.0,
            )
        )
    assert server.served["weak"] == 5  # one question per kept pair, asked without the chunk
    assert summary["pairs"]["kept"] == 4 and summary["pairs"]["dropped"]["noContrast"] == 1
    rows = read_jsonl(tmp_path / "store" / "notes" / "train.jsonl")
    assert {r["rejected"] for r in rows} == {"I am not sure, sorry."}
    examples = load_examples(
        tmp_path / "store" / "notes" / "train.jsonl",
        DatasetFormat.PREFERENCE,
        None,
        InvalidRowPolicy.FAIL,
    )
    assert len(examples.rows) == 4


def test_unchanged_documents_and_settings_reuse_the_result(
    tmp_path: Path, report_file: Path
) -> None:
    write_notes(tmp_path / "docs")
    server = ScriptedServer(json_teacher)
    with serving(server):
        first = synthesize(make_task(tmp_path, server.url))
        train = (tmp_path / "store" / "notes" / "train.jsonl").read_bytes()
        assert server.served["teacher"] == 10

        again = synthesize(make_task(tmp_path, server.url))  # e.g. the pod restarted
        assert server.served["teacher"] == 10
        assert again["reusedFrom"] == "pvc://store/team/syntheticdatasets/notes/"
        assert again["pairs"] == first["pairs"]
        assert (tmp_path / "store" / "notes" / "train.jsonl").read_bytes() == train

        sibling = make_task(
            tmp_path,
            server.url,
            name="notes-2",
            output_uri="pvc://store/team/syntheticdatasets/notes-2/",
            output_path=str(tmp_path / "store" / "notes-2"),
        )
        assert synthesize(sibling)["reusedFrom"] == "pvc://store/team/syntheticdatasets/notes/"
        assert (tmp_path / "store" / "notes-2" / "train.jsonl").read_bytes() == train
        assert json.loads(report_file.read_text())["reusedFrom"].endswith("/notes/")
        assert server.served["teacher"] == 10

        (tmp_path / "docs" / "cache.md").write_text(NOTES["cache.md"] + " It is shared.\n")
        synthesize(make_task(tmp_path, server.url))  # a document changed: asked again
        assert server.served["teacher"] == 20
        synthesize(make_task(tmp_path, server.url, settings_hash="settings-2"))
        assert server.served["teacher"] == 30


def test_no_usable_pair_fails_and_writes_nothing(tmp_path: Path, report_file: Path) -> None:
    write_notes(tmp_path / "docs")
    server = ScriptedServer(lambda model, user, messages: "Bananas.")
    with serving(server), pytest.raises(WorkloadError, match=r"no usable pair from 10 teacher"):
        synthesize(make_task(tmp_path, server.url))
    assert not (tmp_path / "store" / "notes").exists()


@requires_nitro
def test_nitro_docs_in_300_token_chunks_become_a_chat_dataset(
    tmp_path: Path, report_file: Path, tokenizer_dir: Path
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    sizes: list[int] = []

    def script(model: str, user: str, messages: list[dict[str, str]]) -> str:
        text = excerpt(user)
        sizes.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
        first = text.strip().splitlines()[-1][:200]
        return json.dumps({"pairs": [{"question": f"About {first[:40]}?", "answer": first}]})

    server = ScriptedServer(script)
    with serving(server):
        summary = synthesize(
            make_task(
                tmp_path,
                server.url,
                documents_path=str(NITRO_DOCS),
                tokenizer_uri=f"pvc://root{tokenizer_dir}",
                passes=1,
                filters=Filters(max_pair_tokens=512, min_grounding=0.5),
            )
        )
    non_empty = [p for p in NITRO_DOCS.rglob("*.md") if p.read_text().strip()]
    assert summary["documents"] == len(non_empty)
    assert summary["chunks"] == len(sizes) > summary["documents"]
    assert max(sizes) <= 300
    counts = summary["pairs"]
    assert counts["kept"] + sum(counts["dropped"].values()) == counts["generated"] == len(sizes)
    out = tmp_path / "store" / "notes"
    examples = load_examples(out / "train.jsonl", DatasetFormat.CHAT, None, InvalidRowPolicy.FAIL)
    assert len(examples.rows) == counts["train"] > 0
