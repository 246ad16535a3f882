"""Ingestion of precomputed vectors: acknowledged documents/s, time until the collection is ready
(everything in HNSW, the codec trained once the collection holds enough tokens, every document coded),
and bytes per document on disk and in memory, per component.

Data sets (bench/synthetic.py, 128-d): ``topics`` (default: topic-clustered tokens, 30–200 per
document) or ``iid`` (i.i.d. tokens around topic centroids, 30–200 per document); ``--tokens-per-doc N``
gives every document N tokens instead.

``--via engine`` (default): the engine in this process (CollectionManager in a throwaway directory,
the server's thread settings): acknowledged = ``upsert()`` of each batch returned (durable), ready =
``flush()`` returned. ``--via grpc``: a real ``mvr serve --model none`` (bench/serverproc.py), batches
streamed with StreamUpsertDocuments (one ack per durable batch), ready = GetCollection polled every
0.2 s until every document is indexed and, when codes are due, coded (the server saves the HNSW file
and compacts away float vectors superseded by codes later, so on disk these read 0 and full there).

    python bench/ingest.py [--data topics|iid] [--docs 5000] [--tokens-per-doc N] [--batch 100] \\
        [--via engine|grpc] [--index-threads 1] [--out bench/results/ingest.json]
    python bench/ingest.py --data iid --tokens-per-doc 100 --via grpc   # the README's ingest.json setup
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "client"), str(ROOT / "bench")]

import grpc  # noqa: E402
from google.protobuf.json_format import MessageToDict  # noqa: E402
from load import create_collection, get_collection, wait_until_ready  # noqa: E402
from mvr.client import Client, Document  # noqa: E402
from mvr.server.app import limit_blas_threads  # noqa: E402
from mvr.server.fde import available_cpus  # noqa: E402
from mvr.server.manager import CollectionManager  # noqa: E402
from serverproc import running_server  # noqa: E402
from synthetic import (  # noqa: E402
    Corpus,
    TopicCorpusSpec,
    make_corpus,
    make_topic_corpus,
    upsert_in_batches,
)


def make_data(name: str, docs: int, tokens_per_doc: int | None) -> Corpus:
    lengths = {} if tokens_per_doc is None else {"min_tokens": tokens_per_doc, "max_tokens": tokens_per_doc}
    if name == "topics":
        return make_topic_corpus(TopicCorpusSpec(n_docs=docs, **lengths))
    corpus, _ = make_corpus(docs, **lengths)
    return corpus


def ingest_engine(corpus: Corpus, args: argparse.Namespace) -> dict:
    """In process: upsert batch by batch, then flush(); stats() after."""
    limit_blas_threads()  # as the server does
    with tempfile.TemporaryDirectory() as tmp:
        manager = CollectionManager(Path(tmp), index_threads=args.index_threads, fde_threads=available_cpus())
        manager.create("ingest", model=None, dim=corpus.tokens.shape[1], tokens=token_storage(args))
        collection = manager.get("ingest")
        started = time.perf_counter()
        acknowledged = upsert_in_batches(collection, corpus, args.batch)
        ack_s = time.perf_counter() - started
        collection.flush()
        ready_s = time.perf_counter() - started
        stats = collection.stats()
        config = collection.config
        manager.close()
    return {
        "acknowledged": acknowledged,
        "ack_seconds": ack_s,
        "ready_seconds": ready_s,
        "ready_means": "flush() returned: all in HNSW, codec trained if due, all coded, index saved",
        "coded_documents": stats.coded,
        "centroids": stats.centroids,
        "bytes_on_disk": stats.bytes_on_disk,
        "bytes_in_memory": stats.bytes_in_memory,
        "fde": {"output_dim": collection.fde.output_dim, **config.fde.to_dict()},
        "hnsw": config.hnsw.to_dict(),
        "token_storage": config.tokens.to_dict(),
    }


def ingest_grpc(corpus: Corpus, args: argparse.Namespace) -> dict:
    """Through `mvr serve`: one StreamUpsertDocuments call, then GetCollection until ready."""
    docs = [Document(str(i), vectors=corpus.document(i)) for i in range(corpus.n_docs)]
    batches = [docs[i : i + args.batch] for i in range(0, len(docs), args.batch)]
    flags = ("--model", "none", "--index-threads", str(args.index_threads))
    with running_server(*flags) as target, Client(target, timeout=600) as mvr:
        mvr.wait_until_serving(120)
        with grpc.insecure_channel(target) as channel:
            dim = corpus.tokens.shape[1]
            create_collection(channel, "ingest", dim, args.residual_bits, args.train_after_tokens)
            started = time.perf_counter()
            acks = mvr.upsert_stream("ingest", batches)
            acknowledged = sum(len(b) for ack, b in zip(acks, batches, strict=True) if ack.ok)
            ack_s = time.perf_counter() - started
            wait_until_ready(channel, "ingest", corpus.n_docs)
            ready_s = time.perf_counter() - started
            info = get_collection(channel, "ingest")
    return {
        "acknowledged": acknowledged,
        "ack_seconds": ack_s,
        "ready_seconds": ready_s,
        "ready_means": "GetCollection (polled every 0.2 s): all indexed and, when codes are due, all coded",
        "coded_documents": info.stats.coded_documents,
        "centroids": info.token_storage.trained_centroids,
        "bytes_on_disk": dict(info.stats.bytes_on_disk),
        "bytes_in_memory": dict(info.stats.bytes_in_memory),
        "fde": {
            "output_dim": info.fde.output_dim,
            **MessageToDict(info.fde, preserving_proto_field_name=True),
        },
        "hnsw": MessageToDict(info.hnsw, preserving_proto_field_name=True),
        "token_storage": MessageToDict(info.token_storage, preserving_proto_field_name=True),
    }


def token_storage(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if args.residual_bits is not None:
        overrides["residual_bits"] = args.residual_bits
    if args.train_after_tokens:
        overrides["train_after_tokens"] = args.train_after_tokens
    return overrides


def per_doc(sizes: dict[str, int], docs: int) -> dict[str, float]:
    return {"total": sum(sizes.values()) / docs, **{k: v / docs for k, v in sorted(sizes.items())}}


def report(corpus: Corpus, measured: dict, args: argparse.Namespace) -> dict:
    docs, tokens = corpus.n_docs, len(corpus.tokens)
    return {
        "benchmark": "bench/ingest.py",
        "data": args.data,
        "via": args.via,
        "docs": docs,
        "tokens": tokens,
        "tokens_per_doc": tokens / docs,
        "dim": corpus.tokens.shape[1],
        "batch": args.batch,
        "index_threads": args.index_threads,
        **{k: v for k, v in measured.items() if k not in ("ack_seconds", "ready_seconds")},
        "acknowledged_docs_per_s": measured["acknowledged"] / measured["ack_seconds"],
        "seconds_until_acknowledged": measured["ack_seconds"],
        "seconds_until_ready": measured["ready_seconds"],
        "ready_docs_per_s": docs / measured["ready_seconds"],
        "bytes_per_doc_on_disk": per_doc(measured["bytes_on_disk"], docs),
        "bytes_per_doc_in_memory": per_doc(measured["bytes_in_memory"], docs),
        "machine": platform.platform(),
    }


def print_table(result: dict) -> None:
    disk, memory = result["bytes_per_doc_on_disk"], result["bytes_per_doc_in_memory"]
    print(
        f"data set {result['data']!r}: {result['docs']:,} docs, {result['tokens']:,} tokens "
        f"({result['tokens_per_doc']:.0f}/doc, dim {result['dim']}), via {result['via']}, "
        f"batches of {result['batch']}"
    )
    ack_rate, ack_s = result["acknowledged_docs_per_s"], result["seconds_until_acknowledged"]
    print(f"  acknowledged     {ack_rate:10,.0f} docs/s ({ack_s:.1f} s)")
    print(f"  ready after      {result['seconds_until_ready']:10.1f} s ({result['ready_means']})")
    print(f"  coded            {result['coded_documents']:10,} docs, {result['centroids']} centroids")
    for label, sizes in (("on disk", disk), ("in memory", memory)):
        parts = ", ".join(f"{k} {v:,.0f}" for k, v in sizes.items() if k != "total")
        print(f"  bytes/doc {label:<9}{sizes['total']:8,.0f}  ({parts})")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", choices=("topics", "iid"), default="topics")
    parser.add_argument("--docs", type=int, default=5000)
    parser.add_argument("--tokens-per-doc", type=int, default=None, help="default: the data set's 30–200")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--via", choices=("engine", "grpc"), default="engine")
    parser.add_argument("--index-threads", type=int, default=1)
    parser.add_argument("--residual-bits", type=int, default=None, help="0: no codes; default: the server's")
    parser.add_argument("--train-after-tokens", type=int, default=0, help="0: the server's default")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ingest.json"))
    args = parser.parse_args()
    corpus = make_data(args.data, args.docs, args.tokens_per_doc)
    measured = ingest_engine(corpus, args) if args.via == "engine" else ingest_grpc(corpus, args)
    result = report(corpus, measured, args)
    print_table(result)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
