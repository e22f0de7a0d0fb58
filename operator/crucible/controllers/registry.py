"""The controllers of every kind, by kind name; each kind's module registers its own."""

from __future__ import annotations

from typing import Any

from crucible.controllers.lifecycle import Controller

CONTROLLERS: dict[str, Controller[Any]] = {}


def register(controller: Controller[Any]) -> None:
    CONTROLLERS[controller.kind.kind] = controller
