"""Ingestion through the real server: acknowledged (durable) documents/s for precomputed vectors,
time until everything is in HNSW, and bytes per document on disk and in memory, per component.

Starts `mvr serve --model none` on a free loopback port with a fresh data dir, creates a collection
with the default FDE/HNSW parameters, streams N documents of 100 tokens × 128 dims with the Python
client (StreamUpsertDocuments, one ack per durable batch), then polls GetCollection until indexed.

    python bench/ingest.py [--docs 5000] [--batch 100] [--out bench/results/ingest.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "client"), str(ROOT / "bench")]

from mvr.client import Client, Document  # noqa: E402
from serverproc import running_server  # noqa: E402
from synthetic import make_corpus  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--index-threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ingest.json"))
    args = parser.parse_args()
    corpus, _ = make_corpus(args.docs, min_tokens=100, max_tokens=100)
    docs = [Document(str(i), vectors=corpus.document(i)) for i in range(args.docs)]
    batches = [docs[i : i + args.batch] for i in range(0, len(docs), args.batch)]
    flags = ("--model", "none", "--index-threads", str(args.index_threads))
    with running_server(*flags) as target, Client(target, timeout=600) as mvr:
        mvr.wait_until_serving(120)
        info = mvr.create_collection("ingest", model=None, dim=128)
        started = time.perf_counter()
        acknowledged = sum(
            len(b) for ack, b in zip(mvr.upsert_stream("ingest", batches), batches, strict=True) if ack.ok
        )
        ack_seconds = time.perf_counter() - started
        while mvr.get_collection("ingest").stats.indexed_documents < args.docs:
            time.sleep(0.5)
        indexed_seconds = time.perf_counter() - started
        stats = mvr.get_collection("ingest").stats
    result = {
        "docs": args.docs,
        "tokens_per_doc": 100,
        "dim": 128,
        "batch": args.batch,
        "fde": {
            "repetitions": info.fde.repetitions,
            "k_sim": info.fde.k_sim,
            "d_proj": info.fde.d_proj,
            "output_dim": info.fde.output_dim,
        },
        "hnsw": {"m": info.hnsw.m, "ef_construction": info.hnsw.ef_construction},
        "acknowledged": acknowledged,
        "acknowledged_docs_per_s": acknowledged / ack_seconds,
        "seconds_until_all_indexed": indexed_seconds,
        "indexed_docs_per_s": args.docs / indexed_seconds,
        "bytes_per_doc_on_disk": {k: v / args.docs for k, v in stats.bytes_on_disk.items()},
        "bytes_per_doc_in_memory": {k: v / args.docs for k, v in stats.bytes_in_memory.items()},
        "machine": platform.platform(),
    }
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
