"""Benchmark: the merge and fine-tune workloads against mergekit and trl called directly with
the same settings, on tiny models, in one run. Prints numbers; asserts nothing.

    .venv/bin/python bench/workloads.py [--repeats 3] [--steps 20] [--merge-size medium]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
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
        report_config_map="m-report",
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


def bench_train(tmp: Path, base: Path, steps: int) -> None:
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from crucible.api.contract import DatasetInput, FineTuneTask
    from crucible.api.finetunejob import Hyperparameters, Lora
    from crucible.workloads.finetune import train

    rows = [
        {
            "question": f"What is item {i} of Crucible's recipe?",
            "answer": "Merge, fine-tune, index, evaluate. " * 4,
        }
        for i in range(64)
    ]
    data = tmp / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    hyper = Hyperparameters(
        learning_rate=1e-3, max_steps=steps, batch_size=4, max_length=256, save_steps=10_000
    )
    task = FineTuneTask(
        namespace="bench",
        name="ft",
        report_config_map="ft-report",
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
    )
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokens_per_row = statistics.mean(
        len(
            tokenizer(
                tokenizer.apply_chat_template(
                    [
                        {"role": "user", "content": r["question"]},
                        {"role": "assistant", "content": r["answer"]},
                    ],
                    tokenize=False,
                )
            )["input_ids"]
        )
        for r in rows
    )
    tokens = tokens_per_row * hyper.batch_size * steps

    def direct() -> None:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        dataset = datasets.Dataset.from_list(
            [
                {
                    "messages": [
                        {"role": "user", "content": r["question"]},
                        {"role": "assistant", "content": r["answer"]},
                    ]
                }
                for r in rows
            ]
        )
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
        bench_train(tmp, random_llama(tmp / "base", tokenizer, seed=1), args.steps)


if __name__ == "__main__":
    main()
