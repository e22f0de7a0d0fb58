"""The merge workload with real mergekit on tiny models: the merged tensors are the expected
interpolations, the result loads and generates, and bad inputs fail naming the models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from crucible.api.contract import MergeTask, WorkloadReport, unpack_report
from crucible.workloads import common
from crucible.workloads.common import WorkloadError, resolve_uri, sha256_of
from crucible.workloads.merge import MANIFEST, merge
from tests.conftest import ModelFactory

torch = pytest.importorskip("torch")
CHECKED = "model.layers.1.self_attn.q_proj.weight"


def uri(path: Path) -> str:
    return f"pvc://root{path}"


def task(tmp_path: Path, mergekit: dict[str, Any]) -> MergeTask:
    return MergeTask(
        namespace="team",
        name="m",
        mounts={"root": "/"},
        output_uri="pvc://store/team/modelmerges/m/",
        output_path=str(tmp_path / "out"),
        mergekit=mergekit,
    )


def tensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    found: dict[str, Any] = {}
    for file in sorted(path.glob("*.safetensors")):
        found.update(load_file(file))
    return found


def slerp(t: float, a: Any, b: Any) -> Any:
    """Spherical interpolation as mergekit defines it (flattened, lerp when colinear)."""
    a64, b64 = a.double(), b.double()
    dot = torch.sum(a64 / a64.norm() * (b64 / b64.norm()))
    if abs(dot) > 0.9995:
        return (1 - t) * a64 + t * b64
    theta = torch.arccos(dot)
    return (torch.sin((1 - t) * theta) * a64 + torch.sin(t * theta) * b64) / torch.sin(theta)


def test_slerp_interpolates_each_tensor(tmp_path: Path, make_model: ModelFactory) -> None:
    a, b = make_model(1), make_model(2)
    out = merge(
        task(
            tmp_path,
            {
                "merge_method": "slerp",
                "base_model": uri(a),
                "models": [{"model": uri(a)}, {"model": uri(b)}],
                "parameters": {"t": 0.3},
                "dtype": "float32",
            },
        )
    )
    merged, ta, tb = tensors(out), tensors(a), tensors(b)
    expected = slerp(0.3, ta[CHECKED], tb[CHECKED]).float()
    assert torch.allclose(merged[CHECKED], expected, atol=1e-5)
    assert not torch.allclose(merged[CHECKED], ta[CHECKED])


def test_linear_weights_normalized(tmp_path: Path, make_model: ModelFactory) -> None:
    a, b = make_model(1), make_model(2)
    out = merge(
        task(
            tmp_path,
            {
                "merge_method": "linear",
                "models": [
                    {"model": uri(a), "parameters": {"weight": 1.0}},
                    {"model": uri(b), "parameters": {"weight": 3.0}},
                ],
                "dtype": "float32",
            },
        )
    )
    merged, ta, tb = tensors(out), tensors(a), tensors(b)
    assert torch.allclose(merged[CHECKED], 0.25 * ta[CHECKED] + 0.75 * tb[CHECKED], atol=1e-6)


def test_ties_keeps_the_elected_sign(tmp_path: Path, make_model: ModelFactory) -> None:
    base, a, b = make_model(3), make_model(1), make_model(2)
    out = merge(
        task(
            tmp_path,
            {
                "merge_method": "ties",
                "base_model": uri(base),
                "models": [
                    {"model": uri(a), "parameters": {"weight": 1.0, "density": 1.0}},
                    {"model": uri(b), "parameters": {"weight": 1.0, "density": 1.0}},
                ],
                "parameters": {"normalize": True},
                "dtype": "float32",
            },
        )
    )
    merged, t0, ta, tb = tensors(out), tensors(base), tensors(a), tensors(b)
    deltas = torch.stack([ta[CHECKED] - t0[CHECKED], tb[CHECKED] - t0[CHECKED]]).double()
    elected = torch.sign(deltas.sum(dim=0))
    agree = (torch.sign(deltas) == elected).double()
    divisor = agree.sum(dim=0)
    divisor[divisor == 0] = 1
    expected = t0[CHECKED].double() + (deltas * agree).sum(dim=0) / divisor
    assert torch.allclose(merged[CHECKED].double(), expected, atol=1e-5)


@pytest.mark.parametrize("cores", [1, 8])
def test_result_loads_generates_and_has_a_manifest(
    tmp_path: Path, make_model: ModelFactory, monkeypatch: pytest.MonkeyPatch, cores: int
) -> None:
    """With 8 cores and a small floor the output comes in shards of an eighth of the input
    each, every one of them hashed in the manifest."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import crucible.workloads.merge as workload

    monkeypatch.setattr(workload, "cores", lambda: cores)
    monkeypatch.setattr(workload, "MIN_SHARD_BYTES", 256 << 10)
    a, b = make_model(1), make_model(2)
    out = merge(
        task(
            tmp_path,
            {
                "merge_method": "slerp",
                "base_model": uri(a),
                "models": [{"model": uri(a)}, {"model": uri(b)}],
                "parameters": {"t": 0.5},
                "dtype": "bfloat16",
            },
        )
    )
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    prompt = tokenizer("How do I merge models?", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 8
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["kind"] == "ModelMerge" and manifest["uri"].startswith("pvc://store/")
    assert [e["uri"] for e in manifest["lineage"]] == [uri(a), uri(b)]
    assert manifest["mergekit"]["config"]["parameters"] == {"t": 0.5}
    # bfloat16 out of float32: half the input's bytes, in shards of an eighth of it each
    assert sorted(manifest["files"]) == sorted(p.name for p in out.glob("*.safetensors"))
    assert len(manifest["files"]) == 1 if cores == 1 else len(manifest["files"]) >= 4
    for name, digest in manifest["files"].items():
        assert sha256_of(out / name) == digest
    assert not list(tmp_path.glob(".out.partial-*"))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"hidden_size": 128, "num_attention_heads": 2, "num_key_value_heads": 2}, "hidden_size"),
        ({"num_hidden_layers": 3}, "num_hidden_layers"),
        ({"vocab_size": 2100}, "vocab_size"),
    ],
)
def test_incompatible_models_fail_naming_them(
    tmp_path: Path, make_model: ModelFactory, overrides: dict[str, Any], field: str
) -> None:
    a, odd = make_model(1), make_model(7, **overrides)
    with pytest.raises(WorkloadError) as error:
        merge(
            task(
                tmp_path,
                {
                    "merge_method": "linear",
                    "dtype": "float32",
                    "models": [
                        {"model": uri(a), "parameters": {"weight": 1.0}},
                        {"model": uri(odd), "parameters": {"weight": 1.0}},
                    ],
                },
            )
        )
    message = str(error.value)
    assert uri(a) in message and uri(odd) in message and field in message
    assert not (tmp_path / "out").exists()


def test_the_report_is_the_termination_message_in_a_pod(
    tmp_path: Path, make_model: ModelFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a pod, the kubelet's termination log exists: the last report is packed into it,
    the same report as the one written elsewhere."""
    a, b = make_model(1), make_model(2)
    termination_log = tmp_path / "termination-log"
    termination_log.touch()
    monkeypatch.setattr(common, "TERMINATION_LOG", termination_log)
    report = tmp_path / "report.json"
    monkeypatch.setenv("CRUCIBLE_REPORT_FILE", str(report))
    models = [{"model": uri(m), "parameters": {"weight": 1.0}} for m in (a, b)]
    merge(task(tmp_path, {"merge_method": "linear", "dtype": "float32", "models": models}))
    packed = unpack_report(termination_log.read_text())
    assert packed == WorkloadReport.model_validate_json(report.read_text())
    assert packed.message and packed.message.startswith("merged 2 models with linear")


def test_command_line_reports_and_fails_clearly(tmp_path: Path, make_model: ModelFactory) -> None:
    a, b = make_model(1), make_model(2)
    report = tmp_path / "report.json"
    good = task(
        tmp_path,
        {
            "merge_method": "linear",
            "dtype": "float32",
            "models": [
                {"model": uri(a), "parameters": {"weight": 1.0}},
                {"model": uri(b), "parameters": {"weight": 1.0}},
            ],
        },
    )
    bad = good.model_copy(
        update={
            "mergekit": {
                **good.mergekit,
                "models": [{"model": uri(a)}, {"model": "pvc://missing/model"}],
            }
        }
    )
    for name, body in (("good", good), ("bad", bad)):
        (tmp_path / f"{name}.json").write_text(body.model_dump_json(by_alias=True))
    env = {"CRUCIBLE_REPORT_FILE": str(report), "PATH": "/usr/bin:/bin"}
    ok = subprocess.run(
        [sys.executable, "-m", "crucible.workloads.merge", "--task", str(tmp_path / "good.json")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(report.read_text())["message"].startswith("merged 2 models with linear")
    failed = subprocess.run(
        [sys.executable, "-m", "crucible.workloads.merge", "--task", str(tmp_path / "bad.json")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert failed.returncode == 1
    assert "pvc://missing/model: PersistentVolumeClaim 'missing' is not mounted" in failed.stderr


def test_a_uri_that_leaves_its_volume_is_refused(tmp_path: Path) -> None:
    """The API server refuses '..' in URIs; should one reach a workload anyway, it reads
    nothing outside the volume the URI names."""
    store = tmp_path / "store"
    (store / "models").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    mounts = {"crucible-models": str(store)}
    assert resolve_uri("pvc://crucible-models/models", mounts, tmp_path) == store / "models"
    with pytest.raises(WorkloadError, match=r"'models/\.\./\.\./secret' leaves"):
        resolve_uri("pvc://crucible-models/models/../../secret", mounts, tmp_path)
    with pytest.raises(WorkloadError, match="leaves"):
        resolve_uri("pvc://crucible-models//etc", mounts, tmp_path)
