"""mvr on Ray beside one `mvr serve`, on this machine: ingest throughput by encoding actors, and text
search through the Ray Serve router against a single server.

Corpus: the repository's own documentation passages (scripts/sample_corpus.py), repeated ``--copies``
times with ids made unique (each copy's text keeps its words: an encoder's cost does not depend on
repetition), on the embedded default model (all-MiniLM-L6-v2).

* Ingest: ``mvr.cluster.ingest.ingest`` into ``--shards`` shards on a local Ray (``ray.init`` with the
  machine's CPUs), once per ``--actors`` value (one torch thread each), into a fresh directory each
  time; documents/s over the whole call (reading, encoding, routing, durable writes, and the final
  flush: graph built, codec trained). Beside it, one process: ``Collection.upsert`` of the same texts in
  batches of 64 with the encoder on ``--single-threads`` torch threads, then flush.
* Search: ``--queries`` passage titles as text queries through the Python client, against the router
  (``mvr.cluster.serving.start`` on the first ingest's shards) with each query encoding (once, by one
  shard; per shard), and against ``mvr serve`` on a one-collection copy of the same corpus; one at a
  time (p50 / p99 latency, queries/s) and ``--concurrency`` at a time (queries/s).

    python bench/cluster.py [--copies 10] [--shards 2] [--actors 1 2] [--queries 100] \\
        [--concurrency 4] [--out bench/results/cluster.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "client"), str(ROOT / "bench"), str(ROOT / "scripts")]

from mvr.client import Client, Document  # noqa: E402
from sample_corpus import passages  # noqa: E402
from serverproc import free_port, server_process  # noqa: E402


def write_corpus(path: Path, copies: int) -> tuple[list[dict], list[str]]:
    base = passages(ROOT)
    records = [{"id": f"{p.id}~{c}", "text": p.text, "copy": c} for c in range(copies) for p in base]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records, [p.title for p in base]


def timed_searches(client: Client, collection: str, queries: list[str]) -> dict:
    for query in queries[:5]:  # warm-up
        client.search(collection, query, top_k=10)
    times = []
    for query in queries:
        started = time.perf_counter()
        client.search(collection, query, top_k=10)
        times.append((time.perf_counter() - started) * 1e3)
    return {
        "p50_ms": round(float(np.percentile(times, 50)), 1),
        "p99_ms": round(float(np.percentile(times, 99)), 1),
        "qps": round(len(times) / (sum(times) / 1e3), 1),
    }


def concurrent_searches(client: Client, collection: str, queries: list[str], concurrency: int) -> dict:
    """Queries/s with ``concurrency`` searches in flight (threads sharing the client's channel): what
    the CPU each query costs allows, where the sequential figure is latency."""
    from concurrent.futures import ThreadPoolExecutor

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda q: client.search(collection, q, top_k=10), queries))
    seconds = time.perf_counter() - started
    return {"concurrency": concurrency, "qps_concurrent": round(len(queries) / seconds, 1)}


def searches(client: Client, queries: list[str], concurrency: int) -> dict:
    """Both measures of text search over the "docs" collection: one at a time, and concurrently."""
    return {
        **timed_searches(client, "docs", queries),
        **concurrent_searches(client, "docs", queries, concurrency),
    }


def single_node_ingest(records: list[dict], threads: int) -> dict:
    from mvr.server.encoder import EncoderCache
    from mvr.server.manager import CollectionManager
    from mvr.server.values import DocumentInput

    with tempfile.TemporaryDirectory() as directory:
        manager = CollectionManager(Path(directory), encoder_loader=EncoderCache(threads))
        manager.create("one", model="default", dim=None)
        collection = manager.get("one")
        started = time.perf_counter()
        for start in range(0, len(records), 64):
            batch = records[start : start + 64]
            collection.upsert([DocumentInput(r["id"], text=r["text"]) for r in batch])
        collection.flush()
        seconds = time.perf_counter() - started
        manager.close()
    return {"threads": threads, "seconds": round(seconds, 1), "docs_per_s": round(len(records) / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--single-threads", type=int, default=2)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4, help="searches in flight for the QPS row")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/cluster.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import ray
    from mvr.cluster.ingest import ingest
    from mvr.cluster.serving import start
    from ray import serve

    work = Path(tempfile.mkdtemp(prefix="mvr-cluster-bench-"))
    corpus = work / "corpus.jsonl"
    records, titles = write_corpus(corpus, args.copies)
    queries = (titles * (1 + args.queries // len(titles)))[: args.queries]
    result: dict = {
        "command": " ".join(["python", *sys.argv]),
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "documents": len(records),
        "shards": args.shards,
        "model": "default (all-MiniLM-L6-v2)",
    }
    try:
        result["single_node_ingest"] = single_node_ingest(records, args.single_threads)
        print("single node", result["single_node_ingest"], flush=True)
        ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        rows = []
        for actors in args.actors:
            out = work / f"shards-{actors}"
            report = ingest([corpus], out, "docs", args.shards, model="default", actors=actors, batch_size=64)
            rows.append(
                {
                    "actors": actors,
                    "seconds": round(report.seconds, 1),
                    "docs_per_s": round(report.written / report.seconds, 1),
                    "documents_per_shard": report.documents_per_shard,
                }
            )
            print("cluster ingest", rows[-1], flush=True)
        result["cluster_ingest"] = rows

        for encoding in ("once", "per-shard"):  # side by side, on the same shards
            port = free_port()
            start(work / f"shards-{args.actors[0]}", port, query_encoding=encoding)
            with Client(f"127.0.0.1:{port}", timeout=120) as client:
                client.wait_until_serving(300)
                result[f"search_router_encoding_{encoding}"] = searches(client, queries, args.concurrency)
            print("router, query encoding", encoding, result[f"search_router_encoding_{encoding}"])
            serve.shutdown()
        ray.shutdown()

        with server_process("--model", "default") as (target, _), Client(target, timeout=300) as client:
            client.wait_until_serving(300)
            client.create_collection("docs", model="default")
            client.upsert("docs", [Document(r["id"], text=r["text"]) for r in records])
            while (stats := client.get_collection("docs").stats) and stats.indexed_documents < len(records):
                time.sleep(1)  # searched once indexed, as the shards are
            result["search_single_node"] = searches(client, queries, args.concurrency)
        print("single node", result["search_single_node"], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
