"""The building blocks every API type shares: camelCase models and CEL rules.

The pydantic models are the single source of the API: they generate the CRD schemas
(crucible.api.crd), parse specs in the operator and document every field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

from crucible.api.formats import QUANTITY

GROUP = "crucible.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

CelReason = Literal[
    "FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired", "FieldValueDuplicate"
]


def cel(
    rule: str,
    message: str,
    *,
    field_path: str | None = None,
    reason: CelReason | None = None,
    optional_old_self: bool = False,
) -> dict[str, Any]:
    """One `x-kubernetes-validations` entry; the message names the field and the fix."""
    entry: dict[str, Any] = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    if optional_old_self:
        entry["optionalOldSelf"] = True
    return entry


def api_config(*rules: dict[str, Any]) -> ConfigDict:
    """Model configuration for API types: camelCase on the wire, unknown fields refused."""
    config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
        validate_default=True,
    )
    if rules:
        config["json_schema_extra"] = {"x-kubernetes-validations": list(rules)}
    return config


class ApiModel(BaseModel):
    """Base of every API object."""

    model_config = api_config()

    def to_api(self) -> dict[str, Any]:
        """The object as the Kubernetes API spells it (camelCase, unset fields left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


M = TypeVar("M", bound=ApiModel)


def defaulted(value: M, *, description: str) -> Any:
    """A field defaulting to `value`, a whole object: the CRD carries it too, so the API server
    fills it in and `kubectl get -o yaml` shows the settings in force."""
    return Field(
        default_factory=lambda: value.model_copy(deep=True),
        description=description,
        json_schema_extra={"default": value.to_api()},
    )


def _quantity(value: int | str) -> int | str:
    """A quantity that is not negative; the same check as the CRD's rule."""
    if isinstance(value, int):
        if value < 0:
            raise ValueError(QUANTITY.message)
        return value
    return QUANTITY.check(value)


# A Kubernetes resource quantity that is not negative: `4`, `500m`, `16Gi`.
Quantity = Annotated[
    int | str,
    AfterValidator(_quantity),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-validations": [
                {
                    "rule": f"type(self) == string ? {QUANTITY.rule()['rule']} : self >= 0",
                    "message": QUANTITY.message,
                }
            ],
        }
    ),
]
