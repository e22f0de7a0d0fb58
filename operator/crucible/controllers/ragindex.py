"""Handlers of RagIndex resources."""

from crucible.api.kinds import RAG_INDEX
from crucible.controllers.lifecycle import register_acceptance

KIND = RAG_INDEX

register_acceptance(KIND)
