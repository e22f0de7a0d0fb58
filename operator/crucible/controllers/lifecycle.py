"""What every kind's handlers share: parsing the spec with the API types and reporting it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from crucible.api import GROUP, VERSION, Kind
from crucible.api.base import ApiModel
from crucible.api.common import Phase
from crucible.resources.status import describe_validation_error, phase_status


def parse_spec(
    kind: Kind, spec: Mapping[str, Any], status: Mapping[str, Any], generation: int, patch: Any
) -> ApiModel | None:
    """The typed spec, or None after marking the resource Failed with the offending fields.

    The API server's schema catches almost everything; this is the backstop for objects
    stored before a CRD upgrade or written with validation off.
    """
    try:
        return kind.spec.model_validate(dict(spec))
    except ValidationError as error:
        patch.status.update(
            phase_status(
                status, Phase.FAILED, "InvalidSpec", describe_validation_error(error), generation
            )
        )
        return None


def register_acceptance(kind: Kind) -> None:
    """Register the handler that takes a new resource in: its spec parses, it becomes Pending."""

    @kopf.on.resume(GROUP, VERSION, kind.plural, id="accept")
    @kopf.on.create(GROUP, VERSION, kind.plural, id="accept")
    def accept(
        spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, patch: kopf.Patch, **_: Any
    ) -> None:
        if status.get("phase"):
            return
        if parse_spec(kind, spec, status, meta["generation"], patch) is None:
            return
        patch.status.update(
            phase_status(
                status, Phase.PENDING, "Accepted", "accepted by the operator", meta["generation"]
            )
        )
