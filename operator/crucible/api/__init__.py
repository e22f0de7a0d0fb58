"""crucible.dev/v1alpha1: the typed API every other part of Crucible is built on."""

from crucible.api.base import API_VERSION, GROUP, VERSION
from crucible.api.kinds import KINDS, KINDS_BY_NAME, Kind

__all__ = ["API_VERSION", "GROUP", "KINDS", "KINDS_BY_NAME", "VERSION", "Kind"]
