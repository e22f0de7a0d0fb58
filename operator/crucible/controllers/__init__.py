"""kopf handlers, one module per kind; importing this package registers them all."""

from crucible.controllers import (
    evalrun,
    finetunejob,
    modelmerge,
    ragindex,
    settings,
    syntheticdataset,
)

__all__ = ["evalrun", "finetunejob", "modelmerge", "ragindex", "settings", "syntheticdataset"]
