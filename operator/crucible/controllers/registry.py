"""The controllers of every kind, by kind name; each kind's module registers its own."""

from __future__ import annotations

from typing import Any

from crucible.controllers.lifecycle import RunController

CONTROLLERS: dict[str, RunController[Any, Any]] = {}


def register(controller: RunController[Any, Any]) -> None:
    CONTROLLERS[controller.kind.kind] = controller
