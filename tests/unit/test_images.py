"""The images' Dockerfiles: the torch layer they share, their pins against pyproject.toml's, the
user they run as, and the pieces of `make images` that read the host's configuration."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from crucible.devcluster.images import IMAGES, all_images, debian_mirrors, pip_settings
from tests.conftest import ROOT

TORCH_IMAGES = ("merge", "train", "rag", "eval", "vllm")
# The workloads each image's extra is for (resources/: the image and module of each Job).
WORKLOADS = {
    "merge": ("merge",),
    "train": ("finetune",),
    "rag": ("rag",),
    "eval": ("evaluate", "synthesize", "rank"),
}
KUBE_CLIENTS = ("kopf", "kubernetes")


def final_stage(image: str) -> list[str]:
    """The instructions of a Dockerfile's last stage, continuation lines joined."""
    text = (IMAGES / image / "Dockerfile").read_text()
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = [line for line in joined.splitlines() if line and not line.startswith("#")]
    last_from = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    return lines[last_from:]


def test_the_images_that_need_torch_share_its_layer() -> None:
    """The same base and the same first instruction: one layer in the registry and on a node."""
    starts = {image: final_stage(image)[:2] for image in TORCH_IMAGES}
    assert len({tuple(s) for s in starts.values()}) == 1, starts
    base, torch = next(iter(starts.values()))
    assert base == "FROM ${BASE}"
    pinned = re.search(r"pip install (torch==\S+)$", torch)
    assert pinned, torch
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for extra in ("merge", "train", "rag", "eval"):
        assert pinned.group(1) in project["optional-dependencies"][extra], extra
    vllm = (IMAGES / "vllm" / "requirements.txt").read_text().splitlines()
    assert pinned.group(1) in vllm


def test_no_workload_image_installs_or_imports_a_kube_client() -> None:
    """A workload pod holds no credential for the API server, and its image no client for it."""
    for extra, modules in WORKLOADS.items():
        listed = subprocess.run(
            [sys.executable, str(IMAGES / "requirements.py"), str(ROOT / "pyproject.toml"), extra],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        names = {re.split(r"[=<>!\[]", requirement)[0].lower() for requirement in listed}
        assert not names & set(KUBE_CLIENTS), (extra, names & set(KUBE_CLIENTS))
        # Each of its workloads imports, with any import of a kube client refused.
        refuse = (
            "import importlib.abc, importlib, sys\n"
            "class Refuse(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            f"        if name.partition('.')[0] in {KUBE_CLIENTS!r}:\n"
            "            raise ImportError(name)\n"
            "sys.meta_path.insert(0, Refuse())\n"
            "for module in sys.argv[1:]:\n"
            "    importlib.import_module(module)\n"
        )
        imported = subprocess.run(
            [sys.executable, "-c", refuse, *(f"crucible.workloads.{m}" for m in modules)],
            check=False, capture_output=True, text=True,
        )  # fmt: skip
        assert imported.returncode == 0, (extra, imported.stderr[-2000:])
    # The operator's image installs them.
    operator = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {r.split("=")[0] for r in operator["optional-dependencies"]["operator"]} >= set(
        KUBE_CLIENTS
    )


def test_every_image_has_its_dockerfile_and_runs_as_a_numeric_non_root_user() -> None:
    for image in all_images():
        assert image.dockerfile.exists(), image.name
        users = [line for line in final_stage(image.name) if line.startswith("USER ")]
        if image.name == "node":  # runs privileged, as root, by design
            assert not users
            continue
        assert users, image.name
        user = users[-1].split()[1].split(":")[0]
        assert user.isdigit() and int(user) > 0, (image.name, user)


def test_python_images_take_their_base_as_a_build_argument() -> None:
    for image in all_images():
        text = image.dockerfile.read_text()
        if "FROM scratch" in text:
            continue
        assert re.search(r"^ARG BASE=\S+$", text, re.MULTILINE), image.name
        assert "FROM ${BASE}" in text, image.name


def test_debian_mirrors_come_from_the_hosts_apt_sources(tmp_path: Path) -> None:
    apt = tmp_path / "etc" / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n"
    )
    (apt / "sources.list.d" / "other.list").write_text(
        "deb https://packages.example.com/apt stable main\n"
    )
    assert debian_mirrors(tmp_path) == [
        "deb http://mirror.example/debian bookworm main",
        "deb http://mirror.example/debian bookworm-updates main",
        "deb http://mirror.example/debian-security bookworm-security main",
    ]
    # None of the host's sources is Debian's: the public mirrors.
    (apt / "sources.list.d" / "debian.sources").unlink()
    assert debian_mirrors(tmp_path)[0] == "deb http://deb.debian.org/debian bookworm main"


def test_the_hosts_pip_settings_become_one_pip_conf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", "https://pypi.example/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", str(ROOT))
    text, paths = pip_settings()
    assert "[global]" in text
    assert "index-url = https://pypi.example/simple" in text
    assert ROOT in paths
