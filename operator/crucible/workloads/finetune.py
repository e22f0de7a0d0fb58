"""The fine-tune workload: LoRA/QLoRA with peft, SFT or DPO with trl (or continued
pre-training on documents, as language modelling on their text), resuming from its last
checkpoint after a restart, reporting progress, saving the adapter (and merged weights)."""

from __future__ import annotations

import importlib.util
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crucible.api.contract import DatasetInput, FineTuneTask
from crucible.api.finetunejob import (
    InvalidRowPolicy,
    Strategy,
    TrainingMethod,
    TrainingProgress,
)
from crucible.workloads.common import (
    Reporter,
    WorkloadError,
    atomic_directory,
    log,
    resolve_uri,
    run_main,
    write_json,
)
from crucible.workloads.datasets import Examples, load_examples
from crucible.workloads.documents import Document, documents_of

REPORT_EVERY_SECONDS = 10.0
# Written into a checkpoint once every rank has saved its part: a checkpoint without it was
# cut off mid-write (a lost node, a preemption) and is never resumed from.
COMPLETE_MARKER = "crucible-complete"
CHECKPOINT = re.compile(r"checkpoint-(\d+)")
DEEPSPEED_STAGES = {Strategy.DEEPSPEED_ZERO2: 2, Strategy.DEEPSPEED_ZERO3: 3}


@dataclass(frozen=True)
class TrainResult:
    global_step: int
    resumed_from: int | None
    losses: list[float]
    skipped: dict[str, int]


def data_file(task: FineTuneTask, dataset: DatasetInput, cache: Path) -> Path:
    if dataset.path:
        return Path(dataset.path)
    assert dataset.uri
    local = resolve_uri(dataset.uri, task.mounts, cache)
    if local.is_file():
        return local
    files = sorted(p for p in local.rglob("*") if p.suffix in (".jsonl", ".json", ".csv"))
    if not files:
        raise WorkloadError(f"{dataset.uri}: no .jsonl, .json or .csv file in it")
    return files[0]


def document_blocks(documents: list[Document], tokenizer: Any, max_length: int) -> Examples:
    """Continued pre-training's rows: each document split at its markdown headers, then each
    section into windows of `max_length` tokens, so that no text is cut off by the trainer
    and a block starts where a section does."""
    blocks = Examples(rows=[])
    for document in documents:
        sections = re.split(r"\n(?=#{1,6} )", document.text)
        for section in (s.strip() for s in sections):
            ids = tokenizer(section, add_special_tokens=False)["input_ids"]
            for start in range(0, len(ids), max_length):
                text = tokenizer.decode(ids[start : start + max_length]).strip()
                if text:
                    blocks.rows.append({"text": text})
                    blocks.numbers.append(len(blocks.rows))
    if not blocks.rows:
        raise WorkloadError("spec.documents: no text to train on in the documents found")
    return blocks


def training_rows(task: FineTuneTask, tokenizer: Any, cache: Path) -> Examples:
    """The rows to train on: the dataset's, or the documents' blocks for continued
    pre-training."""
    max_length = task.hyperparameters.max_length
    if task.documents is not None:
        documents = documents_of(task.documents, cache)
        blocks = document_blocks(documents, tokenizer, max_length)
        log.info("documents: %d, in %d blocks", len(documents), len(blocks.rows))
        return blocks
    assert task.dataset is not None
    dataset = task.dataset
    path = data_file(task, dataset, cache)
    examples = load_examples(path, dataset.format, dataset.system_prompt, dataset.on_invalid_row)
    drop_over_length(examples, tokenizer, max_length, path, dataset.on_invalid_row)
    log.info("dataset %s: %d rows, skipped %s", path, len(examples.rows), dict(examples.skipped))
    return examples


def drop_over_length(
    examples: Examples, tokenizer: Any, max_length: int, path: Path, policy: InvalidRowPolicy
) -> None:
    """Rows longer than maxLength tokens would be truncated silently by the trainer: fail on
    them, or skip and count them, as the spec says."""
    kept, numbers = [], []
    for row, number in zip(examples.rows, examples.numbers, strict=True):
        if "messages" in row:
            text = tokenizer.apply_chat_template(row["messages"], tokenize=False)
            length = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        else:
            length = max(
                len(tokenizer(row["prompt"] + row[k])["input_ids"])
                for k in ("completion", "chosen", "rejected")
                if k in row
            )
        if length <= max_length:
            kept.append(row)
            numbers.append(number)
        elif policy == InvalidRowPolicy.SKIP:
            examples.skip(f"longer than maxLength ({max_length} tokens)")
        else:
            raise WorkloadError(
                f"dataset {path}, row {number}: {length} tokens, over "
                f"spec.hyperparameters.maxLength ({max_length}); raise it, shorten the row, or "
                "set spec.dataset.onInvalidRow: Skip"
            )
    if not kept:
        raise WorkloadError(f"dataset {path}: every row is longer than maxLength {max_length}")
    examples.rows, examples.numbers = kept, numbers


def last_complete_checkpoint(checkpoints: Path) -> tuple[int, Path] | None:
    """The step and folder of the newest checkpoint that every rank finished writing."""
    complete = [
        (int(match[1]), path)
        for path in (checkpoints.iterdir() if checkpoints.is_dir() else ())
        if (match := CHECKPOINT.fullmatch(path.name)) and (path / COMPLETE_MARKER).is_file()
    ]
    return max(complete) if complete else None


def strategy_arguments(strategy: Strategy) -> dict[str, Any]:
    """The trainer's arguments for `strategy`, from which it configures accelerate's FSDP or
    DeepSpeed plugin ("auto" values follow the trainer's own batch, accumulation and dtype)."""
    if strategy == Strategy.FSDP:
        return {"fsdp": True, "fsdp_config": {"version": 2}}
    if strategy in DEEPSPEED_STAGES:
        if importlib.util.find_spec("deepspeed") is None:
            raise WorkloadError(
                f"spec.distributed.strategy {strategy} needs DeepSpeed, which this image lacks: "
                "use a train image built with deepspeed (the GPU one), or strategy FSDP"
            )
        zero: dict[str, Any] = {"stage": DEEPSPEED_STAGES[strategy], "overlap_comm": True}
        if strategy == Strategy.DEEPSPEED_ZERO3:
            zero["stage3_gather_16bit_weights_on_model_save"] = True  # a whole adapter file
        return {
            "deepspeed": {
                "zero_optimization": zero,
                "bf16": {"enabled": "auto"},
                "train_micro_batch_size_per_gpu": "auto",
                "gradient_accumulation_steps": "auto",
                "gradient_clipping": "auto",
            }
        }
    return {}


def checkpoint_callback() -> Any:
    from transformers import TrainerCallback

    class MarkComplete(TrainerCallback):  # type: ignore[misc]
        """Marks a checkpoint complete once every rank has written its part of it."""

        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.barrier()
            if state.is_world_process_zero:
                saved = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                (saved / COMPLETE_MARKER).write_text(f"{state.global_step}\n")

    return MarkComplete()


def load_model(path: Path, task: FineTuneTask) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    options: dict[str, Any] = {
        "dtype": torch.bfloat16 if torch.cuda.is_available() else torch.float32
    }
    if task.lora.load_in_4bit:
        if not torch.cuda.is_available():
            raise WorkloadError(
                "spec.lora.loadIn4bit (QLoRA) needs a CUDA GPU and this pod has "
                "none: request spec.resources.gpus or set loadIn4bit: false"
            )
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise WorkloadError(
                "spec.lora.loadIn4bit (QLoRA) needs bitsandbytes, which this "
                "image lacks: use the GPU train image"
            ) from None
        from transformers import BitsAndBytesConfig

        options["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
            # FSDP and ZeRO-3 shard floating-point tensors alone: store the 4-bit weights in one.
            bnb_4bit_quant_storage=torch.bfloat16
            if task.strategy in (Strategy.FSDP, Strategy.DEEPSPEED_ZERO3)
            else torch.uint8,
        )
    return AutoModelForCausalLM.from_pretrained(path, **options)


def progress_callback(reporter: Reporter, resumed_from: int | None) -> Any:
    from transformers import TrainerCallback

    class Progress(TrainerCallback):  # type: ignore[misc]
        """Reports step, epoch, loss and learning rate, at most every few seconds."""

        def __init__(self) -> None:
            self.last = 0.0
            self.losses: list[float] = []

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
            logs = logs or {}
            if "loss" in logs:
                self.losses.append(float(logs["loss"]))
            if not state.is_world_process_zero or "loss" not in logs:
                return
            now = time.monotonic()
            if now - self.last >= REPORT_EVERY_SECONDS or state.global_step >= state.max_steps:
                self.last = now
                reporter.update(
                    progress=TrainingProgress(
                        step=state.global_step,
                        total_steps=state.max_steps,
                        epoch=state.epoch,
                        loss=float(logs["loss"]),
                        learning_rate=logs.get("learning_rate"),
                        resumed_from_step=resumed_from,
                    )
                )

    return Progress()


def train(task: FineTuneTask, callbacks: tuple[Any, ...] = ()) -> TrainResult:
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    reporter = Reporter(task)
    cache = Path(task.output_path) / ".cache"
    base = resolve_uri(task.base_model_uri, task.mounts, cache)
    hyper, lora = task.hyperparameters, task.lora
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    examples = training_rows(task, tokenizer, cache)
    model = load_model(base, task)
    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        task_type="CAUSAL_LM",
        target_modules="all-linear"
        if lora.target_modules == ["all-linear"]
        else lora.target_modules,
    )
    checkpoints = Path(task.checkpoint_path)
    common: dict[str, Any] = {
        "output_dir": str(checkpoints),
        "per_device_train_batch_size": hyper.batch_size,
        "gradient_accumulation_steps": hyper.gradient_accumulation_steps,
        "learning_rate": hyper.learning_rate,
        "num_train_epochs": hyper.epochs,
        "max_steps": hyper.max_steps or -1,
        # transformers 5 reads a float below 1 as the ratio of warmup steps.
        "warmup_steps": hyper.warmup_ratio,
        "lr_scheduler_type": hyper.lr_scheduler,
        "seed": hyper.seed,
        "logging_steps": 1,
        "save_steps": hyper.save_steps,
        "save_total_limit": 2,
        "report_to": [],
        "max_length": hyper.max_length,
        "bf16": torch.cuda.is_available(),
        "use_cpu": not torch.cuda.is_available(),
        **strategy_arguments(task.strategy),
    }
    last = last_complete_checkpoint(checkpoints)
    resumed_from, last_path = last if last else (None, None)
    progress = progress_callback(reporter, resumed_from)
    callbacks = (progress, checkpoint_callback(), *callbacks)
    dataset = datasets.Dataset.from_list(examples.rows)
    if task.method == TrainingMethod.DPO:
        trainer: Any = DPOTrainer(
            model=model,
            args=DPOConfig(**common, beta=hyper.beta),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=list(callbacks),
        )
    else:
        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(**common, packing=False),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=list(callbacks),
        )
    if last_path:
        log.info("resuming from %s, the last complete checkpoint", last_path)
    trainer.train(resume_from_checkpoint=str(last_path) if last_path else None)
    result = TrainResult(
        trainer.state.global_step, resumed_from, progress.losses, dict(examples.skipped)
    )
    if trainer.is_world_process_zero():
        save_outputs(task, trainer, tokenizer, base, result, reporter=reporter)
    return result


def save_outputs(
    task: FineTuneTask,
    trainer: Any,
    tokenizer: Any,
    base: Path,
    result: TrainResult,
    *,
    reporter: Reporter,
) -> None:
    summary = {
        "kind": "FineTuneJob",
        "name": task.name,
        "namespace": task.namespace,
        "baseModel": task.base_model_uri,
        "method": task.method,
        "lora": task.lora.to_api(),
        "hyperparameters": task.hyperparameters.to_api(),
        "steps": result.global_step,
        "resumedFrom": result.resumed_from,
        "skippedRows": result.skipped,
    }
    with atomic_directory(Path(task.adapter_path)) as staging:
        trainer.model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_json(staging / "crucible-manifest.json", summary)
    if task.merge_adapter and task.merged_path:
        merged = merge_adapter(base, Path(task.adapter_path), task)
        with atomic_directory(Path(task.merged_path)) as staging:
            merged.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            write_json(
                staging / "crucible-manifest.json",
                {**summary, "lineage": [{"uri": task.base_model_uri}]},
            )
    final = result.losses[-1] if result.losses else None
    reporter.finish(
        adapter_modules=sorted(trainer.model.peft_config["default"].target_modules),
        progress=TrainingProgress(
            step=result.global_step,
            total_steps=result.global_step,
            loss=final,
            epoch=trainer.state.epoch,
            resumed_from_step=result.resumed_from,
        ),
        message=f"trained {result.global_step} steps"
        + (f", resumed from step {result.resumed_from}" if result.resumed_from else "")
        + (f", skipped rows: {result.skipped}" if result.skipped else ""),
    )


def merge_adapter(base: Path, adapter: Path, task: FineTuneTask) -> Any:
    """The base model with the adapter folded in, at full precision (also after QLoRA)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    full = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    return PeftModel.from_pretrained(full, adapter).merge_and_unload()


def main(argv: list[str] | None = None) -> int:
    return run_main(train, argv, FineTuneTask, "Fine-tune a model with LoRA (SFT or DPO).")


if __name__ == "__main__":
    raise SystemExit(main())
