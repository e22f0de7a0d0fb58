"""Status per the Kubernetes API conventions: a phase plus conditions."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from crucible.api.common import Phase

READY = "Ready"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    type_: str, status: bool | None, reason: str, message: str, generation: int | None
) -> dict[str, Any]:
    return {
        "type": type_,
        "status": {True: "True", False: "False", None: "Unknown"}[status],
        "reason": reason,
        "message": message,
        "lastTransitionTime": now(),
        **({"observedGeneration": generation} if generation is not None else {}),
    }


def merge_conditions(
    current: list[dict[str, Any]] | None, new: dict[str, Any]
) -> list[dict[str, Any]]:
    """Replace the condition of the same type, keeping lastTransitionTime when the status did
    not change (as metav1.SetStatusCondition does)."""
    merged = []
    replaced = False
    for existing in current or []:
        if existing.get("type") == new["type"]:
            if existing.get("status") == new["status"]:
                new = {**new, "lastTransitionTime": existing["lastTransitionTime"]}
            merged.append(new)
            replaced = True
        else:
            merged.append(existing)
    if not replaced:
        merged.append(new)
    return merged


def phase_status(
    current: Mapping[str, Any] | None,
    phase: Phase,
    reason: str,
    message: str,
    generation: int | None,
) -> dict[str, Any]:
    """The status fields that move together: phase, the Ready condition, observedGeneration."""
    ready = phase == Phase.SUCCEEDED
    return {
        "phase": phase.value,
        "observedGeneration": generation,
        "conditions": merge_conditions(
            (current or {}).get("conditions"),
            condition(READY, ready, reason, message, generation),
        ),
        **({"completionTime": now()} if phase in (Phase.SUCCEEDED, Phase.FAILED) else {}),
    }


def describe_validation_error(error: ValidationError, root: str = "spec") -> str:
    """One line per problem, each naming the field as the API spells it."""
    lines = []
    for problem in error.errors():
        path = ".".join([root, *(str(p) for p in problem["loc"])])
        lines.append(f"{path}: {problem['msg']}")
    return "; ".join(lines)
