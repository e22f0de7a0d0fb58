"""Handlers of FineTuneJob resources."""

from crucible.api.kinds import FINE_TUNE_JOB
from crucible.controllers.lifecycle import register_acceptance

KIND = FINE_TUNE_JOB

register_acceptance(KIND)
