"""Embeddings and the pgvector store shared by the rag workload (writing) and the eval
workload (retrieving): the same embedding model on both sides, through llama-index."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from crucible.api.contract import EvalTask
from crucible.api.ragindex import Embedding
from crucible.workloads.common import WorkloadError, resolve_uri
from crucible.workloads.documents import TokenizerCounter

HNSW = {
    "hnsw_m": 16,
    "hnsw_ef_construction": 64,
    "hnsw_ef_search": 40,
    "hnsw_dist_method": "vector_cosine_ops",
}


@dataclass(frozen=True)
class Embedder:
    model: Any  # llama_index HuggingFaceEmbedding
    counter: TokenizerCounter  # the model's own tokenizer, capped at its input limit
    dimensions: int

    @property
    def max_tokens(self) -> int:
        return self.counter.max_tokens

    def count(self, text: str) -> int:
        return self.counter.count(text)

    def embed_texts(self, texts: list[str]) -> list[list[float]]:
        """The texts' embeddings, exactly as llama-index makes them (its normalisation and
        prompt), in one call: sentence-transformers then sorts every text by length before
        batching, where llama-index's batch call hands it embed_batch_size texts at a time
        (0.62x the model's own speed on the Nitro docs, measured)."""
        vectors: list[list[float]] = self.model._embed(texts, prompt_name="text")
        return vectors


def load_embedder(embedding: Embedding, mounts: dict[str, str], cache: Path) -> Embedder:
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    from transformers import AutoTokenizer

    path = resolve_uri(embedding.model, mounts, cache)
    model = HuggingFaceEmbedding(
        model_name=str(path),
        embed_batch_size=embedding.batch_size,
        device="cuda" if _cuda() else "cpu",
    )
    tokenizer = AutoTokenizer.from_pretrained(path)
    limit = model._model.get_max_seq_length() or tokenizer.model_max_length
    dimensions = model._model.get_embedding_dimension() or len(
        model.get_text_embedding("dimension probe")
    )
    # special tokens excluded from the limit
    return Embedder(model, TokenizerCounter(tokenizer, int(limit) - 2), dimensions)


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def database_url(env: str) -> str:
    url = os.environ.get(env)
    if not url:
        raise WorkloadError(
            f"{env} is not set: the Secret of spec.database.connectionSecretRef "
            "must hold a postgresql:// URI"
        )
    return url


def redacted(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "(socket)"
    return urlunsplit((parts.scheme, f"{parts.username or ''}@{host}", parts.path, parts.query, ""))


def open_store(url: str, table: str, dimensions: int) -> Any:
    """llama-index's PGVectorStore with an HNSW cosine index; clear errors when the database
    is down or refuses the credentials."""
    from llama_index.vector_stores.postgres import PGVectorStore
    from sqlalchemy import func, select
    from sqlalchemy.exc import SQLAlchemyError

    scheme, rest = url.split("://", 1)
    if scheme not in ("postgresql", "postgres"):
        raise WorkloadError(f"database URI must start with postgresql://, not {scheme}://")
    try:
        store = PGVectorStore.from_params(
            connection_string=f"postgresql+psycopg2://{rest}",
            async_connection_string=f"postgresql+asyncpg://{rest}",
            table_name=table,
            embed_dim=dimensions,
            hnsw_kwargs=dict(HNSW),
            use_jsonb=True,
        )
        # llama-index logs set-up errors and carries on: a query tells whether it worked.
        store._initialize()
        with store._session() as session:
            session.execute(select(func.count()).select_from(store._table_class))
    except SQLAlchemyError as error:
        reason = str(getattr(error, "orig", error)).strip().splitlines()[0]
        raise WorkloadError(
            f"cannot use Postgres at {redacted(url)}: {reason}; check the "
            "database and the Secret of spec.database.connectionSecretRef"
        ) from None
    return store


class PgRetriever:
    """Top-k chunks for a question, by cosine similarity in the RagIndex's table."""

    def __init__(self, embedder: Embedder, store: Any, top_k: int) -> None:
        self.embedder, self.store, self.top_k = embedder, store, top_k

    @classmethod
    def from_task(cls, task: EvalTask) -> PgRetriever:
        assert task.rag is not None
        embedder = load_embedder(
            task.rag.embedding, task.mounts, Path(task.output_path).parent / ".cache"
        )
        store = open_store(
            database_url(task.rag.database_url_env), task.rag.table, embedder.dimensions
        )
        return cls(embedder, store, task.rag.top_k)

    def nodes(self, question: str) -> list[Any]:
        """The top-k chunks for `question`, most similar first."""
        from llama_index.core.vector_stores.types import VectorStoreQuery

        embedding = self.embedder.model.get_query_embedding(question)
        found = self.store.query(
            VectorStoreQuery(query_embedding=embedding, similarity_top_k=self.top_k)
        )
        return list(found.nodes)

    def __call__(self, question: str) -> str:
        return "\n\n---\n\n".join(node.get_content() for node in self.nodes(question))

    def documents(self, question: str) -> list[str]:
        """The documents the top-k chunks come from, best first (for checks and logs)."""
        return [node.metadata.get("document", "") for node in self.nodes(question)]
