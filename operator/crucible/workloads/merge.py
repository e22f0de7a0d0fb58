"""The merge workload: mergekit over the models the task names, written atomically to the
model store with a manifest (weights' sha256, resolved config, lineage of the inputs)."""

from __future__ import annotations

import copy
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from crucible.api.contract import MergeTask
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

MANIFEST = "crucible-manifest.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
MIN_SHARD_BYTES = 256 << 20
# Fields two models must share for their tensors to be merged one by one.
SHAPE_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
)


@dataclass(frozen=True)
class Input:
    uri: str
    path: Path
    config: dict[str, Any]


def model_uris(mergekit: dict[str, Any]) -> list[str]:
    uris = [m["model"] for m in mergekit.get("models", [])]
    if mergekit.get("base_model") and mergekit["base_model"] not in uris:
        uris.insert(0, mergekit["base_model"])
    return uris


def load_input(uri: str, path: Path) -> Input:
    config_file = path / "config.json"
    if not config_file.exists():
        raise WorkloadError(f"{uri}: no config.json in {path}; is it a transformers model?")
    return Input(uri, path, json.loads(config_file.read_text()))


def check_compatible(inputs: list[Input], union_vocabulary: bool) -> None:
    """Refuse early, naming the models and the mismatch, what mergekit would fail on later."""
    first = inputs[0]
    fields = ["architectures", *SHAPE_FIELDS, *([] if union_vocabulary else ["vocab_size"])]
    for other in inputs[1:]:
        for field in fields:
            mine, theirs = first.config.get(field), other.config.get(field)
            if mine != theirs:
                raise WorkloadError(
                    f"models {first.uri} and {other.uri} cannot be merged: {field} is {mine} "
                    f"in the first and {theirs} in the second"
                    + (
                        "; tokenizerSource: union merges different vocabularies"
                        if field == "vocab_size"
                        else ""
                    )
                )


def lineage(inputs: list[Input]) -> list[dict[str, Any]]:
    """Each input's URI and its own lineage when it came out of Crucible."""
    entries = []
    for item in inputs:
        entry: dict[str, Any] = {"uri": item.uri}
        manifest = item.path / MANIFEST
        if manifest.exists():
            upstream = json.loads(manifest.read_text())
            entry["kind"] = upstream.get("kind")
            entry["lineage"] = upstream.get("lineage", [])
        entries.append(entry)
    return entries


def cores() -> int:
    """The cores this process may run on (its CPU set, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def shard_bytes(inputs: list[Input]) -> int:
    """Shards of about one core's share of the output (at least 256 MiB), so that hashing them
    in parallel takes one core's share of the time: mergekit's writer gives no way to hash
    while it writes, and sha256 reads ~2 GB/s on one core (measured), so one shard of an 830M
    bf16 model would add ~0.8 s after the merge is done."""
    size = sum(p.stat().st_size for p in inputs[0].path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    return max(MIN_SHARD_BYTES, -(-size // cores()))


def hashed(files: list[Path]) -> list[str]:
    """The files' sha256, shard by shard in parallel (hashlib works outside the GIL)."""
    with ThreadPoolExecutor(max_workers=max(1, min(cores(), len(files)))) as pool:
        return list(pool.map(sha256_of, files))


def merge(task: MergeTask, cache: Path | None = None) -> Path:
    import torch
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    started = time.monotonic()
    reporter = Reporter(task)
    output = Path(task.output_path)
    cache = cache or output.parent / ".cache"
    inputs = [
        load_input(uri, resolve_uri(uri, task.mounts, cache)) for uri in model_uris(task.mergekit)
    ]
    check_compatible(inputs, task.mergekit.get("tokenizer_source") == "union")
    local = {item.uri: str(item.path) for item in inputs}
    resolved = copy.deepcopy(task.mergekit)
    if "base_model" in resolved:
        resolved["base_model"] = local[resolved["base_model"]]
    for model in resolved.get("models", []):
        model["model"] = local[model["model"]]
    try:
        config = MergeConfiguration.model_validate(resolved)
    except ValueError as error:
        raise WorkloadError(f"invalid mergekit configuration: {error}") from error
    options = MergeOptions(
        cuda=torch.cuda.is_available(),
        copy_tokenizer=True,
        lazy_unpickle=True,
        low_cpu_memory=True,
        random_seed=0,
        write_model_card=True,
        out_shard_size=shard_bytes(inputs),
    )
    with atomic_directory(output) as staging:
        log.info("merging %d models with %s into %s", len(inputs), config.merge_method, output)
        try:
            run_merge(config, str(staging), options)
        except (RuntimeError, ValueError, KeyError) as error:
            raise WorkloadError(f"mergekit failed: {error}") from error
        weights = sorted(
            p for p in staging.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()
        )
        write_json(
            staging / MANIFEST,
            {
                "kind": "ModelMerge",
                "name": task.name,
                "namespace": task.namespace,
                "uri": task.output_uri,
                "mergekit": {"version": version("mergekit"), "config": task.mergekit},
                "lineage": lineage(inputs),
                "files": dict(zip((p.name for p in weights), hashed(weights), strict=True)),
            },
        )
    seconds = time.monotonic() - started
    reporter.finish(
        message=f"merged {len(inputs)} models with {config.merge_method} in {seconds:.1f} s"
    )
    return output


def main(argv: list[str] | None = None) -> int:
    return run_main(merge, argv, MergeTask, "Merge models with mergekit.")


if __name__ == "__main__":
    raise SystemExit(main())
