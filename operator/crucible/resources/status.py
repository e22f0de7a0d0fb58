"""Status per the Kubernetes API conventions: a phase plus conditions, built as the typed
status models of crucible.api."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from crucible.api.common import TERMINAL_PHASES, Condition, ConditionType, Phase, Reason, RunStatus


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def set_condition(current: list[Condition] | None, new: Condition) -> list[Condition]:
    """Replace the condition of the same type, keeping lastTransitionTime when the status did
    not change (as metav1.SetStatusCondition does)."""
    merged = []
    replaced = False
    for existing in current or []:
        if existing.type == new.type:
            if existing.status == new.status:
                new = new.model_copy(update={"last_transition_time": existing.last_transition_time})
            merged.append(new)
            replaced = True
        else:
            merged.append(existing)
    if not replaced:
        merged.append(new)
    return merged


def phase_fields(
    current: RunStatus,
    phase: Phase,
    reason: Reason,
    message: str,
    generation: int,
    *,
    long_lived: bool = False,
) -> dict[str, Any]:
    """The status fields that move together: phase, the Ready condition, observedGeneration
    and, once a run is over, completionTime. A run is Ready once it has succeeded; a long-lived
    resource (a ModelServing) while it is Running, and it is never over."""
    ready = Condition(
        type=ConditionType.READY,
        status="True" if phase == (Phase.RUNNING if long_lived else Phase.SUCCEEDED) else "False",
        reason=reason,
        message=message,
        last_transition_time=now(),
        observed_generation=generation,
    )
    fields: dict[str, Any] = {
        "phase": phase,
        "observed_generation": generation,
        "conditions": set_condition(current.conditions, ready),
    }
    if phase in TERMINAL_PHASES and not long_lived:
        fields["completion_time"] = current.completion_time or now()
    return fields


def merge_patch(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns `before` into `after`: changed values,
    objects patched key by key, and null for each key `after` no longer has (a plain merge of
    `after` would leave those in place)."""
    patch: dict[str, Any] = {key: None for key in before if key not in after}
    for key, value in after.items():
        old = before.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            if nested := merge_patch(old, value):
                patch[key] = nested
        elif value != old or key not in before:
            patch[key] = value
    return patch


def comparable(status: RunStatus) -> dict[str, Any]:
    """The status as the API spells it, without the times that change on every computation
    (so an unchanged status is not written again)."""
    api = status.to_api()
    for condition in api.get("conditions") or []:
        condition.pop("lastTransitionTime", None)
    return api


def progress_only(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether the comparable status `after` differs from `before` in its progress alone."""
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    return changed == {"progress"}


def describe_validation_error(error: ValidationError, root: str = "spec") -> str:
    """One line per problem, each naming the field as the API spells it."""
    lines = []
    for problem in error.errors():
        path = root
        for part in problem["loc"]:
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        lines.append(f"{path}: {problem['msg'].removeprefix('Value error, ')}")
    return "; ".join(lines)
