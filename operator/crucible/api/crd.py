"""Generate CustomResourceDefinitions from the pydantic API types.

Pydantic writes JSON Schema (2020-12); the API server wants a structural OpenAPI v3 schema:
no $ref, no null types, no `additionalProperties: false`, boolean exclusive bounds, and a
description on every field so that `kubectl explain` documents the API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from crucible.api.base import GROUP, VERSION, ApiModel, cel
from crucible.api.kinds import AGE_COLUMN, CATEGORY, KINDS, PHASE_COLUMN, AnyKind

IMMUTABLE_ONCE_STARTED = cel(
    "!has(oldSelf.status) || !has(oldSelf.status.startTime) || self.spec == oldSelf.spec",
    "spec is immutable once the run has started (status.startTime is set): to re-run, "
    "create a new resource with another name",
    field_path=".spec",
    reason="FieldValueForbidden",
)

_DROPPED_KEYS = {"title", "$defs"}
_KEY_ORDER = {k: i for i, k in enumerate(("description", "type", "format", "default", "enum"))}


class SchemaError(ValueError):
    """The API types cannot be expressed as a structural schema."""


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline $ref and collapse Optional (anyOf with null) into the non-null branch."""
    schema = dict(schema)
    if "$ref" in schema:
        target = defs[schema.pop("$ref").rsplit("/", 1)[-1]]
        schema = {**target, **schema}  # siblings (description, default) win
    if "anyOf" in schema and not schema.get("x-kubernetes-int-or-string"):
        branches = [b for b in schema.pop("anyOf") if b.get("type") != "null"]
        if len(branches) != 1:
            raise SchemaError(f"unions are not structural: {branches}")
        schema = {**_resolve(branches[0], defs), **schema}
    if "allOf" in schema and len(schema["allOf"]) == 1:
        schema = {**_resolve(schema.pop("allOf")[0], defs), **schema}
    return schema


def structural(schema: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    """Convert one pydantic JSON schema node (and its children) to a structural schema."""
    schema = _resolve(schema, defs)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "default" and value is None:
            continue
        if key == "additionalProperties" and value is False:
            continue
        if key == "const":
            out["enum"] = [value]
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum"):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
            continue
        if key == "properties":
            out["properties"] = {
                name: _property(sub, defs, f"{path}.{name}") for name, sub in value.items()
            }
            continue
        if key == "items":
            out["items"] = structural(value, defs, f"{path}[]")
            continue
        if key == "additionalProperties":
            out["additionalProperties"] = structural(value, defs, f"{path}{{}}")
            continue
        out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if "type" not in out and not out.get("x-kubernetes-int-or-string"):
        raise SchemaError(f"{path}: no type")
    said = [*_bounds_in_words(out), *_unique_keys_in_words(out)]
    if said:
        out["x-kubernetes-validations"] = [*said, *out.get("x-kubernetes-validations", [])]
    # Readers of the YAML look for these first.
    return {k: out[k] for k in sorted(out, key=lambda k: _KEY_ORDER.get(k, len(_KEY_ORDER)))}


def _literal(value: float, type_: str) -> str:
    return repr(float(value)) if type_ == "number" else str(int(value))


def _bounds_in_words(node: dict[str, Any]) -> list[dict[str, Any]]:
    """The schema's bounds again as a rule whose message says what to choose: the API
    server's own ("should be greater than or equal to 1") only says what is wrong."""
    type_ = node.get("type")
    if type_ == "array" and node.get("minItems"):
        n = node["minItems"]
        return [
            cel(
                f"size(self) >= {n}",
                f"needs at least {n} item{'s' if n > 1 else ''}: list "
                + ("one" if n == 1 else str(n)),
                reason="FieldValueInvalid",
            )
        ]
    if type_ not in ("integer", "number") or not {"minimum", "maximum"} & node.keys():
        return []
    low, high = node.get("minimum"), node.get("maximum")
    strict_low, strict_high = node.get("exclusiveMinimum"), node.get("exclusiveMaximum")
    checks, words = [], []
    if low is not None:
        checks.append(f"self {'>' if strict_low else '>='} {_literal(low, type_)}")
        words.append(f"{'greater than' if strict_low else 'at least'} {low}")
    if high is not None:
        checks.append(f"self {'<' if strict_high else '<='} {_literal(high, type_)}")
        words.append(f"{'less than' if strict_high else 'at most'} {high}")
    default = node.get("default")
    if default is not None:
        example = default
    elif low is not None and not strict_low:
        example = low
    elif high is not None and not strict_high:
        example = high
    elif low is not None and high is not None:
        example = (low + high) / 2
    elif low is not None:
        example = low + 1
    else:
        assert high is not None
        example = high - 1
    return [
        cel(
            " && ".join(checks),
            f"must be {' and '.join(words)}: choose a value in that range, e.g. {example}",
            reason="FieldValueInvalid",
        )
    ]


def _unique_keys_in_words(node: dict[str, Any]) -> list[dict[str, Any]]:
    """A list map's keys once each, in words: the API server's own message ("Duplicate
    value") does not say what to do."""
    if node.get("x-kubernetes-list-type") != "map":
        return []
    keys = node["x-kubernetes-list-map-keys"]
    same = " && ".join(f"y.{k} == x.{k}" for k in keys)
    return [
        cel(
            f"self.all(x, self.exists_one(y, {same}))",
            f"two items have the same {' and '.join(keys)}: give each its own",
            reason="FieldValueInvalid",
        )
    ]


def _property(schema: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    prop = structural(schema, defs, path)
    if not prop.get("description"):
        raise SchemaError(f"{path}: every field needs a description (Field(description=…))")
    return prop


def openapi_schema(kind: AnyKind) -> dict[str, Any]:
    """The openAPIV3Schema of one kind."""

    def part(model: type[ApiModel], description: str) -> dict[str, Any]:
        raw = model.model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
        node = structural(raw, raw.get("$defs", {}), kind.kind)
        node["description"] = description
        return node

    return {
        "type": "object",
        "description": kind.description,
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "Versioned schema of this object: crucible.dev/v1alpha1.",
            },
            "kind": {"type": "string", "description": f"Always {kind.kind}."},
            "metadata": {"type": "object"},
            "spec": part(kind.spec, f"Desired state of the {kind.kind}."),
            "status": part(kind.status, f"Observed state of the {kind.kind}, set by Crucible."),
        },
        "required": ["spec"],
        "x-kubernetes-validations": [
            *kind.name_rules(),
            *([] if kind.long_lived else [IMMUTABLE_ONCE_STARTED]),
        ],
    }


def build_crd(kind: AnyKind) -> dict[str, Any]:
    columns = (PHASE_COLUMN, *kind.headline_columns, AGE_COLUMN)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{kind.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "crucible"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {
                            "name": c.name,
                            "type": c.type,
                            "jsonPath": c.json_path,
                            "description": c.description,
                            **({"priority": c.priority} if c.priority else {}),
                        }
                        for c in columns
                    ],
                    "schema": {"openAPIV3Schema": openapi_schema(kind)},
                }
            ],
        },
    }


def crd_filename(kind: AnyKind) -> str:
    return f"{GROUP}_{kind.plural}.yaml"


class _PlainDumper(yaml.SafeDumper):
    """Writes repeated subtrees out in full: anchors would make the CRDs hard to read."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


# YAML 1.1 readers (Go's sigs.k8s.io/yaml, hence kubectl) take these bare words for booleans.
_YAML11_BOOLEANS = {"y", "n", "yes", "no", "on", "off", "true", "false"}


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "'" if value.lower() in _YAML11_BOOLEANS else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_PlainDumper.add_representer(str, _represent_str)


def to_yaml(document: Any) -> str:
    return yaml.dump(document, Dumper=_PlainDumper, sort_keys=False, width=100, allow_unicode=True)


def render_crds() -> dict[str, str]:
    """File name → YAML text of every CRD."""
    header = "# Generated by `crucible crds` from crucible.api; do not edit.\n"
    return {crd_filename(k): header + to_yaml(build_crd(k)) for k in KINDS}


def write_crds(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_crds().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written
