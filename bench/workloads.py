"""Benchmark: the merge and fine-tune workloads against mergekit and trl called directly with
the same settings, on tiny models, in one run, and the fine-tune's tokens/s as torchrun
processes are added (DDP and FSDP over gloo on CPU). Prints numbers; asserts nothing.

    .venv/bin/python bench/workloads.py [--repeats 3] [--steps 20] [--merge-size medium]
        [--scaling DDP:1,DDP:2,DDP:4,FSDP:2,FSDP:4]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The trainer's last log line: {'train_runtime': '12.3', ...} (trl prints values as strings).
TRAIN_RUNTIME = re.compile(r"'train_runtime': '?([0-9.]+)")
MERGE_SIZES: dict[str, dict[str, int]] = {
    "tiny": {},  # crucible.workloads.tinymodels.SHAPE
    "medium": {
        "hidden_size": 1024,
        "intermediate_size": 2816,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
    },
}


def timed(
    workload: Callable[[], Any], direct: Callable[[], Any], repeats: int
) -> tuple[float, float]:
    """Median seconds of each, the two taking turns after one untimed round of each: run one
    side's repeats first and the first side pays the page cache, the lazy imports and the
    device's warm-up (the merge measured 2.4x instead of 1.2x that way on CPU)."""
    workload()
    direct()
    seconds: dict[Callable[[], Any], list[float]] = {workload: [], direct: []}
    for _ in range(repeats):
        for work in (workload, direct):
            started = time.perf_counter()
            work()
            seconds[work].append(time.perf_counter() - started)
    return statistics.median(seconds[workload]), statistics.median(seconds[direct])


def bench_merge(tmp: Path, a: Path, b: Path, size: str, repeats: int) -> None:
    import torch
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    from crucible.api.contract import MergeTask
    from crucible.workloads.merge import load_input, merge, shard_bytes

    config = {
        "merge_method": "slerp",
        "base_model": f"pvc://root{a}",
        "dtype": "float32",
        "models": [{"model": f"pvc://root{a}"}, {"model": f"pvc://root{b}"}],
        "parameters": {"t": 0.5},
    }
    task = MergeTask(
        namespace="bench",
        name="m",
        mounts={"root": "/"},
        output_uri="pvc://store/m/",
        output_path=str(tmp / "merged"),
        mergekit=config,
    )
    direct_config = {
        **config,
        "base_model": str(a),
        "models": [{"model": str(a)}, {"model": str(b)}],
    }
    options = MergeOptions(
        cuda=torch.cuda.is_available(),
        copy_tokenizer=True,
        lazy_unpickle=True,
        low_cpu_memory=True,
        random_seed=0,
        out_shard_size=shard_bytes([load_input(str(a), a)]),
    )

    def direct_merge() -> None:
        # into a new folder, as the workload writes (overwriting a file in the page cache costs
        # more); the last output removed on the clock, as the workload replaces its own
        shutil.rmtree(tmp / "direct", ignore_errors=True)
        run_merge(MergeConfiguration.model_validate(direct_config), str(tmp / "direct"), options)

    workload, direct = timed(lambda: merge(task), direct_merge, repeats)
    report(f"merge (slerp, 2 models of {size})", "s", workload, direct, lower_is_better=True)


ROWS = [
    {
        "question": f"What is item {i} of Crucible's recipe?",
        "answer": "Merge, fine-tune, index, evaluate. " * 4,
    }
    for i in range(64)
]


def training_task(tmp: Path, base: Path, hyper: Any, strategy: Any = None) -> Any:
    """The fine-tune workload's task on ROWS, as the operator writes it."""
    from crucible.api.contract import DatasetInput, FineTuneTask
    from crucible.api.finetunejob import Lora

    data = tmp / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return FineTuneTask(
        namespace="bench",
        name="ft",
        mounts={"root": "/"},
        output_uri="pvc://store/ft/",
        output_path=str(tmp / "ft"),
        base_model_uri=f"pvc://root{base}",
        method="sft",
        dataset=DatasetInput(path=str(data), format="chat", on_invalid_row="Fail"),
        lora=Lora(r=8, alpha=16, dropout=0.0),
        hyperparameters=hyper,
        merge_adapter=False,
        adapter_path=str(tmp / "ft" / "adapter"),
        checkpoint_path=str(tmp / "ft" / "ckpt"),
        gpus=0,
        **({"strategy": strategy} if strategy else {}),
    )


def tokens_per_row(base: Path) -> float:
    """Mean tokens of ROWS once the chat template is applied: what a step trains on."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    return statistics.mean(
        len(tokenizer(tokenizer.apply_chat_template(chat(r), tokenize=False))["input_ids"])
        for r in ROWS
    )


def chat(row: dict[str, str]) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": row["question"]},
        {"role": "assistant", "content": row["answer"]},
    ]


def bench_train(tmp: Path, base: Path, steps: int) -> None:
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from crucible.api.finetunejob import Hyperparameters
    from crucible.workloads.finetune import train

    hyper = Hyperparameters(
        learning_rate=1e-3, max_steps=steps, batch_size=4, max_length=256, save_steps=10_000
    )
    task = training_task(tmp, base, hyper)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokens = tokens_per_row(base) * hyper.batch_size * steps

    def direct() -> None:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        dataset = datasets.Dataset.from_list([{"messages": chat(r)} for r in ROWS])
        trainer = SFTTrainer(
            model=model,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=LoraConfig(
                r=8,
                lora_alpha=16,
                lora_dropout=0.0,
                task_type="CAUSAL_LM",
                target_modules="all-linear",
            ),
            args=SFTConfig(
                output_dir=str(tmp / "direct"),
                max_steps=steps,
                per_device_train_batch_size=4,
                learning_rate=1e-3,
                logging_steps=1,
                save_steps=10_000,
                report_to=[],
                max_length=256,
                use_cpu=not torch.cuda.is_available(),
                bf16=torch.cuda.is_available(),
            ),
        )
        trainer.train()
        trainer.model.save_pretrained(tmp / "direct" / "adapter")

    def workload() -> None:
        shutil.rmtree(tmp / "ft", ignore_errors=True)  # no resuming between repeats
        train(task)

    w, d = timed(workload, direct, 2)
    report(
        f"SFT LoRA training ({steps} steps, ~{tokens:.0f} tokens)",
        "tokens/s",
        tokens / w,
        tokens / d,
        lower_is_better=False,
    )


def bench_scaling(tmp: Path, base: Path, steps: int, shapes: list[tuple[str, int]]) -> None:
    """Training tokens/s of the fine-tune workload under torchrun on 1, 2, 4… processes on
    this machine (gloo on CPU), each process with the same micro-batch (weak scaling). A
    shape's time per step is the difference between the trainer's own train_runtime (the
    training loop alone, which rank 0 logs) of a run of 2 + `steps` steps and of one of 2,
    divided by `steps`: the first steps' warm-up cancels out, and the processes' start, imports
    and model load are not in it."""
    import subprocess
    import sys

    from crucible.api.finetunejob import Hyperparameters, Strategy

    micro = 4
    per_row = tokens_per_row(base)
    single: float | None = None
    for strategy, processes in shapes:
        seconds = []
        for max_steps in (2, 2 + steps):
            run = tmp / f"scaling-{strategy}-{processes}-{max_steps}"
            run.mkdir()
            hyper = Hyperparameters(
                learning_rate=1e-3,
                max_steps=max_steps,
                batch_size=micro,
                max_length=256,
                save_steps=10_000,
            )
            task = run / "task.json"
            task.write_text(
                training_task(run, base, hyper, Strategy(strategy)).model_dump_json(by_alias=True)
            )
            ran = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    f"--nproc_per_node={processes}",
                    "-m",
                    "crucible.workloads.finetune",
                    "--task",
                    str(task),
                ],
                env={
                    "PATH": os.environ["PATH"],
                    "HF_HUB_OFFLINE": "1",
                    "CRUCIBLE_REPORT_FILE": str(run / "report.json"),
                    "OMP_NUM_THREADS": "1",  # one core a process: the shapes compare fairly
                },
                check=True,
                capture_output=True,
                text=True,
            )
            seconds.append(float(TRAIN_RUNTIME.findall(ran.stdout + ran.stderr)[-1]))
        per_step = (seconds[1] - seconds[0]) / steps
        rate = per_row * micro * processes / per_step
        single = rate if processes == 1 else single
        efficiency = f", efficiency {rate / (processes * single):.2f}" if single else ""
        print(
            f"training {strategy} on {processes} process(es), micro-batch {micro} each: "
            f"{rate:.0f} tokens/s ({per_step:.3f} s a step){efficiency}"
        )


def report(what: str, unit: str, workload: float, direct: float, *, lower_is_better: bool) -> None:
    ratio = workload / direct
    print(
        f"{what}: workload {workload:.2f} {unit}, direct {direct:.2f} {unit}, "
        f"ratio workload/direct {ratio:.2f} ({'lower' if lower_is_better else 'higher'} "
        "is better)"
    )


def main() -> None:
    import torch

    from crucible.workloads.tinymodels import random_llama, train_tokenizer

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--scaling",
        default="DDP:1,DDP:2,DDP:4,FSDP:2,FSDP:4",
        help="the torchrun shapes of the scaling benchmark, STRATEGY:PROCESSES, comma-separated"
        " (empty: none); efficiency is against the first one-process shape",
    )
    parser.add_argument(
        "--merge-size",
        choices=sorted(MERGE_SIZES),
        default="tiny",
        help="the merged models' shape: tiny (4 MB) or medium (107M parameters, 428 MB)",
    )
    args = parser.parse_args()
    print(
        f"device: {'cuda ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}"
        f", torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        tokenizer = train_tokenizer([(ROOT / "README.md").read_text()], tmp / "tokenizer")
        shape = MERGE_SIZES[args.merge_size]
        a = random_llama(tmp / "a", tokenizer, seed=1, **shape)
        b = random_llama(tmp / "b", tokenizer, seed=2, **shape)
        bench_merge(tmp, a, b, args.merge_size, args.repeats)
        base = random_llama(tmp / "base", tokenizer, seed=1)
        bench_train(tmp, base, args.steps)
        shapes = [(s.split(":")[0], int(s.split(":")[1])) for s in args.scaling.split(",") if s]
        bench_scaling(tmp, base, args.steps, shapes)


if __name__ == "__main__":
    main()
