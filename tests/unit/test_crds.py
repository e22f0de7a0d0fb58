"""The CRDs are generated from the API types and say what users need to know."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from crucible.api import KINDS
from crucible.api.crd import SchemaError, build_crd, render_crds, structural
from tests.conftest import CRDS


def test_committed_crds_match_the_api_types() -> None:
    rendered = render_crds()
    committed = {p.name: p.read_text() for p in CRDS.glob("*.yaml")}
    assert committed.keys() == rendered.keys(), "run `crucible crds` and commit crds/"
    for name, text in rendered.items():
        assert committed[name] == text, f"crds/{name} is stale: run `crucible crds`"


def _fields(schema: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for name, sub in schema.get("properties", {}).items():
        found.append((f"{path}.{name}", sub))
        found.extend(_fields(sub, f"{path}.{name}"))
    if "items" in schema:
        found.extend(_fields(schema["items"], f"{path}[]"))
    return found


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_every_field_is_documented(kind: Any) -> None:
    schema = build_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    undocumented = [
        path
        for path, sub in _fields(schema, kind.kind)
        if not sub.get("description") and not path.endswith(".metadata")
    ]
    assert not undocumented


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_schema_is_structural(kind: Any) -> None:
    text = yaml.safe_dump(build_crd(kind))
    for forbidden in ("$ref", "$defs", "additionalProperties: false", "type: 'null'", "title:"):
        assert forbidden not in text
    schema = build_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, sub in _fields(schema, kind.kind):
        assert "type" in sub or sub.get("x-kubernetes-int-or-string"), path
        assert "anyOf" not in sub or sub.get("x-kubernetes-int-or-string"), path


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_names_columns_and_category(kind: Any) -> None:
    version = build_crd(kind)["spec"]["versions"][0]
    names = build_crd(kind)["spec"]["names"]
    assert names["categories"] == ["crucible"]
    assert names["shortNames"]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[0] == "Phase" and columns[-1] == "Age" and len(columns) >= 3


def test_a_runs_spec_is_immutable_once_started_and_a_long_lived_kinds_is_not() -> None:
    for kind in KINDS:
        schema = build_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        rules = schema.get("x-kubernetes-validations") or []
        immutable = any("oldSelf.status.startTime" in r["rule"] for r in rules)
        assert immutable != kind.long_lived, kind.kind
    assert [k.kind for k in KINDS if k.long_lived] == ["ModelServing"]


def test_yaml11_booleans_are_quoted() -> None:
    # kubectl reads YAML 1.1, where a bare n is false: EvalRun's status has a field named n.
    text = render_crds()["crucible.dev_evalruns.yaml"]
    assert "- 'n'" in text and "\n                  - n\n" not in text


def test_unions_are_refused() -> None:
    schema = {"anyOf": [{"type": "string"}, {"type": "integer"}]}
    with pytest.raises(SchemaError):
        structural(schema, {}, "x")


def test_exclusive_bounds_become_openapi_v3_and_a_rule_that_says_what_to_choose() -> None:
    node = structural({"type": "number", "exclusiveMinimum": 0}, {}, "x")
    assert node == {
        "type": "number",
        "minimum": 0,
        "exclusiveMinimum": True,
        "x-kubernetes-validations": [
            {
                "rule": "self > 0.0",
                "message": "must be greater than 0: choose a value in that range, e.g. 1",
                "reason": "FieldValueInvalid",
            }
        ],
    }
    bounded = structural({"type": "integer", "minimum": 1, "maximum": 200, "default": 5}, {}, "x")
    assert bounded["x-kubernetes-validations"][0] == {
        "rule": "self >= 1 && self <= 200",
        "message": "must be at least 1 and at most 200: choose a value in that range, e.g. 5",
        "reason": "FieldValueInvalid",
    }


def test_list_maps_say_what_to_do_about_a_duplicate_key() -> None:
    node = structural(
        {
            "type": "array",
            "items": {"type": "object", "properties": {}},
            "minItems": 1,
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
        },
        {},
        "x",
    )
    assert [r["message"] for r in node["x-kubernetes-validations"]] == [
        "needs at least 1 item: list one",
        "two items have the same name: give each its own",
    ]


def test_crds_cli_writes_the_files(tmp_path: Path) -> None:
    from crucible.cli.main import main

    assert main(["crds", "-o", str(tmp_path), "--chart", ""]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(render_crds())
