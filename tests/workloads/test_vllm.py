"""The workloads that talk to models, against a real OpenAI-compatible server: vLLM's CPU
build serving a tiny model made on the spot. Every request the evaluator and the synthesizer
make is answered exactly once, which vLLM's own request counter confirms."""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crucible.api.contract import ChatEndpoint, DataFile, EvalTask
from crucible.api.evalrun import ModelResult
from crucible.devcluster.cluster import free_port
from crucible.workloads.common import WorkloadError
from crucible.workloads.evaluate import evaluate
from crucible.workloads.mcq import cloze, load_questions
from crucible.workloads.synthesize import synthesize
from tests.conftest import ROOT, ModelFactory, wait_for
from tests.workloads.test_evaluate import write_mcq
from tests.workloads.test_synthesize import make_task as make_synth_task
from tests.workloads.test_synthesize import write_notes


def vllm_python() -> str:
    out = subprocess.run(
        [str(ROOT / "hack" / "setup-vllm.sh")],
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    return out.stdout.strip().splitlines()[-1]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except OSError:
        return 0, ""


@pytest.fixture(scope="module")
def vllm_server(
    tmp_path_factory: pytest.TempPathFactory, make_model: ModelFactory
) -> Iterator[str]:
    model = make_model(1, max_position_embeddings=2048)
    home = tmp_path_factory.mktemp("vllm-home")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HOME": str(home), "TMPDIR": str(home)}
    log = (home / "vllm.log").open("wb")
    process = subprocess.Popen(
        [
            vllm_python(),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model),
            "--served-model-name",
            "tiny",
            "--dtype",
            "float32",
            "--max-model-len",
            "2048",
            "--kv-cache-memory-bytes",
            str(64 * 1024 * 1024),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=home,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError("vLLM exited: " + (home / "vllm.log").read_text()[-3000:])
            return get(url + "/health")[0] == 200

        wait_for(ready, timeout=300, interval=1, what="vLLM to serve")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def successes(url: str) -> float:
    _, metrics = get(url + "/metrics")
    found = re.findall(r"^vllm:request_success_total\{[^}]*\} ([0-9.e+]+)$", metrics, re.M)
    return sum(float(v) for v in found)


def evaluate_tiny(
    url: str, tmp_path: Path, **settings: Any
) -> tuple[ModelResult, list[dict[str, Any]]]:
    """12 questions against the tiny model: its result and every answer recorded."""
    task = EvalTask(
        namespace="team",
        name="bench",
        output_uri="pvc://s/",
        output_path=str(tmp_path / "out"),
        endpoints=[ChatEndpoint(name="tiny", base_url=url + "/v1", model="tiny")],
        dataset=DataFile(path=str(write_mcq(tmp_path / "mcq.csv", 12))),
        seed=5,
        temperature=0.8,
        concurrency=6,
        **settings,
    )
    (result,) = evaluate(task)
    results = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    return result, [json.loads(line) for line in results]


def test_every_question_is_asked_and_answered_once(vllm_server: str, tmp_path: Path) -> None:
    before = successes(vllm_server)
    result, answers = evaluate_tiny(vllm_server, tmp_path, repeats=3, max_tokens=8)
    assert len(answers) == 36 and result.n == 3 and result.questions == 12
    assert {(a["round"], a["question"]) for a in answers} == {
        (r, q) for r in range(3) for q in range(1, 13)
    }
    assert result.unparsed == sum(a["parsed"] is None for a in answers)
    assert 0.0 <= result.accuracy_mean <= 1.0
    assert result.accuracy_mean == pytest.approx(sum(a["correct"] for a in answers) / 36)
    assert successes(vllm_server) - before == 36


def test_constrained_answers_are_always_one_letter(vllm_server: str, tmp_path: Path) -> None:
    """vLLM's structured outputs make even a random model answer with a letter."""
    before = successes(vllm_server)
    result, answers = evaluate_tiny(
        vllm_server, tmp_path, repeats=2, max_tokens=4, constrain_answers=True
    )
    assert result.unparsed == 0
    assert {a["text"].strip() for a in answers} <= {"A", "B", "C", "D"}
    assert successes(vllm_server) - before == 24


def test_log_likelihood_scores_are_the_models_own(
    vllm_server: str, tmp_path: Path, make_model: ModelFactory
) -> None:
    """One request per question (vLLM counts its four prompts, one per option, as four); the
    option log-likelihoods vLLM returns equal the model's, computed directly with
    transformers on the same tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    before = successes(vllm_server)
    result, answers = evaluate_tiny(
        vllm_server, tmp_path, repeats=3, max_tokens=8, scoring="LogLikelihood"
    )
    assert successes(vllm_server) - before == 12 * 4
    assert (result.scoring, result.n, result.accuracy_stddev) == ("LogLikelihood", 1, None)
    assert len(answers) == 12 and all(a["scoring"] == "LogLikelihood" for a in answers)
    assert result.ci95_low <= result.accuracy_mean <= result.ci95_high
    assert result.accuracy_norm is not None

    folder = make_model(1, max_position_embeddings=2048)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    questions = {q.number: q for q in load_questions(tmp_path / "mcq.csv")}
    for answer in answers[:3]:
        context, continuations = cloze(questions[answer["question"]])
        shared = len(tokenizer(context).input_ids)
        expected = []
        for continuation in continuations.values():
            ids = tokenizer(context + continuation, return_tensors="pt").input_ids
            with torch.no_grad():
                logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
            expected.append(
                sum(float(logprobs[t - 1, ids[0, t]]) for t in range(shared, ids.shape[1]))
            )
        assert answer["loglikelihoods"] == pytest.approx(expected, abs=2e-3)


def test_synthesize_asks_the_teacher_once_per_chunk_and_pass(
    vllm_server: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """JSON mode goes through vLLM's structured output; a random model writes no usable pair,
    so the run fails saying so — after exactly one request per chunk and pass."""
    monkeypatch.setenv("CRUCIBLE_REPORT_FILE", str(tmp_path / "report.json"))
    write_notes(tmp_path / "docs")
    before = successes(vllm_server)
    task = make_synth_task(
        tmp_path,
        vllm_server + "/v1",
        teacher=ChatEndpoint(name="teacher", base_url=vllm_server + "/v1", model="tiny"),
        max_tokens=24,
        passes=2,
    )
    with pytest.raises(WorkloadError, match=r"no usable pair from 10 teacher replies"):
        synthesize(task)
    assert successes(vllm_server) - before == 10
    assert "refuses" not in caplog.text
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["chunks"] == 5 and report["documents"] == 5
