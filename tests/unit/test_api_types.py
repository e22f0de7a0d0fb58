"""The API types parse what users write and fill in the documented defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from crucible.api import KINDS_BY_NAME
from crucible.api.evalrun import EvalRunSpec
from crucible.api.finetunejob import FineTuneJobSpec
from crucible.api.modelmerge import ModelMergeSpec
from crucible.api.ragindex import RagIndexSpec
from crucible.resources.status import describe_validation_error
from tests.conftest import EXAMPLES


def example_documents() -> list[tuple[Path, dict]]:
    return [
        (path, doc)
        for path in sorted(EXAMPLES.rglob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("apiVersion", "").startswith("crucible.dev/")
    ]


@pytest.mark.parametrize(
    ("path", "doc"), example_documents(), ids=lambda v: v.name if isinstance(v, Path) else ""
)
def test_examples_parse(path: Path, doc: dict) -> None:
    KINDS_BY_NAME[doc["kind"]].spec.model_validate(doc["spec"])


def test_defaults_of_the_recipe() -> None:
    rag = RagIndexSpec.model_validate(
        {
            "source": {"configMap": {"name": "docs"}},
            "database": {"connectionSecretRef": {"name": "pg", "key": "uri"}, "table": "t"},
        }
    )
    assert (rag.chunking.chunk_size, rag.chunking.chunk_overlap) == (300, 30)
    assert rag.embedding.model == "hf://BAAI/bge-base-en-v1.5"
    assert rag.resources.gpus == 0
    ev = EvalRunSpec.model_validate(
        {"models": [{"name": "a", "uri": "hf://o/a"}], "dataset": {"uri": "s3://b/mcq.csv"}}
    )
    assert ev.repeats == 5 and ev.serving.resources.gpus == 1
    ft = FineTuneJobSpec.model_validate(
        {"baseModel": {"uri": "hf://o/base"}, "dataset": {"uri": "s3://b/qa.jsonl"}}
    )
    assert ft.method == "sft" and ft.lora.target_modules == ["all-linear"]


def test_defaults_written_into_the_crd_match_the_types() -> None:
    schema = ModelMergeSpec.model_json_schema(by_alias=True)
    assert schema["properties"]["resources"]["default"] == {"gpus": 1}


def test_unknown_fields_are_refused_and_named() -> None:
    with pytest.raises(ValidationError) as error:
        ModelMergeSpec.model_validate(
            {"method": "linear", "models": [{"uri": "hf://o/a"}], "outputPath": "/x"}
        )
    assert "spec.outputPath" in describe_validation_error(error.value)


def test_round_trip_uses_api_spelling() -> None:
    spec = FineTuneJobSpec.model_validate(
        {
            "baseModel": {"modelRef": {"kind": "ModelMerge", "name": "m"}},
            "dataset": {"configMap": {"name": "qa", "key": "qa.jsonl"}},
        }
    )
    wire = spec.to_api()
    assert wire["baseModel"] == {"modelRef": {"kind": "ModelMerge", "name": "m"}}
    assert wire["hyperparameters"]["gradientAccumulationSteps"] == 1


def test_a_mistake_the_operator_finds_is_named_as_kubernetes_names_it_in_words() -> None:
    """models[0], not models.0; the format's words, not a regular expression."""
    with pytest.raises(ValidationError) as error:
        ModelMergeSpec.model_validate(
            {"method": "linear", "models": [{"uri": "hf://org/na\u00a0me"}, {"uri": "hf://o/b"}]}
        )
    message = describe_validation_error(error.value)
    assert message.startswith("spec.models[0].uri: must be a model URI: hf://organisation/name")
    assert "e.g. hf://HuggingFaceTB/SmolLM2-135M-Instruct" in message
