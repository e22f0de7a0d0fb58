"""The fine-tune workload with real trl and peft on tiny models: SFT and DPO learn a toy
set, the adapter reproduces the merged model, a killed run resumes, bad data is named."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from crucible.api.contract import DatasetInput, DocumentsInput, FineTuneTask
from crucible.api.finetunejob import Hyperparameters, Lora
from crucible.workloads.common import WorkloadError
from crucible.workloads.datasets import load_examples
from crucible.workloads.documents import Document
from crucible.workloads.finetune import (
    COMPLETE_MARKER,
    document_blocks,
    last_complete_checkpoint,
    train,
)
from tests.conftest import NITRO, ModelFactory, requires_nitro

torch = pytest.importorskip("torch")
NITRO_QA = NITRO / "training_qa_pairs.csv"
PAIRS = [
    ("What is Crucible?", "A Kubernetes operator for small models."),
    ("What does ModelMerge run?", "mergekit."),
    ("What serves the models?", "vLLM."),
    ("Where do vectors go?", "pgvector."),
]
# Enough steps for a LoRA on a random model to take its loss on PAIRS well under 0.7 of where
# it started (0.47-0.50 over seeds 1-3; at 24 steps 0.63-0.70, too near the bound).
MEMORISING_STEPS = 48


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_task(tmp_path: Path, base: Path, data: Path, **changes: Any) -> FineTuneTask:
    fields: dict[str, Any] = {
        "namespace": "team",
        "name": "ft",
        "mounts": {"root": "/"},
        "output_uri": "pvc://store/team/finetunejobs/ft/adapter/",
        "output_path": str(tmp_path / "ft"),
        "base_model_uri": f"pvc://root{base}",
        "method": "sft",
        "dataset": DatasetInput(path=str(data), format="chat", on_invalid_row="Fail"),
        "lora": Lora(r=8, alpha=16, dropout=0.0),
        "hyperparameters": Hyperparameters(
            learning_rate=5e-3,
            max_steps=MEMORISING_STEPS,
            batch_size=4,
            max_length=128,
            save_steps=100,
            seed=1,
        ),
        "merge_adapter": False,
        "adapter_path": str(tmp_path / "ft" / "adapter"),
        "checkpoint_path": str(tmp_path / "ft" / "checkpoints"),
        "gpus": 0,
    }
    fields.update(changes)
    return FineTuneTask(**fields)


def chat_rows(repeat: int = 8) -> list[dict[str, Any]]:
    return [{"question": q, "answer": a} for q, a in PAIRS] * repeat


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_sft_loss_falls_on_a_memorisable_set(tmp_path: Path, make_model: ModelFactory) -> None:
    data = write_jsonl(tmp_path / "qa.jsonl", chat_rows())
    result = train(make_task(tmp_path, make_model(1), data))
    assert result.global_step == MEMORISING_STEPS
    assert all(math.isfinite(loss) for loss in result.losses)
    assert mean(result.losses[-4:]) < 0.7 * mean(result.losses[:4])
    assert (tmp_path / "ft" / "adapter" / "adapter_config.json").exists()


def test_continued_pretraining_learns_the_documents_text(
    tmp_path: Path, make_model: ModelFactory
) -> None:
    """method cpt: the documents split at their headers into blocks of at most maxLength
    tokens, trained on whole, until the model has their text by heart."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "crucible.md").write_text(
        "# Crucible\nCrucible is a Kubernetes operator for small models.\n\n"
        "## Storage\nResults live in the model store, a PersistentVolumeClaim.\n"
    )
    (docs / "notes.txt").write_text("ignored: not included")
    task = make_task(
        tmp_path,
        make_model(1),
        docs,
        method="cpt",
        dataset=None,
        documents=DocumentsInput(documents_path=str(docs), include=["**/*.md"]),
    )
    result = train(task)
    assert result.global_step == MEMORISING_STEPS
    assert mean(result.losses[-4:]) < 0.7 * mean(result.losses[:4])
    assert (tmp_path / "ft" / "adapter" / "adapter_config.json").exists()


def test_documents_become_blocks_within_max_length(
    tmp_path: Path, make_model: ModelFactory
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(make_model(1))
    long_section = "word " * 300
    document = Document("a.md", f"# One\nshort.\n\n## Two\n{long_section}\n", "sha")
    blocks = document_blocks([document], tokenizer, 64)
    lengths = [
        len(tokenizer(r["text"], add_special_tokens=False)["input_ids"]) for r in blocks.rows
    ]
    assert blocks.rows[0]["text"] == "# One\nshort."
    assert blocks.rows[1]["text"].startswith("## Two")
    assert max(lengths) <= 64 + 2  # a block decoded and tokenized again may shift a token
    assert sum(lengths) >= len(tokenizer(long_section.strip())["input_ids"])


def test_dpo_prefers_the_chosen_answers(tmp_path: Path, make_model: ModelFactory) -> None:
    rows = [{"prompt": q, "chosen": a, "rejected": "I do not know."} for q, a in PAIRS] * 8
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    task = make_task(
        tmp_path,
        make_model(1),
        data,
        method="dpo",
        dataset=DatasetInput(path=str(data), format="preference", on_invalid_row="Fail"),
        hyperparameters=Hyperparameters(
            learning_rate=5e-3, max_steps=16, batch_size=4, max_length=128, beta=0.1
        ),
    )
    result = train(task)
    assert result.losses[0] == pytest.approx(0.6931, abs=0.01)  # log 2: policy == reference
    assert mean(result.losses[-4:]) < 0.5 * result.losses[0]


def test_adapter_reproduces_the_merged_weights(tmp_path: Path, make_model: ModelFactory) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = make_model(1)
    data = write_jsonl(tmp_path / "qa.jsonl", chat_rows(2))
    task = make_task(
        tmp_path,
        base,
        data,
        merge_adapter=True,
        merged_path=str(tmp_path / "ft" / "merged"),
        hyperparameters=Hyperparameters(
            learning_rate=5e-3, max_steps=6, batch_size=4, max_length=128
        ),
    )
    train(task)
    merged_dir = tmp_path / "ft" / "merged"
    # On a GPU the workload trains and merges in bfloat16: the merged weights are rounded to
    # bf16 (logits move by ~6e-3 on this model, measured), float32 elsewhere (~1e-6). All three
    # are compared in float32; the adapter itself moves the logits by ~0.9.
    saved_in_bf16 = json.loads((merged_dir / "config.json").read_text()).get("dtype") == "bfloat16"
    tolerance = 2e-2 if saved_in_bf16 else 1e-4
    tokens = torch.tensor([[5, 17, 42, 99, 300, 7]])
    with torch.no_grad():
        adapted = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
            tmp_path / "ft" / "adapter",
        )
        merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
        plain = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        a, m, p = (model(tokens).logits for model in (adapted, merged, plain))
    assert torch.allclose(a, m, atol=tolerance)
    assert not torch.allclose(a, p, atol=10 * tolerance)  # the adapter did change something


class SimulatedCrashError(Exception):
    pass


def test_an_interrupted_run_resumes_from_its_checkpoint(
    tmp_path: Path, make_model: ModelFactory
) -> None:
    from transformers import TrainerCallback

    class DieAtStep3(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if state.global_step == 3:
                raise SimulatedCrashError

    data = write_jsonl(tmp_path / "qa.jsonl", chat_rows())
    task = make_task(
        tmp_path,
        make_model(1),
        data,
        hyperparameters=Hyperparameters(
            learning_rate=5e-3, max_steps=6, batch_size=4, max_length=128, save_steps=2
        ),
    )
    with pytest.raises(SimulatedCrashError):
        train(task, callbacks=(DieAtStep3(),))
    assert not (tmp_path / "ft" / "adapter").exists()  # nothing half-written
    result = train(task)
    assert result.resumed_from == 2
    assert (tmp_path / "ft" / "checkpoints" / "checkpoint-6" / COMPLETE_MARKER).is_file()
    assert result.global_step == 6
    assert len(result.losses) == 4  # steps 3 to 6 only


@requires_nitro
def test_nitro_qa_pairs_load_as_chat(tmp_path: Path) -> None:
    examples = load_examples(NITRO_QA, "chat", "You answer questions about Nitro.", "Fail")
    assert len(examples.rows) == 3000
    first = examples.rows[0]["messages"]
    assert [m["role"] for m in first] == ["system", "user", "assistant"]
    assert first[1]["content"] == "What is model warming up in the context of Nitro?"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "the file is empty"),
        (
            '{"question": "Q?", "answer": "A."}\n{"question": "Q2?"}\n',
            "row 2, column 'answer': column 'answer' is missing",
        ),
        (
            '{"question": "Q?", "answer": "  "}\n',
            "row 1, column 'answer': column 'answer' is empty",
        ),
        ('{"text": "Q?"}\n', "a chat row needs 'messages', or 'question' and 'answer'"),
        ("not json\n", "row 1: not valid JSON"),
        # Blank lines are skipped, not renumbered: the error names the line in the file.
        (
            '{"question": "Q?", "answer": "A."}\n\n\n{"question": "Q2?"}\n',
            "row 4, column 'answer': column 'answer' is missing",
        ),
    ],
)
def test_bad_data_is_named(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(content)
    with pytest.raises(WorkloadError) as error:
        load_examples(path, "chat", None, "Fail")
    assert str(path) in str(error.value) and message in str(error.value)


def test_csv_rows_are_numbered_as_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    path.write_text('prompt,chosen,rejected\n"Q?","A","B"\n"Q2?","","B"\n')
    with pytest.raises(WorkloadError) as error:
        load_examples(path, "preference", None, "Fail")
    assert "row 3, column 'chosen'" in str(error.value)
    skipped = load_examples(path, "preference", None, "Skip")
    assert len(skipped.rows) == 1 and sum(skipped.skipped.values()) == 1


def test_rows_over_max_length_fail_or_are_skipped(tmp_path: Path, make_model: ModelFactory) -> None:
    rows = [*chat_rows(1), {"question": "long " * 400, "answer": "x"}]
    data = write_jsonl(tmp_path / "qa.jsonl", rows)
    with pytest.raises(WorkloadError) as error:
        train(make_task(tmp_path, make_model(1), data))
    assert "row 5" in str(error.value) and "maxLength (128)" in str(error.value)
    task = make_task(
        tmp_path,
        make_model(1),
        data,
        dataset=DatasetInput(path=str(data), format="chat", on_invalid_row="Skip"),
        hyperparameters=Hyperparameters(max_steps=2, batch_size=2, max_length=128),
    )
    assert train(task).skipped == {"longer than maxLength (128 tokens)": 1}


def test_qlora_without_a_gpu_says_so(tmp_path: Path, make_model: ModelFactory) -> None:
    data = write_jsonl(tmp_path / "qa.jsonl", chat_rows(1))
    task = make_task(tmp_path, make_model(1), data, lora=Lora(r=8, load_in_4bit=True))
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(WorkloadError) as error:
        train(task)
    assert "spec.lora.loadIn4bit" in str(error.value) and "GPU" in str(error.value)


def test_command_line_reports_progress(tmp_path: Path, make_model: ModelFactory) -> None:
    data = write_jsonl(tmp_path / "qa.jsonl", chat_rows(1))
    task = make_task(
        tmp_path,
        make_model(1),
        data,
        hyperparameters=Hyperparameters(max_steps=2, batch_size=2, max_length=128),
    )
    (tmp_path / "task.json").write_text(task.model_dump_json(by_alias=True))
    report = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "crucible.workloads.finetune",
            "--task",
            str(tmp_path / "task.json"),
        ],
        capture_output=True,
        text=True,
        env={"CRUCIBLE_REPORT_FILE": str(report), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    final = json.loads(report.read_text())
    assert final["progress"]["step"] == 2 and final["progress"]["loss"] > 0
    assert final["message"] == "trained 2 steps"


def test_a_checkpoint_cut_off_mid_write_is_never_resumed_from(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        (checkpoints / f"checkpoint-{step}").mkdir(parents=True)
    for step in (2, 4):  # checkpoint-6 was being written when the node was lost
        (checkpoints / f"checkpoint-{step}" / COMPLETE_MARKER).write_text(f"{step}\n")
    assert last_complete_checkpoint(checkpoints) == (4, checkpoints / "checkpoint-4")
    assert last_complete_checkpoint(tmp_path / "none-yet") is None
