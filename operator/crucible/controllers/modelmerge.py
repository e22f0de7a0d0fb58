"""Handlers of ModelMerge resources."""

from crucible.api.kinds import MODEL_MERGE
from crucible.controllers.lifecycle import register_acceptance

KIND = MODEL_MERGE

register_acceptance(KIND)
