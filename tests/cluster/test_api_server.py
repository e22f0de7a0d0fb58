"""The CRDs on a real API server: examples accepted, mistakes rejected with the field named."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from crucible.devcluster.cluster import LocalCluster
from tests.conftest import EXAMPLES, ROOT

INVALID_DIR = ROOT / "tests" / "invalid"
INVALID = sorted(INVALID_DIR.glob("*.yaml"))


def expectations(path: Path) -> list[str]:
    return [
        line.removeprefix("# expect:").strip()
        for line in path.read_text().splitlines()
        if line.startswith("# expect:")
    ]


def test_the_invalid_corpus_is_large_and_says_what_it_expects() -> None:
    assert len(INVALID) >= 25
    for path in INVALID:
        assert expectations(path), f"{path.name} has no '# expect:' line"


# What a message that says how to mend the mistake has: an imperative after the reason
# ("…: use …", "…; remove …", "… or set …"), or an example value.
FIX = re.compile(
    r"(?:[:;,]|\bor|\bthen|\bto)\s+(?:set|remove|add|use|list|name|give|choose|create|correct|"
    r"leave|raise|lower|write|make|rename|replace|keep|move|shorten|drop|point|pick|put|mark|"
    r"serve)\b"
    r"|\be\.g\.|\bfor example\b"
)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_resource_is_rejected_naming_the_field(
    cluster: LocalCluster, namespace: str, path: Path
) -> None:
    """Refused with the field named and, in words, what to change."""
    result = cluster.kubectl("create", "-n", namespace, "-f", str(path), check=False)
    assert result.returncode != 0, f"{path.name} was accepted"
    for expected in expectations(path):
        assert expected in result.stderr
    # An unknown field is refused by the API server's decoder, before any schema: no rule of
    # ours can add words to its message (which names the field).
    if "strict decoding error: unknown field" not in result.stderr:
        assert FIX.search(result.stderr), f"{path.name}: no fix in {result.stderr}"
    listed = cluster.kubectl("get", "crucible", "-n", namespace, "-o", "name").stdout
    assert not listed.strip()


@pytest.mark.parametrize(
    "path", sorted(INVALID_DIR.glob("*-name-too-long.yaml")), ids=lambda p: p.stem
)
def test_a_name_as_long_as_the_kind_allows_is_accepted(
    cluster: LocalCluster, namespace: str, path: Path
) -> None:
    """One character fewer than the corpus's too-long name: the longest the rule allows."""
    resource = yaml.safe_load(path.read_text())
    resource["metadata"]["name"] = resource["metadata"]["name"][:-1]
    cluster.kubectl_apply([resource], "-n", namespace)


def test_a_name_with_a_dot_is_accepted_where_no_service_is_named_after_it(
    cluster: LocalCluster, namespace: str
) -> None:
    """An EvalRun of endpoints alone, a SyntheticDataset whose teacher is an endpoint: they
    serve nothing, so no Service takes their names, and a dot is a valid name's."""
    endpoint = {"endpoint": {"url": "https://api.example.com/v1", "model": "gpt-4"}}
    for path, name, spec in (
        ("er-name-with-a-dot.yaml", "eval.v2", {"models": [{"name": "gpt", **endpoint}]}),
        ("sds-name-with-a-dot.yaml", "qa.v2", {"teacher": endpoint}),
    ):
        resource = yaml.safe_load((INVALID_DIR / path).read_text())
        resource["metadata"]["name"] = name
        resource["spec"].update(spec)
        cluster.kubectl_apply([resource], "-n", namespace)


def test_weights_summing_to_zero_are_a_task_vector_where_normalize_is_off(
    cluster: LocalCluster, namespace: str
) -> None:
    """What mm-weights-summing-to-zero refuses, with normalize false: the models added up as
    weighted, a model minus another, which has a meaning."""
    resource = yaml.safe_load((INVALID_DIR / "mm-weights-summing-to-zero.yaml").read_text())
    resource["spec"]["parameters"] = {"normalize": False}
    cluster.kubectl_apply([resource], "-n", namespace)


@pytest.mark.parametrize(
    "path",
    sorted(p for p in EXAMPLES.rglob("*.yaml") if p.name != "kustomization.yaml"),
    ids=lambda p: str(p.relative_to(EXAMPLES)),
)
def test_example_is_accepted(cluster: LocalCluster, namespace: str, path: Path) -> None:
    cluster.kubectl("create", "-n", namespace, "-f", str(path))


def test_get_crucible_lists_every_kind_with_its_columns(
    cluster: LocalCluster, namespace: str
) -> None:
    cluster.kubectl("create", "-n", namespace, "-f", str(EXAMPLES / "nitro"))
    cluster.kubectl(
        "patch",
        "evalrun",
        "nitro-benchmark",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(
            {"status": {"phase": "Succeeded", "bestAccuracy": 0.578, "bestModel": "nitro-sft"}}
        ),
    )
    cluster.kubectl(
        "patch",
        "ragindex",
        "nitro-docs",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"phase": "Succeeded", "chunks": 412}}),
    )
    table = cluster.kubectl("get", "crucible", "-n", namespace).stdout
    for kind in (
        "evalrun.crucible.dev/nitro-benchmark",
        "finetunejob.crucible.dev/nitro-sft",
        "modelmerge.crucible.dev/stealth-merge",
        "ragindex.crucible.dev/nitro-docs",
        "syntheticdataset.crucible.dev/nitro-qa",
    ):
        assert kind in table
    evalruns = cluster.kubectl("get", "er", "-n", namespace).stdout.splitlines()
    assert evalruns[0].split() == ["NAME", "PHASE", "BEST", "MODEL", "AGE"]
    assert evalruns[1].split()[1:4] == ["Succeeded", "0.578", "nitro-sft"]
    ragindexes = cluster.kubectl("get", "ri", "-n", namespace).stdout.splitlines()
    assert ragindexes[0].split() == ["NAME", "PHASE", "CHUNKS", "AGE"]
    assert ragindexes[1].split()[1:3] == ["Succeeded", "412"]
    merges = cluster.kubectl("get", "mm", "-n", namespace).stdout.splitlines()
    assert merges[0].split() == ["NAME", "PHASE", "OUTPUT", "AGE"]
    assert "STEP" in cluster.kubectl("get", "ftj", "-n", namespace).stdout
    datasets = cluster.kubectl("get", "sds", "-n", namespace).stdout.splitlines()
    assert datasets[0].split() == ["NAME", "PHASE", "PAIRS", "OUTPUT", "AGE"]


def test_kubectl_explain_documents_the_api(cluster: LocalCluster) -> None:
    method = cluster.kubectl("explain", "modelmerge.spec.method").stdout
    assert "mergekit merge method" in method and "slerp" in method
    repeats = cluster.kubectl("explain", "evalrun.spec.repeats").stdout
    assert "sample standard" in repeats and "mean" in repeats


def test_spec_is_immutable_once_the_run_has_started(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl("create", "-n", namespace, "-f", str(EXAMPLES / "nitro" / "01-merge.yaml"))
    edit = ["patch", "mm", "stealth-merge", "-n", namespace, "--type=merge", "-p"]
    cluster.kubectl(*edit, '{"spec": {"dtype": "float16"}}')  # not started: editable
    cluster.kubectl(
        "patch",
        "mm",
        "stealth-merge",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status": {"phase": "Running", "startTime": "2026-01-01T00:00:00Z"}}',
    )
    refused = cluster.kubectl(*edit, '{"spec": {"dtype": "float32"}}', check=False)
    assert refused.returncode != 0
    assert "spec: Forbidden: spec is immutable once the run has started" in refused.stderr
    assert "create a new resource" in refused.stderr
    cluster.kubectl(*edit, '{"metadata": {"labels": {"team": "ml"}}}')  # metadata still is
    stored = json.loads(
        cluster.kubectl("get", "mm", "stealth-merge", "-n", namespace, "-o", "json").stdout
    )
    assert stored["spec"]["dtype"] == "float16"


def test_server_fills_in_documented_defaults(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl("create", "-n", namespace, "-f", str(EXAMPLES / "nitro" / "03-rag.yaml"))
    stored = json.loads(
        cluster.kubectl("get", "ri", "nitro-docs", "-n", namespace, "-o", "json").stdout
    )
    assert stored["spec"]["resources"] == {"gpus": 0}
    assert stored["spec"]["chunking"]["splitMarkdownHeaders"] is True
    assert stored["spec"]["embedding"]["batchSize"] == 32
