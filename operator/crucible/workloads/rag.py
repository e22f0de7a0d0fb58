"""The rag workload: documents from a folder, a git checkout or a ConfigMap → markdown-aware
chunks counted in the embedding model's own tokenizer → embeddings → pgvector. Incremental:
unchanged documents are not re-embedded, deleted ones are removed, and the whole change is one
transaction, so readers never see a half-written index."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from crucible.api.contract import RagTask
from crucible.workloads.common import Reporter, WorkloadError, log, run_main
from crucible.workloads.documents import chunk, content_hash, documents_of
from crucible.workloads.retrieval import Embedder, database_url, load_embedder, open_store

WRITE_SLICE = 64  # chunks embedded before their rows go to the writer


def embed_and_write(
    nodes: list[Any],
    stale: list[str],
    embedder: Embedder,
    store: Any,
    *,
    table_name: str,
    embedded_all: Callable[[], None],
) -> int:
    """Embed the nodes and write their rows in one transaction that also removes the stale
    documents' rows; the rows go to the database from a thread while the next slice is
    embedded, and slices in length order keep the model's batches as tight as one call would.
    Returns the table's chunk count once committed."""
    from sqlalchemy import delete, func, select
    from sqlalchemy.exc import SQLAlchemyError

    table = store._table_class  # the one transaction needs the store's own table model
    document_of = table.metadata_["document"].astext
    ordered = sorted(nodes, key=lambda n: len(n.get_content()))
    slices = [ordered[i : i + WRITE_SLICE] for i in range(0, len(ordered), WRITE_SLICE)]
    embedded: queue.Queue[list[Any] | None] = queue.Queue()

    def write() -> int:
        with store._session() as session, session.begin():
            if stale:
                session.execute(delete(table).where(document_of.in_(stale)))
            while (part := embedded.get()) is not None:
                session.add_all([store._node_to_table_row(n) for n in part])
                session.flush()
        with store._session() as session:
            return int(session.execute(select(func.count()).select_from(table)).scalar_one())

    with ThreadPoolExecutor(max_workers=1) as writer:
        written = writer.submit(write)
        try:
            for part in slices:
                vectors = embedder.embed_texts([n.get_content() for n in part])
                for node, vector in zip(part, vectors, strict=True):
                    node.embedding = vector
                embedded.put(part)
        finally:
            embedded.put(None)  # the writer commits, or rolls back on its error
        embedded_all()
        try:
            return written.result()
        except (SQLAlchemyError, ValueError) as error:  # the driver refuses some text itself
            reason = str(getattr(error, "orig", error)).strip().splitlines()[0]
            raise WorkloadError(
                f"writing table {table_name} failed, nothing changed: {reason}"
            ) from None


def index(task: RagTask) -> dict[str, Any]:
    from sqlalchemy import select

    started = time.monotonic()
    phases: dict[str, float] = {}  # where the time goes, in seconds

    def lap(phase: str) -> None:
        phases[phase] = round(time.monotonic() - started - sum(phases.values()), 3)

    reporter = Reporter(task)
    cache = Path(task.output_path).parent / ".cache"
    documents = documents_of(task, cache)
    lap("read")
    embedder = load_embedder(task.embedding, task.mounts, cache)
    lap("loadModel")
    store = open_store(database_url(task.database_url_env), task.table, embedder.dimensions)
    table = store._table_class  # one transaction below needs the store's own table model
    document_of = table.metadata_["document"].astext
    hash_of = table.metadata_["document_hash"].astext
    with store._session() as session:
        indexed = dict(session.execute(select(document_of, hash_of).distinct()).all())
    current = {d.name: d for d in documents}
    changed = [d for d in documents if indexed.get(d.name) != d.sha256]
    removed = sorted(set(indexed) - set(current))
    lap("openDatabase")
    nodes = [node for d in changed for node in chunk(d, task.chunking, embedder.counter)]
    lap("chunk")
    stale = [d.name for d in changed if d.name in indexed] + removed
    chunks = embed_and_write(
        nodes, stale, embedder, store, table_name=task.table, embedded_all=lambda: lap("embed")
    )
    lap("write")
    settings = json.dumps(
        {"chunking": task.chunking.to_api(), "embedding": task.embedding.model}, sort_keys=True
    )
    digest = content_hash(settings, documents)
    summary = {
        "documents": len(documents),
        "chunks": int(chunks),
        "embedded": len(nodes),
        "reembeddedDocuments": len(changed),
        "removedDocuments": len(removed),
        "contentHash": digest,
        "seconds": round(time.monotonic() - started, 3),
        "phaseSeconds": phases,
    }
    log.info("indexed: %s", summary)
    reporter.finish(
        documents=len(documents),
        chunks=int(chunks),
        content_hash=digest,
        message=f"{len(changed)} documents embedded ({len(nodes)} chunks), "
        f"{len(removed)} removed, in {summary['seconds']} s",
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_main(index, argv, RagTask, "Index documents into pgvector.")


if __name__ == "__main__":
    raise SystemExit(main())
