"""Run by the KServe SDK's own Python (not the operator's): checks a JSON object read from
stdin against the SDK's API types — KServe's own (OpenAPI-generated: walked field by field for
unknown keys, wrong value types and missing required fields) and the Kubernetes types they
embed (pydantic models in the kubernetes client it brings, validated strictly) — and prints
{"problems": [...], "unchecked": [...]}: the paths whose type the SDK names but does not ship."""

from __future__ import annotations

import json
import sys
from typing import Any

import kserve.models
import kubernetes.client.models
from pydantic import BaseModel, ValidationError

PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "bool": (bool,),
    "float": (int, float),
    "datetime": (str,),
    "date": (str,),
    "object": (object,),
}


def model(name: str) -> Any:
    return getattr(kserve.models, name, None) or getattr(kubernetes.client.models, name, None)


def check(value: Any, type_name: str, path: str, problems: list[str], unchecked: list[str]) -> None:
    if type_name.startswith("list["):
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list")
            return
        for i, item in enumerate(value):
            check(item, type_name[5:-1], f"{path}[{i}]", problems, unchecked)
        return
    if type_name.startswith("dict("):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a map")
            return
        inner = type_name[type_name.index(",") + 1 : -1].strip()
        for key, item in value.items():
            check(item, inner, f"{path}.{key}", problems, unchecked)
        return
    if type_name in PRIMITIVES:
        wrong_bool = isinstance(value, bool) and type_name in ("int", "float")
        if wrong_bool or not isinstance(value, PRIMITIVES[type_name]):
            problems.append(f"{path}: expected {type_name}, got {type(value).__name__}")
        return
    cls = model(type_name)
    if cls is None:
        unchecked.append(f"{path} ({type_name})")
        return
    if not isinstance(value, dict):
        problems.append(f"{path}: expected an object ({type_name})")
        return
    if issubclass(cls, BaseModel):  # a Kubernetes type: unknown fields are refused
        try:
            cls.model_validate(value)
        except ValidationError as error:
            for problem in error.errors():
                where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in problem["loc"])
                problems.append(f"{path}{where}: {problem['msg']}")
        return
    attributes = {key: attr for attr, key in cls.attribute_map.items()}
    for key, item in value.items():
        if key not in attributes:
            problems.append(f"{path}.{key}: not a field of {type_name}")
        else:
            check(item, cls.openapi_types[attributes[key]], f"{path}.{key}", problems, unchecked)
    try:  # the SDK's setters refuse a required field left out
        cls(**{attributes[k]: v for k, v in value.items() if k in attributes})
    except ValueError as error:
        problems.append(f"{path}: {error}")


def main() -> None:
    document = json.load(sys.stdin)
    problems: list[str] = []
    unchecked: list[str] = []
    check(document["object"], document["type"], "", problems, unchecked)
    json.dump({"problems": problems, "unchecked": unchecked}, sys.stdout)


if __name__ == "__main__":
    main()
