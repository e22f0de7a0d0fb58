"""Crucible: a Kubernetes operator that merges, fine-tunes, RAG-indexes and benchmarks models."""

__version__ = "0.1.0"
