"""README's first command end to end: `crucible dev up --once` runs the quickstart through the
real operator and the dev runner — merge, fine-tune, RAG index, vLLM servers, eval — and
prints the leaderboard; the figures match the raw answers; nothing is left running."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, ROOT
from tests.workloads.test_vllm import vllm_python

NAMESPACE = "crucible-demo"


def dev_up(workdir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "crucible.cli.main",
        "dev",
        "up",
        "--workdir",
        str(workdir),
        "--examples",
        str(EXAMPLES / "quickstart"),
        "--vllm-python",
        vllm_python(),
        *extra,
    ]


def leftovers(workdir: Path) -> str:
    found = subprocess.run(
        ["pgrep", "-af", str(workdir)], capture_output=True, text=True, check=False
    ).stdout
    return "\n".join(line for line in found.splitlines() if "pgrep" not in line)


@pytest.mark.cluster
def test_quickstart_runs_end_to_end(tmp_path: Path) -> None:
    workdir = tmp_path / "dev"
    result = subprocess.run(
        dev_up(workdir, "--once", "--timeout", "1200"),
        capture_output=True,
        text=True,
        timeout=1500,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    final = result.stdout[result.stdout.rindex("KIND ") :]
    for kind, name in (
        ("ModelMerge", "quickstart-merge"),
        ("FineTuneJob", "quickstart-sft"),
        ("RagIndex", "crucible-docs"),
        ("EvalRun", "quickstart-eval"),
    ):
        assert any(line.split()[:3] == [kind, name, "Succeeded"] for line in final.splitlines())

    store = workdir / "store" / NAMESPACE
    merged = store / "modelmerges" / "quickstart-merge"
    assert (merged / "config.json").exists() and (merged / "crucible-manifest.json").exists()
    assert (store / "finetunejobs" / "quickstart-sft" / "adapter" / "adapter_config.json").exists()
    assert not list((workdir / "store").rglob("*.partial-*"))

    # The leaderboard shows what the raw answers add up to: 2 models x with/without RAG.
    results = store / "evalruns" / "quickstart-eval" / "results.jsonl"
    answers = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(answers) == 10 * 5 * 2 * 2
    correct: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0] * 5)
    for a in answers:
        correct[(a["model"], "yes" if a["rag"] else "no")][a["round"]] += a["correct"] / 10
    board = result.stdout[result.stdout.rindex("EVALRUN ") :].splitlines()[1:5]
    shown = {(row.split()[1], row.split()[2]): row.split()[3] for row in board}
    assert shown == {key: f"{sum(r) / 5:.3f}" for key, r in correct.items()}
    assert not leftovers(workdir)


@pytest.mark.cluster
def test_stopping_dev_up_mid_run_leaves_nothing_behind(tmp_path: Path) -> None:
    """SIGTERM (as Ctrl-C's SIGINT) while the fine-tune trains: every process stops, and the
    store holds no half-written model."""
    workdir = tmp_path / "dev"
    log = (tmp_path / "dev-up.log").open("w+")
    process = subprocess.Popen(dev_up(workdir), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 600
        training = re.compile(r"^FineTuneJob\s+quickstart-sft\s+Running", re.MULTILINE)
        while not training.search(Path(log.name).read_text()) and time.monotonic() < deadline:
            assert process.poll() is None, Path(log.name).read_text()[-3000:]
            time.sleep(0.5)
        assert training.search(Path(log.name).read_text()), "the fine-tune never started"
        process.send_signal(signal.SIGTERM)
        assert process.wait(120) == 130
    finally:
        if process.poll() is None:
            process.kill()
    assert not leftovers(workdir)
    store = workdir / "store" / NAMESPACE
    assert not list((workdir / "store").rglob("*.partial-*"))
    assert not (store / "finetunejobs" / "quickstart-sft" / "adapter").exists()
