"""Tiny models made on the spot (crucible.workloads.tinymodels), shared by a test session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

ModelFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crucible.workloads.tinymodels import train_tokenizer

    sources = [ROOT / "README.md", *sorted((ROOT / "operator").rglob("*.py"))]
    return train_tokenizer((p.read_text() for p in sources), tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def make_model(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> ModelFactory:
    """make_model(seed, **config overrides) → a saved random Llama with the tokenizer."""
    from crucible.workloads.tinymodels import random_llama

    made: dict[tuple[Any, ...], Path] = {}

    def make(seed: int, **overrides: Any) -> Path:
        key = (seed, *sorted(overrides.items()))
        if key not in made:
            made[key] = random_llama(
                tmp_path_factory.mktemp(f"model-{seed}"), tokenizer_dir, seed, **overrides
            )
        return made[key]

    return make
