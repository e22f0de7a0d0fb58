"""kopf handlers and the reconcile engine; importing this package registers every kind."""

from crucible.controllers import (
    evalrun,
    experiment,
    finetunejob,
    modelmerge,
    modelserving,
    ragindex,
    settings,
    syntheticdataset,
    watches,
)

__all__ = [
    "evalrun",
    "experiment",
    "finetunejob",
    "modelmerge",
    "modelserving",
    "ragindex",
    "settings",
    "syntheticdataset",
    "watches",
]
