"""gRPC load generator: closed-loop clients in several worker processes against a running mvr server.

For each concurrency level, ``c`` clients (threads, spread over up to ``--processes`` worker processes,
one channel per process) each send a request, wait for its answer and send the next. Latency is measured
client side around each blocking call (serialisation, network, server, deserialisation); the first
``--warmup`` seconds of every level are excluded. Per level it prints requests/s, items/s (queries/s:
a BatchSearch carries ``--batch-size`` queries; documents/s for upserts) and p50/p90/p99/max latency of
successful requests, and failed requests by gRPC status code; it writes JSON (``--out``) and,
where matplotlib is importable, a PNG of requests/s and p99 against concurrency beside it.

Modes: ``search-vectors`` (precomputed query vectors), ``search-text`` (text queries encoded by the
collection's model: needs a server with a model and ``--data papers``), ``batch-search`` (BatchSearch
of ``--batch-size`` vector queries per request) and ``mixed`` (searches and single-document upserts,
``--read-write-ratio`` searches per upsert; upserts replace documents of the data set with the same
vectors, so the collection keeps its size).

Data sets: ``topics`` (default) and ``iid`` from bench/synthetic.py, ``--docs`` documents, 128-d;
``papers``: ../shared/data/papers-dev.jsonl (79 abstracts indexed as text, titles as queries).

End to end, with a server of its own (``mvr serve`` in a subprocess, bench/serverproc.py) loaded first:

    python bench/load.py --start-server --data topics --docs 2000 --concurrency 1 4 --duration 5
    python bench/load.py --start-server --data topics --docs 20000 --mode mixed --read-write-ratio 9
    python bench/load.py --start-server --data topics --docs 20000 --mode batch-search --batch-size 8
    python bench/load.py --start-server --data papers --mode search-text --concurrency 1 4 16 \\
        --server-args "--workers 32" [--server-env MVR_QUERY_MAX_BATCH=1]

Against a server already running (``--load`` creates the collection and loads ``--data`` into it first;
without it, the collection must exist and hold ``--dim``-d tokens, or a model for ``search-text``):

    python bench/load.py --target 127.0.0.1:50051 --collection load --load --data topics --docs 2000

Client processes and the server share the machine's cores when both run here: the JSON records the CPU
count and the load average before the run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import random
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "client"), str(ROOT / "bench")]

from mvr.client import Client  # noqa: E402
from mvr.v1 import collection_service_pb2 as cpb  # noqa: E402
from mvr.v1 import collection_service_pb2_grpc as cgrpc  # noqa: E402
from mvr.v1 import document_service_pb2 as dpb  # noqa: E402
from mvr.v1 import document_service_pb2_grpc as dgrpc  # noqa: E402
from mvr.v1 import search_service_pb2 as spb  # noqa: E402
from mvr.v1 import search_service_pb2_grpc as sgrpc  # noqa: E402
from mvr.v1 import types_pb2 as tpb  # noqa: E402
from serverproc import running_server  # noqa: E402
from synthetic import exact_top_k, make_corpus, make_queries, topic_dataset  # noqa: E402

PAPERS = ROOT.parent / "shared" / "data" / "papers-dev.jsonl"
MODES = ("search-vectors", "search-text", "batch-search", "mixed")
DATA_SETS = ("topics", "iid", "papers")
SEARCH = "/mvr.v1.SearchService/Search"
BATCH_SEARCH = "/mvr.v1.SearchService/BatchSearch"
UPSERT = "/mvr.v1.DocumentService/UpsertDocuments"
RESPONSES: dict[str, Any] = {
    SEARCH: spb.SearchResponse,
    BATCH_SEARCH: spb.BatchSearchResponse,
    UPSERT: dpb.UpsertDocumentsResponse,
}
MAX_MESSAGE = 64 << 20
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
]
PAYLOAD_POOL = 256  # distinct serialized requests per operation (drawn at random)
Record = tuple[int, float, float, str]  # (operation index, start, end, gRPC status name)


# ------------------------------------------------------------------------------------------ data sets


@dataclass
class DataSet:
    """Documents (by index), queries and, for the synthetic sets, the exact Chamfer top-10 of each."""

    name: str
    description: str
    n_docs: int
    n_tokens: int
    dim: int | None  # None: text
    document: Callable[[int, str], dpb.Document]  # (index, id) → message
    queries: list[Any]  # float32 (32, dim) arrays, or strings
    truth: np.ndarray | None  # (n_queries, 10) document indices


def vector_message(vectors: np.ndarray) -> tpb.Vectors:
    packed = np.ascontiguousarray(vectors, dtype="<f4")
    return tpb.Vectors(dtype=tpb.DTYPE_FLOAT32, shape=list(packed.shape), data=packed.tobytes())


def dataset(name: str, n_docs: int, n_queries: int) -> tuple[Any, list[np.ndarray], np.ndarray]:
    """(corpus, queries, exact Chamfer top-10 ids) of a synthetic data set: ``topics`` or ``iid``."""
    if name == "topics":
        return topic_dataset(n_docs, n_queries)  # truth cached in bench/.cache
    if name == "iid":
        corpus, centroids = make_corpus(n_docs)
        queries = make_queries(corpus, centroids, n_queries)
        truth, _ = exact_top_k(corpus.tokens, corpus.offsets, queries, 10)
        return corpus, queries, truth
    raise ValueError(f"unknown synthetic data set {name!r}")


def describe(name: str) -> str:
    return {
        "topics": "bench/synthetic.py topic_dataset: topic-clustered tokens, paraphrasing 32-token queries",
        "iid": "bench/synthetic.py make_corpus/make_queries: i.i.d. tokens around topic centroids",
        "papers": "papers-dev.jsonl: abstracts as text documents, titles as text queries",
    }[name]


def load_dataset(name: str, n_docs: int, n_queries: int) -> DataSet:
    if name == "papers":
        papers = [json.loads(line) for line in PAPERS.read_text().splitlines() if line.strip()]
        return DataSet(
            name,
            describe(name),
            len(papers),
            0,
            None,
            lambda i, id: dpb.Document(id=id, text=papers[i]["abstract"]),
            [p["title"] for p in papers],
            None,
        )
    corpus, queries, truth = dataset(name, n_docs, n_queries)
    return DataSet(
        name,
        describe(name),
        corpus.n_docs,
        len(corpus.tokens),
        corpus.tokens.shape[1],
        lambda i, id: dpb.Document(id=id, vectors=vector_message(corpus.document(i))),
        queries,
        truth,
    )


# ------------------------------------------------------------------------------------ collection setup


def create_collection(
    channel: grpc.Channel, name: str, dim: int | None, residual_bits: int | None, train_after_tokens: int
) -> None:
    """A collection of precomputed ``dim``-d vectors, or with ``dim`` None of the server's default model;
    ``residual_bits`` 0 turns codes off, None and ``train_after_tokens`` 0 keep the server's defaults."""
    storage = cpb.TokenStorage(
        residual_bits=residual_bits or 0,
        disable_codes=residual_bits == 0,
        train_after_tokens=train_after_tokens,
    )
    collection = cpb.Collection(
        encoder=cpb.EncoderSpec(model="" if dim else "default"), dim=dim or 0, token_storage=storage
    )
    stub = cgrpc.CollectionServiceStub(channel)
    stub.CreateCollection(cpb.CreateCollectionRequest(collection_id=name, collection=collection), timeout=60)


def upload(channel: grpc.Channel, name: str, data: DataSet, batch: int) -> tuple[int, float]:
    """Streams every document (id = its index); returns (acknowledged documents, seconds)."""
    parent = f"collections/{name}"

    def requests() -> Iterator[dpb.StreamUpsertDocumentsRequest]:
        for start in range(0, data.n_docs, batch):
            docs = [data.document(i, str(i)) for i in range(start, min(start + batch, data.n_docs))]
            yield dpb.StreamUpsertDocumentsRequest(parent=parent, documents=docs)

    started = time.perf_counter()
    acks = dgrpc.DocumentServiceStub(channel).StreamUpsertDocuments(requests(), timeout=3600)
    acknowledged = sum(len(ack.statuses) for ack in acks if ack.ok)
    return acknowledged, time.perf_counter() - started


def get_collection(channel: grpc.Channel, name: str) -> cpb.Collection:
    stub = cgrpc.CollectionServiceStub(channel)
    return stub.GetCollection(cpb.GetCollectionRequest(name=f"collections/{name}"), timeout=60).collection


def wait_until_ready(channel: grpc.Channel, name: str, docs: int, timeout: float = 1800) -> float:
    """Polls until every document is in HNSW and, if the collection trains a codec, coded; seconds."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        info = get_collection(channel, name)
        storage, stats = info.token_storage, info.stats
        codes_due = not storage.disable_codes and stats.tokens >= storage.train_after_tokens
        if stats.indexed_documents >= docs and (not codes_due or stats.coded_documents >= docs):
            return time.perf_counter() - started
        time.sleep(0.2)
    raise TimeoutError(f"collection {name!r} not indexed and coded after {timeout} s")


def collection_summary(info: cpb.Collection) -> dict:
    stats, storage = info.stats, info.token_storage
    return {
        "name": info.name,
        "model": info.encoder.model or None,
        "dim": info.dim,
        "documents": stats.documents,
        "tokens": stats.tokens,
        "indexed_documents": stats.indexed_documents,
        "coded_documents": stats.coded_documents,
        "token_storage": {
            "residual_bits": storage.residual_bits,
            "codes": not storage.disable_codes,
            "train_after_tokens": storage.train_after_tokens,
            "trained_centroids": storage.trained_centroids,
        },
        "bytes_on_disk": dict(stats.bytes_on_disk),
        "bytes_in_memory": dict(stats.bytes_in_memory),
    }


# ------------------------------------------------------------------------------------------- requests


def search_request(name: str, query: Any, args: argparse.Namespace) -> spb.SearchRequest:
    message = spb.Query(text=query) if isinstance(query, str) else spb.Query(vectors=vector_message(query))
    return spb.SearchRequest(
        collection=f"collections/{name}",
        query=message,
        top_k=args.top_k,
        candidates=args.candidates,
        ef=args.ef,
        probe=args.probe,
        centroid_candidates=args.centroid_candidates,
    )


@dataclass(frozen=True)
class Operation:
    """One kind of request: its gRPC method, a pool of serialized requests and its share of the load."""

    kind: str  # "search", "batch-search" or "upsert": results are grouped by it
    method: str
    payloads: tuple[bytes, ...]
    weight: float


def operations(args: argparse.Namespace, data: DataSet) -> list[Operation]:
    rng = random.Random(0)
    queries = data.queries
    searches = tuple(search_request(args.collection, q, args).SerializeToString() for q in queries)
    if args.mode == "batch-search":
        batches = tuple(
            spb.BatchSearchRequest(
                searches=[
                    search_request(args.collection, rng.choice(queries), args) for _ in range(args.batch_size)
                ]
            ).SerializeToString()
            for _ in range(PAYLOAD_POOL)
        )
        return [Operation("batch-search", BATCH_SEARCH, batches, 1.0)]
    if args.mode != "mixed":
        return [Operation("search", SEARCH, searches, 1.0)]
    prefix = args.upsert_id_prefix
    picks = [rng.randrange(data.n_docs) for _ in range(min(PAYLOAD_POOL, data.n_docs))]
    upserts = tuple(
        dpb.UpsertDocumentsRequest(
            parent=f"collections/{args.collection}", documents=[data.document(i, f"{prefix}{i}")]
        ).SerializeToString()
        for i in picks
    )
    return [
        Operation("search", SEARCH, searches, args.read_write_ratio),
        Operation("upsert", UPSERT, upserts, 1.0),
    ]


def served_recall(channel: grpc.Channel, args: argparse.Namespace, data: DataSet) -> float | None:
    """recall@10 of the server's answers (the same knobs as the load) against the exact Chamfer top-10;
    one pass over the queries, which also warms the server up."""
    if data.truth is None:
        return None
    stub = sgrpc.SearchServiceStub(channel)
    found = []
    for query in data.queries:
        response = stub.Search(search_request(args.collection, query, args), timeout=120)
        found.append({int(hit.id) for hit in response.hits[:10]})
    return float(np.mean([len(f & set(t.tolist())) / 10 for f, t in zip(found, data.truth, strict=True)]))


# ------------------------------------------------------------------------------------------- workers


@dataclass(frozen=True)
class Schedule:
    """When a level's clients measure: after ``warmup_s`` from the common start, for ``duration_s``
    seconds or until each client has sent its ``quotas`` entry of requests."""

    warmup_s: float
    duration_s: float | None
    timeout_s: float


def client_loop(
    calls: list[Callable[..., Any]],
    ops: list[Operation],
    quota: int | None,
    window: tuple[float, float | None],
    timeout: float,
    rng: random.Random,
    out: list[Record],
) -> None:
    """One closed-loop client: records (operation, start, end, status) of requests ending after warm-up."""
    warm_end, stop = window
    indices, weights = list(range(len(ops))), [op.weight for op in ops]
    measured = 0
    while (stop is None or time.monotonic() < stop) and (quota is None or measured < quota):
        i = rng.choices(indices, weights)[0] if len(ops) > 1 else 0
        payload = ops[i].payloads[rng.randrange(len(ops[i].payloads))]
        began = time.monotonic()
        try:
            calls[i](payload, timeout=timeout)
            code = "OK"
        except grpc.RpcError as error:
            code = error.code().name if hasattr(error, "code") else "UNKNOWN"
        ended = time.monotonic()
        if ended >= warm_end:
            out.append((i, began, ended, code))
            measured += began >= warm_end


def worker_main(
    target: str,
    ops: list[Operation],
    quotas: list[int | None],
    schedule: Schedule,
    seed: int,
    ready: Any,
    go: Any,
    start: Any,
    results: Any,
) -> None:
    """A worker process: one channel, one thread per client; sends its records back on ``results``."""
    try:
        channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        grpc.channel_ready_future(channel).result(timeout=60)
        calls = [
            channel.unary_unary(
                op.method, request_serializer=None, response_deserializer=RESPONSES[op.method].FromString
            )
            for op in ops
        ]
    except Exception as error:  # reported to the parent, which stops the run
        ready.put(f"worker {seed}: {error!r}")
        return
    ready.put("ready")
    go.wait()
    warm_end = start.value + schedule.warmup_s
    stop = None if schedule.duration_s is None else warm_end + schedule.duration_s
    time.sleep(max(0.0, start.value - time.monotonic()))
    records: list[list[Record]] = [[] for _ in quotas]
    threads = [
        threading.Thread(
            target=client_loop,
            args=(
                calls,
                ops,
                quota,
                (warm_end, stop),
                schedule.timeout_s,
                random.Random(seed * 1000 + j),
                out,
            ),
        )
        for j, (quota, out) in enumerate(zip(quotas, records, strict=True))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    channel.close()
    results.put([record for out in records for record in out])


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def run_level(
    target: str,
    ops: list[Operation],
    concurrency: int,
    processes: int,
    schedule: Schedule,
    requests: int | None,
) -> tuple[list[Record], float]:
    """Runs ``concurrency`` clients in up to ``processes`` worker processes, all starting together after
    every worker is connected; returns every record and the end of warm-up (time.monotonic, which is
    one system-wide clock on Linux)."""
    context = mp.get_context("spawn")  # no fork of a process that has used gRPC
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    start = context.Value("d", 0.0)
    threads_per_process = [n for n in split(concurrency, min(processes, concurrency)) if n]
    quotas = split(requests, concurrency) if requests is not None else [None] * concurrency
    workers, offset = [], 0
    for p, threads in enumerate(threads_per_process):
        args = (target, ops, quotas[offset : offset + threads], schedule, p + 1, ready, go, start, results)
        workers.append(context.Process(target=worker_main, args=args, daemon=True))
        offset += threads
    for worker in workers:
        worker.start()
    wait = (
        None if schedule.duration_s is None else schedule.warmup_s + schedule.duration_s + schedule.timeout_s
    )
    try:
        for _ in workers:
            message = ready.get(timeout=120)
            if message != "ready":
                raise RuntimeError(message)
        start.value = time.monotonic() + 0.1
        go.set()
        records = [record for _ in workers for record in results.get(timeout=wait and wait + 120)]
    except BaseException:
        for worker in workers:  # this level's own worker processes, by handle
            worker.terminate()
        raise
    for worker in workers:
        worker.join(timeout=60)
    return records, start.value + schedule.warmup_s


# ------------------------------------------------------------------------------------------- results


def latency_stats(latencies_ms: np.ndarray) -> dict:
    if len(latencies_ms) == 0:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    p50, p90, p99 = np.percentile(latencies_ms, [50, 90, 99]).tolist()
    return {
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "max_ms": float(latencies_ms.max()),
        "mean_ms": float(latencies_ms.mean()),
    }


def summarize(records: list[Record], window: tuple[float, float], batch: int) -> dict:
    """Requests/s: successful answers that arrived inside the measured window / its length. Latency
    percentiles: successful requests started inside the window. Errors: failed requests started inside
    the window, by status code."""
    begin, end = window
    started = [r for r in records if r[1] >= begin]
    completed = sum(r[3] == "OK" and r[2] <= end for r in records)
    ok_ms = np.array([(r[2] - r[1]) * 1000 for r in started if r[3] == "OK"])
    errors: dict[str, int] = {}
    for r in started:
        if r[3] != "OK":
            errors[r[3]] = errors.get(r[3], 0) + 1
    per_s = completed / (end - begin) if end > begin else 0.0
    return {
        "requests": len(started),
        "ok": len(ok_ms),
        "requests_per_s": per_s,
        "items_per_s": per_s * batch,  # queries/s (BatchSearch carries `batch`), documents/s of upserts
        **latency_stats(ok_ms),
        "errors": errors,
    }


def level_result(
    ops: list[Operation], records: list[Record], warm_end: float, args: argparse.Namespace
) -> dict:
    """Per kind of request (and all together in mixed mode), over one window: ``--duration`` seconds
    from the end of warm-up, or with ``--requests`` until the last measured answer."""
    if args.duration is not None:
        window = (warm_end, warm_end + args.duration)
    else:
        window = (warm_end, max((r[2] for r in records if r[1] >= warm_end), default=warm_end))
    by_kind = {}
    for i, op in enumerate(ops):
        batch = args.batch_size if op.kind == "batch-search" else 1
        by_kind[op.kind] = summarize([r for r in records if r[0] == i], window, batch)
    result = {"window_s": window[1] - window[0], "by_kind": by_kind}
    if len(ops) > 1:
        result["all"] = summarize(records, window, 1)
    return result


def print_header(title: str) -> None:
    print(title)
    print(
        f"{'clients':>7} {'request':>12} {'n':>7} {'req/s':>8} {'items/s':>9} {'p50 ms':>8} {'p90 ms':>8} "
        f"{'p99 ms':>8} {'max ms':>8}  errors"
    )


def print_level(concurrency: int, result: dict) -> None:
    rows = list(result["by_kind"].items()) + ([("all", result["all"])] if "all" in result else [])
    for kind, row in rows:
        cells = [row[k] for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")]
        latency = " ".join(f"{c:8.1f}" if c is not None else f"{'-':>8}" for c in cells)
        errors = ", ".join(f"{k} {v}" for k, v in sorted(row["errors"].items())) or "none"
        head = f"{concurrency:>7} {kind:>12} {row['requests']:>7} {row['requests_per_s']:8.1f}"
        head += f" {row['items_per_s']:9.1f}"
        print(f"{head} {latency}  {errors}", flush=True)


def plot(levels: list[dict], path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not importable: no plot (bash scripts/install.sh bench installs it)")
        return
    figure, (rate, tail) = plt.subplots(1, 2, figsize=(11, 4.5))
    x = [level["concurrency"] for level in levels]
    for kind in levels[0]["by_kind"]:
        rate.plot(x, [level["by_kind"][kind]["requests_per_s"] for level in levels], "o-", label=kind)
        tail.plot(x, [level["by_kind"][kind]["p99_ms"] for level in levels], "o-", label=kind)
    for axes, label in ((rate, "requests/s (successful)"), (tail, "p99 latency, ms (client side)")):
        axes.set_xscale("log", base=2)
        axes.set_xticks(x, [str(c) for c in x])
        axes.set_xlabel("concurrent clients")
        axes.set_ylabel(label)
        axes.grid(True, alpha=0.3)
        axes.legend()
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"wrote {path}")


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--start-server", action="store_true", help="run `mvr serve` here and load --data")
    where.add_argument("--target", help="host:port of a running server")
    parser.add_argument("--load", action="store_true", help="with --target: create --collection, load --data")
    parser.add_argument("--collection", default="load")
    parser.add_argument("--mode", choices=MODES, default="search-vectors")
    parser.add_argument("--data", choices=DATA_SETS, default="topics")
    parser.add_argument("--docs", type=int, default=20_000, help="documents of a synthetic data set")
    parser.add_argument("--queries", type=int, default=200, help="distinct queries of a synthetic data set")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument(
        "--duration", type=float, default=None, help="measured seconds per level (default 10)"
    )
    amount.add_argument("--requests", type=int, default=None, help="measured requests per level")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds per level, not measured")
    parser.add_argument("--processes", type=int, default=4, help="worker processes (at most one per client)")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline of each request, seconds")
    parser.add_argument("--top-k", type=int, default=10)
    for knob in ("candidates", "ef", "probe", "centroid-candidates"):
        parser.add_argument(f"--{knob}", type=int, default=0, help="0: the server's default")
    parser.add_argument("--batch-size", type=int, default=8, help="searches per BatchSearch (batch-search)")
    parser.add_argument("--read-write-ratio", type=float, default=9.0, help="searches per upsert (mixed)")
    parser.add_argument(
        "--upsert-id-prefix", default=None, help="mixed: ids of upserts (default '' or 'load-')"
    )
    parser.add_argument("--residual-bits", type=int, default=None, help="loaded collection: 0 = no codes")
    parser.add_argument("--train-after-tokens", type=int, default=0, help="loaded collection; 0: default")
    parser.add_argument("--load-batch", type=int, default=100, help="documents per upsert while loading")
    parser.add_argument("--server-args", default="", help="extra `mvr serve` flags, e.g. '--workers 16'")
    parser.add_argument("--server-env", action="append", default=[], help="KEY=VALUE for the server")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/load_MODE_DATA.json)")
    args = parser.parse_args(argv)
    if args.duration is None and args.requests is None:
        args.duration = 10.0
    if args.upsert_id_prefix is None:
        args.upsert_id_prefix = "" if args.start_server else "load-"
    if args.out is None:
        args.out = str(ROOT / "bench" / "results" / f"load_{args.mode.replace('-', '_')}_{args.data}.json")
    if (args.mode == "search-text") != (args.data == "papers"):
        parser.error("--mode search-text goes with --data papers (text), and --data papers with search-text")
    return args


def server_flags(args: argparse.Namespace) -> list[str]:
    model = [] if args.data == "papers" else ["--model", "none"]
    return [*model, *shlex.split(args.server_args)]


def server_env(args: argparse.Namespace) -> dict[str, str]:
    return dict(item.split("=", 1) for item in args.server_env)


def prepare(channel: grpc.Channel, args: argparse.Namespace, data: DataSet) -> dict:
    """Creates and loads the collection when asked to; returns what the JSON records of it."""
    if not (args.start_server or args.load):
        return {"loading": None, "collection": collection_summary(get_collection(channel, args.collection))}
    create_collection(channel, args.collection, data.dim, args.residual_bits, args.train_after_tokens)
    acknowledged, seconds = upload(channel, args.collection, data, args.load_batch)
    ready_s = wait_until_ready(channel, args.collection, data.n_docs)
    collection = collection_summary(get_collection(channel, args.collection))
    print(
        f"loaded {acknowledged:,} documents in {seconds:.1f} s; all indexed "
        f"({collection['coded_documents']:,} coded) {ready_s:.1f} s later",
        flush=True,
    )
    loading = {
        "acknowledged": acknowledged,
        "acknowledged_docs_per_s": acknowledged / seconds,
        "seconds_then_until_indexed_and_coded": ready_s,
    }
    return {"loading": loading, "collection": collection}


def measure(target: str, args: argparse.Namespace, data: DataSet) -> dict:
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        Client(target).wait_until_serving(600)
        prepared = prepare(channel, args, data)
        recall = served_recall(channel, args, data) if (args.start_server or args.load) else None
    if recall is not None:
        print(f"recall@10 of the served answers vs exact Chamfer (one pass, single client): {recall:.3f}")
    ops = operations(args, data)
    schedule = Schedule(args.warmup, args.duration, args.timeout)
    title = (
        f"{args.mode} on data set {data.name!r} ({data.n_docs:,} docs), collection {args.collection!r} "
        f"({prepared['collection']['coded_documents']:,} coded), "
        + (f"{args.duration:g} s" if args.duration else f"{args.requests:,} requests")
        + f" per level after {args.warmup:g} s warm-up"
    )
    print_header(title)
    levels = []
    for concurrency in args.concurrency:
        records, warm_end = run_level(target, ops, concurrency, args.processes, schedule, args.requests)
        level = {"concurrency": concurrency, **level_result(ops, records, warm_end, args)}
        print_level(concurrency, level)
        levels.append(level)
    return {**prepared, "recall_at_10_served": recall, "title": title, "levels": levels}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data = load_dataset(args.data, args.docs, args.queries)
    load_average = os.getloadavg()
    with contextlib.ExitStack() as stack:
        target = args.target or stack.enter_context(running_server(*server_flags(args), env=server_env(args)))
        measured = measure(target, args, data)
    result = {
        "benchmark": "bench/load.py",
        "command": " ".join(["python", "bench/load.py", *(argv if argv is not None else sys.argv[1:])]),
        "mode": args.mode,
        "data": {
            "name": data.name,
            "description": data.description,
            "docs": data.n_docs,
            "tokens": data.n_tokens,
            "dim": data.dim,
            "distinct_queries": len(data.queries),
        },
        "server": (
            {"started_here": True, "flags": server_flags(args), "env": server_env(args)}
            if args.start_server
            else {"started_here": False, "target": args.target}
        ),
        "search_knobs": {
            k: getattr(args, k) or None for k in ("top_k", "candidates", "ef", "probe", "centroid_candidates")
        },
        "batch_size": args.batch_size if args.mode == "batch-search" else None,
        "read_write_ratio": args.read_write_ratio if args.mode == "mixed" else None,
        "method": (
            "closed-loop clients (threads) in worker processes; latency client side per request around the "
            "blocking call; warm-up excluded; percentiles over successful requests"
        ),
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "requests_per_level": args.requests,
        "processes": args.processes,
        **measured,
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_before": load_average,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    plot(measured["levels"], out.with_suffix(".png"), measured["title"])


if __name__ == "__main__":
    main()
