"""Fixtures shared by every test: the repository's paths, tiny models made on the spot
(crucible.workloads.tinymodels) and, for tests marked `cluster`, a real control plane (etcd,
kube-apiserver, kube-controller-manager, kube-scheduler, kwok) started once per session on
127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from crucible.devcluster.cluster import LocalCluster
from crucible.devcluster.node import NODE_LABEL, LocalNode, local_nodes

ROOT = Path(__file__).resolve().parent.parent
CRDS = ROOT / "crds"
EXAMPLES = ROOT / "examples"
LOGS = ROOT / "test-logs"


def find_nitro_data() -> Path:
    """The seeds' Nitro data (AGPL-3.0, never copied into this repository):
    $CRUCIBLE_NITRO_DATA, else shared/data/nitro beside the checkout, else beside the local
    repository this checkout was cloned from (a fresh clone made elsewhere, as CI's may be)."""
    candidates = [Path(p) for p in [os.environ.get("CRUCIBLE_NITRO_DATA")] if p]
    candidates.append(ROOT.parent / "shared" / "data" / "nitro")
    origin = subprocess.run(
        ["git", "-C", str(ROOT), "config", "--get", "remote.origin.url"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if origin and Path(origin).is_dir():
        candidates.append(Path(origin).resolve().parent / "shared" / "data" / "nitro")
    # None found: the beside-the-checkout path, which the failing test then names.
    return next((c for c in candidates if c.is_dir()), ROOT.parent / "shared" / "data" / "nitro")


NITRO = find_nitro_data()
QUICKSTART = EXAMPLES / "quickstart"
# The session's real node takes only the pods of `real_node` tests.
NODE_TAINT = "crucible.dev/real-node=true:NoSchedule"

# For tests of the Nitro data itself; what they exercise otherwise is covered with the
# quickstart's data, which this repository owns.
requires_nitro = pytest.mark.skipif(
    not NITRO.is_dir(),
    reason=f"needs the Nitro benchmark data, not found at {NITRO}: it is AGPL-3.0 and not part "
    "of this repository (upstream: janhq/open-foundry rag-is-not-enough and janhq/nitro's docs, "
    "see examples/nitro/README.md); set CRUCIBLE_NITRO_DATA to a folder holding docs/, "
    "mcq_nitro.csv and training_qa_pairs.csv",
)


ModelFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tokenizer trained on text that changes only with a pinned dependency (the sources of
    transformers, trl and peft), not with this repository: the tiny models, and so what the
    workload tests measure on them, stay the same from one commit to the next."""
    import peft
    import transformers
    import trl

    from crucible.workloads.tinymodels import train_tokenizer

    sources = [
        Path(transformers.__file__).parent / "models" / "llama" / "modeling_llama.py",
        Path(transformers.__file__).parent / "trainer.py",
        Path(trl.__file__).parent / "trainer" / "sft_trainer.py",
        Path(peft.__file__).parent / "tuners" / "lora" / "layer.py",
    ]
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


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    workdir = Path(tempfile.mkdtemp(prefix="crucible-cp-"))
    local = LocalCluster(workdir, nodes=2)
    try:
        local.start()
        local.kubectl("apply", "--server-side", "-f", str(CRDS))
        local.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        yield local
    finally:
        local.stop()
        if request.session.testsfailed:
            kept = local.keep_logs(LOGS / "controlplane")
            print(f"\ncontrol-plane logs kept in {kept}")
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def node(cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[LocalNode]:
    """A real node (kubelet, containerd) joined to the session's control plane, tainted so that
    only the pods of `real_node` tests (whose namespaces tolerate it and select it) run there;
    kwok's nodes take the others. Its hostPath volumes live under `node.volumes[0]`."""
    workdir = Path(tempfile.mkdtemp(prefix="crucible-node-"))
    volumes = workdir / "volumes"
    volumes.mkdir()
    volumes.chmod(0o777)  # hostPath volumes have no fsGroup: the pods' user must write there
    try:
        with local_nodes(cluster, workdir, volumes=[volumes], taints=[NODE_TAINT]) as running:
            yield running
    finally:
        if request.session.testsfailed:
            shutil.copytree(
                workdir / "node" / "log", LOGS / "node", symlinks=True, dirs_exist_ok=True
            )
            print(f"\nthe node's logs kept in {LOGS / 'node'}")
        shutil.rmtree(workdir, ignore_errors=True)


def node_annotations(node: LocalNode) -> dict[str, str]:
    """A namespace's pods go to `node` (PodNodeSelector) and tolerate its taint
    (PodTolerationRestriction): the API server's admission adds both to every pod."""
    key, _, rest = NODE_TAINT.partition("=")
    effect = rest.partition(":")[2]
    return {
        "scheduler.alpha.kubernetes.io/node-selector": f"{NODE_LABEL}={node.name}",
        "scheduler.alpha.kubernetes.io/defaultTolerations": json.dumps(
            [{"key": key, "operator": "Exists", "effect": effect}]
        ),
    }


@pytest.fixture
def namespace(cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test; deleted afterwards unless the test failed. The API server's
    Pod Security admission enforces the restricted level there, so every workload pod is
    proven to meet it; where vLLM servers run (upstream image, as root) it enforces baseline
    and warns of restricted. A `real_node` test's pods run on the real node."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    baseline = request.node.get_closest_marker("pod_security_baseline")
    level = "baseline" if baseline else "restricted"
    real = request.node.get_closest_marker("real_node")
    annotations = node_annotations(request.getfixturevalue("node")) if real else {}
    cluster.kubectl_apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": name,
                    "labels": {
                        "pod-security.kubernetes.io/enforce": level,
                        "pod-security.kubernetes.io/warn": "restricted",
                    },
                    "annotations": annotations,
                },
            }
        ]
    )
    # Pods need the namespace's default ServiceAccount, which the controller manager makes.
    deadline = time.monotonic() + 30
    while cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no default ServiceAccount in {name}")
        time.sleep(0.2)
    yield name
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        dump = cluster.kubectl("get", "all,crucible,events", "-n", name, "-o", "yaml", check=False)
        LOGS.mkdir(exist_ok=True)
        (LOGS / f"{request.node.name}.{name}.yaml").write_text(dump.stdout + dump.stderr)
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def get_object(cluster: LocalCluster) -> Callable[..., dict[str, Any]]:
    def get(kind: str, name: str, namespace: str) -> dict[str, Any]:
        out = cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout
        result: dict[str, Any] = json.loads(out)
        return result

    return get


def wait_for(
    predicate: Callable[[], Any], timeout: float = 60, interval: float = 0.25, what: str = ""
) -> Any:
    """Poll until `predicate()` is truthy and return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what or predicate}")
        time.sleep(interval)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)
        if item.get_closest_marker("real_node"):
            item.add_marker(pytest.mark.cluster)
