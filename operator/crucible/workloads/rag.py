"""The rag workload: documents from a folder, a git checkout or a ConfigMap → markdown-aware
chunks counted in the embedding model's own tokenizer → embeddings → pgvector. Incremental:
unchanged documents are not re-embedded, deleted ones are removed, and the whole change is one
transaction, so readers never see a half-written index."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crucible.api.contract import RagTask
from crucible.workloads.common import Reporter, WorkloadError, log, run_main
from crucible.workloads.retrieval import Embedder, database_url, load_embedder, open_store


@dataclass(frozen=True)
class Document:
    name: str  # path relative to the documents' root
    text: str
    sha256: str


def checkout(task: RagTask, cache: Path) -> Path:
    assert task.git is not None
    target = cache / "git" / hashlib.sha256(task.git.url.encode()).hexdigest()[:16]
    try:
        if not (target / ".git").exists():
            subprocess.run(
                ["git", "clone", "--quiet", task.git.url, str(target)],
                check=True,
                capture_output=True,
                text=True,
                timeout=600,
            )
        subprocess.run(
            ["git", "-C", str(target), "fetch", "--quiet", "origin"],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
        subprocess.run(
            ["git", "-C", str(target), "checkout", "--quiet", "--force", task.git.revision],
            check=True,
            capture_output=True,
            text=True,
        )
    except subprocess.CalledProcessError as error:
        raise WorkloadError(
            f"git {task.git.url}@{task.git.revision}: {(error.stderr or '').strip()}"
        ) from None
    return target / task.git.path


def read_documents(root: Path, include: list[str]) -> list[Document]:
    if not root.is_dir():
        raise WorkloadError(f"documents folder {root} does not exist")
    files = sorted(
        {
            p
            for pattern in include
            for p in root.glob(pattern)
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        }
    )
    documents = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            documents.append(
                Document(
                    str(path.relative_to(root)), text, hashlib.sha256(text.encode()).hexdigest()
                )
            )
    if not documents:
        raise WorkloadError(f"no documents matching {include} under {root}")
    return documents


def chunk(document: Document, task: RagTask, embedder: Embedder) -> list[Any]:
    """Headers first, then token windows; no chunk exceeds the embedding model's input."""
    from llama_index.core import Document as LlamaDocument
    from llama_index.core.node_parser import MarkdownNodeParser, SentenceSplitter

    size = min(task.chunking.chunk_size, embedder.max_tokens)
    overlap = min(task.chunking.chunk_overlap, size // 2)
    splitter = SentenceSplitter(
        chunk_size=size,
        chunk_overlap=overlap,
        tokenizer=lambda text: embedder.tokenizer(text, add_special_tokens=False)["input_ids"],
        include_metadata=False,
    )
    source = LlamaDocument(text=document.text, id_=document.name)
    sections = (
        MarkdownNodeParser().get_nodes_from_documents([source])
        if task.chunking.split_markdown_headers
        else [source]
    )
    chunks = splitter.get_nodes_from_documents(
        [
            LlamaDocument(text=s.get_content(), id_=f"{document.name}#{i}")
            for i, s in enumerate(sections)
        ]
    )
    for number, node in enumerate(chunks):
        tokens = embedder.count(node.get_content())
        if tokens > embedder.max_tokens:  # never truncated silently by the embedding model
            raise WorkloadError(
                f"{document.name}: chunk {number} has {tokens} tokens, over "
                f"the embedding model's {embedder.max_tokens}"
            )
        node.id_ = f"{document.name}:{document.sha256[:12]}:{number}"
        node.metadata = {
            "document": document.name,
            "document_hash": document.sha256,
            "chunk": number,
        }
        node.excluded_embed_metadata_keys = list(node.metadata)
        node.excluded_llm_metadata_keys = list(node.metadata)
    return list(chunks)


def index(task: RagTask) -> dict[str, Any]:
    from sqlalchemy import delete, func, select
    from sqlalchemy.exc import SQLAlchemyError

    started = time.monotonic()
    reporter = Reporter(task)
    cache = Path(task.output_path).parent / ".cache"
    root = checkout(task, cache) if task.git else Path(task.documents_path or "")
    documents = read_documents(root, task.include)
    embedder = load_embedder(task.embedding, task.mounts, cache)
    store = open_store(database_url(task.database_url_env), task.table, embedder.dimensions)
    table = store._table_class  # one transaction below needs the store's own table model
    document_of = table.metadata_["document"].astext
    hash_of = table.metadata_["document_hash"].astext
    with store._session() as session:
        indexed = dict(session.execute(select(document_of, hash_of).distinct()).all())
    current = {d.name: d for d in documents}
    changed = [d for d in documents if indexed.get(d.name) != d.sha256]
    removed = sorted(set(indexed) - set(current))
    nodes = [node for d in changed for node in chunk(d, task, embedder)]
    texts = [n.get_content() for n in nodes]
    for node, vector in zip(nodes, embedder.model.get_text_embedding_batch(texts), strict=True):
        node.embedding = vector
    stale = [d.name for d in changed if d.name in indexed] + removed
    try:
        with store._session() as session, session.begin():
            if stale:
                session.execute(delete(table).where(document_of.in_(stale)))
            session.add_all([store._node_to_table_row(n) for n in nodes])
        with store._session() as session:
            chunks = session.execute(select(func.count()).select_from(table)).scalar_one()
    except (SQLAlchemyError, ValueError) as error:  # the driver refuses some text itself
        reason = str(getattr(error, "orig", error)).strip().splitlines()[0]
        raise WorkloadError(
            f"writing table {task.table} failed, nothing changed: {reason}"
        ) from None
    settings = json.dumps(
        {"chunking": task.chunking.to_api(), "embedding": task.embedding.model}, sort_keys=True
    )
    content_hash = (
        "sha256:"
        + hashlib.sha256(
            "\n".join([settings, *(f"{d.name} {d.sha256}" for d in documents)]).encode()
        ).hexdigest()
    )
    summary = {
        "documents": len(documents),
        "chunks": int(chunks),
        "embedded": len(nodes),
        "reembeddedDocuments": len(changed),
        "removedDocuments": len(removed),
        "contentHash": content_hash,
        "seconds": round(time.monotonic() - started, 3),
    }
    log.info("indexed: %s", summary)
    reporter.update(
        documents=len(documents),
        chunks=int(chunks),
        content_hash=content_hash,
        message=f"{len(changed)} documents embedded ({len(nodes)} chunks), "
        f"{len(removed)} removed, in {summary['seconds']} s",
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_main(index, argv, RagTask, "Index documents into pgvector.")


if __name__ == "__main__":
    raise SystemExit(main())
