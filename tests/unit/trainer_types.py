"""Checks a manifest against the API types of PyPI's kubeflow-trainer-api (OpenAPI-generated
pydantic models of Kubeflow Trainer, JobSet and the Kubernetes types they embed), walking it
field by field: the models themselves ignore unknown keys, and their one-of types (a Quantity,
an IntOrString) take the raw value only through from_dict, so model_validate alone would both
miss and misreport."""

from __future__ import annotations

import inspect
import types
import typing
from typing import Annotated, Any

from pydantic import BaseModel, TypeAdapter, ValidationError


def problems(value: dict[str, Any], model: type[BaseModel]) -> list[str]:
    found: list[str] = []
    check(value, model, "", found)
    return found


def check(value: Any, annotation: Any, path: str, found: list[str]) -> None:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated and typing.get_origin(args[0]) in (list, dict):
        check(value, args[0], path, found)
        return
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None and len(inner) < len(args):
            return
        if len(inner) == 1:
            check(value, inner[0], path, found)
            return
    if origin is list:
        if not isinstance(value, list):
            found.append(f"{path}: expected a list")
            return
        for i, item in enumerate(value):
            check(item, args[0], f"{path}[{i}]", found)
        return
    if origin is dict:
        if not isinstance(value, dict):
            found.append(f"{path}: expected a map")
            return
        for key, item in value.items():
            check(item, args[1], f"{path}.{key}", found)
        return
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        if "one_of_schemas" in annotation.model_fields:
            try:
                annotation.from_dict(value)  # type: ignore[attr-defined]
            except (ValueError, ValidationError):
                schemas = sorted(annotation.model_fields["one_of_schemas"].default)
                found.append(f"{path}: not one of {schemas}")
            return
        if not isinstance(value, dict):
            found.append(f"{path}: expected an object ({annotation.__name__})")
            return
        fields = {f.alias or name: f for name, f in annotation.model_fields.items()}
        for key, field in fields.items():
            if field.is_required() and key not in value:
                found.append(f"{path}.{key}: Field required")
        for key, item in value.items():
            if key not in fields:
                found.append(f"{path}.{key}: not a field of {annotation.__name__}")
            else:
                field = fields[key]
                leaf = Annotated[field.annotation, *field.metadata] if field.metadata else None
                check(item, leaf or field.annotation, f"{path}.{key}", found)
        return
    try:
        TypeAdapter(annotation).validate_python(value)
    except ValidationError as error:
        found.extend(f"{path}: {problem['msg']}" for problem in error.errors())
