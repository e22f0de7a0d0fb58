"""Handlers of EvalRun resources."""

from crucible.api.kinds import EVAL_RUN
from crucible.controllers.lifecycle import register_acceptance

KIND = EVAL_RUN

register_acceptance(KIND)
