"""The fine-tune workload on several processes and nodes, for real: torchrun agents on this
machine meet at a c10d rendezvous, as the pods of a training on several nodes do at index 0,
and train a tiny model on CPU with the gloo backend. Each step's loss matches one process
with the same global batch."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from crucible.api.contract import FineTuneTask
from crucible.api.finetunejob import Hyperparameters, Strategy
from crucible.resources.finetunejob import ELASTIC_ENV
from crucible.workloads.finetune import last_complete_checkpoint
from tests.conftest import ModelFactory, wait_for
from tests.workloads.test_finetune import chat_rows, make_task, write_jsonl

pytest.importorskip("torch")

# Examples per optimizer step, whatever the shape: batch 2 on each of 4 processes, or batch 2
# accumulated 4 times on one.
GLOBAL_BATCH = 8
MICRO_BATCH = 2
STEPS = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def shaped_task(
    tmp_path: Path,
    base: Path,
    processes: int,
    strategy: Strategy,
    *,
    steps: int = STEPS,
    save_steps: int = STEPS,
) -> Path:
    """A task file for `processes` training processes in all, the same global batch."""
    data = write_jsonl(tmp_path / "qa.jsonl", chat_rows(8))
    hyper = {
        "learning_rate": 5e-3,
        "max_steps": steps,
        "batch_size": MICRO_BATCH,
        "gradient_accumulation_steps": GLOBAL_BATCH // (MICRO_BATCH * processes),
        "max_length": 128,
        "save_steps": save_steps,
        "seed": 3,
    }
    task: FineTuneTask = make_task(
        tmp_path, base, data, hyperparameters=Hyperparameters(**hyper), strategy=strategy
    )
    path = tmp_path / "task.json"
    path.write_text(task.model_dump_json(by_alias=True))
    return path


def agent(task: Path, nodes: int, processes: int, port: int, log: Path) -> subprocess.Popen[bytes]:
    """One node's torchrun, as a training pod on several nodes runs it."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={nodes}",
        f"--nproc_per_node={processes}",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint=127.0.0.1:{port}",
        "--rdzv_id=test",
        "--max_restarts=3",
        "-m",
        "crucible.workloads.finetune",
        "--task",
        str(task),
    ]
    env = {
        "PATH": os.environ["PATH"],
        "HF_HUB_OFFLINE": "1",
        "CRUCIBLE_REPORT_FILE": str(task.with_name("report.json")),
        "OMP_NUM_THREADS": "1",
        **{e["name"]: e["value"] for e in ELASTIC_ENV},  # as the training pods have it
    }
    with log.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=out, env=env)


def finish(agents: list[subprocess.Popen[bytes]], task: Path, timeout: float = 600) -> None:
    """Waits for every agent to succeed; whatever happens, none outlives the test."""
    try:
        for i, started in enumerate(agents):
            code = started.wait(timeout=timeout)
            assert code == 0, task.with_name(f"node-{i}.log").read_text()[-4000:]
    finally:
        stop_all(agents)


def lose_node(started: subprocess.Popen[bytes]) -> None:
    """What a lost node's pod loses: its agent and every rank it started (torch elastic
    starts each rank in a session of its own, so the agent's process group is not enough)."""
    try:
        agent_process = psutil.Process(started.pid)
        processes = [agent_process, *agent_process.children(recursive=True)]
    except psutil.NoSuchProcess:
        processes = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    started.wait()


def stop_all(agents: list[subprocess.Popen[bytes]]) -> None:
    for started in agents:
        lose_node(started)


def run_nodes(task: Path, nodes: int, processes: int) -> None:
    port = free_port()
    logs = [task.with_name(f"node-{i}.log") for i in range(nodes)]
    finish([agent(task, nodes, processes, port, log) for log in logs], task)


def step_losses(tmp_path: Path, step: int = STEPS) -> list[float]:
    state = tmp_path / "ft" / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json"
    return [e["loss"] for e in json.loads(state.read_text())["log_history"] if "loss" in e]


@pytest.mark.parametrize("strategy", [Strategy.DDP, Strategy.FSDP])
def test_two_nodes_of_two_processes_train_as_one_process_does(
    tmp_path: Path, make_model: ModelFactory, strategy: Strategy
) -> None:
    base = make_model(4)
    one = tmp_path / "one"
    one.mkdir()
    run_nodes(shaped_task(one, base, 1, Strategy.DDP), nodes=1, processes=1)
    spread = tmp_path / "spread"
    spread.mkdir()
    run_nodes(shaped_task(spread, base, 4, strategy), nodes=2, processes=2)
    alone, together = step_losses(one), step_losses(spread)
    assert len(alone) == len(together) == STEPS
    # The same examples make each step on both shapes, so only the order of float32 sums
    # differs (gloo's all-reduce against accumulation in one process): measured at 1e-7
    # relative after six steps, a few float32 epsilons; 1e-5 leaves room for other CPUs' sums
    # and fails on any real difference (a wrong accumulation moves the second loss by 1e-2).
    assert together == pytest.approx(alone, rel=1e-5), (alone, together)
    assert alone[-1] < alone[0]
    report = json.loads((spread / "report.json").read_text())
    assert report["progress"]["step"] == STEPS


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_a_lost_node_rejoins_and_the_run_resumes_from_its_last_complete_checkpoint(
    tmp_path: Path, make_model: ModelFactory
) -> None:
    """Node 1's agent and its ranks are killed once a checkpoint is complete, as a lost
    node's pod is; a new agent for it (its index's pod, re-created) joins the group that node
    0's agent re-forms (torch elastic), and the training resumes from that checkpoint and
    finishes, its report saying from which step."""
    steps = 80
    task = shaped_task(tmp_path, make_model(4), 4, Strategy.DDP, steps=steps, save_steps=4)
    port = free_port()
    logs = [task.with_name(f"node-{i}.log") for i in range(2)]
    # Node 0 first, as in the pods, where the rendezvous is at index 0's hostname: it holds
    # the rendezvous store, which outlives node 1.
    agents = [agent(task, 2, 2, port, logs[0])]
    try:
        wait_for(lambda: listening(port) or agents[0].poll() is not None, timeout=120)
        agents.append(agent(task, 2, 2, port, logs[1]))
        checkpoints = tmp_path / "ft" / "checkpoints"
        wait_for(
            lambda: (
                last_complete_checkpoint(checkpoints) or any(a.poll() is not None for a in agents)
            ),
            timeout=300,
            interval=0.05,
            what="a complete checkpoint",
        )
        assert all(a.poll() is None for a in agents), logs[0].read_text()[-4000:]
        lose_node(agents[1])
        agents[1] = agent(task, 2, 2, port, logs[1])
        finish(agents, task)
    finally:
        stop_all(agents)
    progress = json.loads(task.with_name("report.json").read_text())["progress"]
    assert progress["step"] == steps
    resumed = progress["resumedFromStep"]
    assert resumed >= 4 and resumed % 4 == 0 and resumed < steps
    assert f"checkpoint-{resumed}, the last complete checkpoint" in logs[0].read_text()
