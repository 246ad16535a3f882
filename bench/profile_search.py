"""Where one search's time goes, stage by stage, in the real engine (no gRPC), one thread.

Builds a collection over the topic-clustered corpus (bench/synthetic.py), or reopens one kept by an
earlier run (``--dir``), then times each cascade stage of :class:`mvr.server.search.Searcher` over
the queries: FDE of the query, graph (HNSW + pending scan), query × centroids, probe, centroid
interaction, gathering / decoding the candidates' tokens, exact MaxSim. Prints a table and writes JSON.

    python bench/profile_search.py [--docs 10000] [--dir /tmp/mvr-profile] [--build-threads 2] \
        [--candidates 128] [--out bench/results/profile_search_10k.json]

Builds with both cores (as `mvr serve` does), then pins itself to one core for the searches.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "bench")]

from mvr.server.app import limit_blas_threads  # noqa: E402
from mvr.server.candidates import centroid_interaction, probe_lists, probe_table  # noqa: E402
from mvr.server.manager import CollectionManager  # noqa: E402
from mvr.server.rerank import maxsim  # noqa: E402
from mvr.server.search import DEFAULT_CENTROID_CANDIDATES, DEFAULT_PROBE, GRAPH_SHARE  # noqa: E402
from mvr.server.values import DocumentInput  # noqa: E402
from synthetic import topic_dataset  # noqa: E402

STAGES = ["query_fde", "graph", "centroid_scores", "probe", "centroid_interaction", "tokens", "maxsim"]


def open_collection(args, corpus) -> tuple[CollectionManager, object, dict]:
    """The collection in ``args.dir`` (built first if absent), and how its build went."""
    manager = CollectionManager(args.dir, index_threads=args.build_threads, fde_threads=args.build_threads)
    if "profile" in {config.name for config in manager.list()}:
        return manager, manager.get("profile"), {"reused": str(args.dir)}
    manager.create("profile", model=None, dim=corpus.tokens.shape[1])
    collection = manager.get("profile")
    started = time.perf_counter()
    for start in range(0, corpus.n_docs, 500):
        stop = min(start + 500, corpus.n_docs)
        collection.upsert([DocumentInput(str(i), vectors=corpus.document(i)) for i in range(start, stop)])
    acknowledged = time.perf_counter() - started
    collection.flush()
    build = {
        "acknowledged_docs_per_s": round(corpus.n_docs / acknowledged),
        "build_s": round(time.perf_counter() - started, 1),
        "threads": args.build_threads,
    }
    print(build, flush=True)
    return manager, collection, build


def profile_query(collection, query: np.ndarray, n_candidates: int, clock: dict[str, float]) -> set[int]:
    searcher = collection.searcher
    snapshot = collection.tokens.snapshot
    marks = [time.perf_counter()]
    query_fde = collection.fde.encode_query(query)
    marks.append(time.perf_counter())
    n_graph = n_candidates // GRAPH_SHARE
    graph = searcher.graph_stage(query_fde, n_graph, max(200, 2 * n_graph), None)
    marks.append(time.perf_counter())
    similarities = query @ snapshot.codec.centroids.T
    marks.append(time.perf_counter())
    probed, _ = probe_lists(
        similarities,
        probe_table(similarities, DEFAULT_PROBE),
        snapshot.list_offsets,
        snapshot.list_slots,
        snapshot.n_listed,
        snapshot.alive[: snapshot.n],
        DEFAULT_CENTROID_CANDIDATES,
    )
    marks.append(time.perf_counter())
    slots = probed
    approximate = centroid_interaction(
        np.ascontiguousarray(similarities.T), snapshot.cids, snapshot.cid_offsets, slots
    )
    slots = slots[np.argpartition(-approximate, n_candidates - 1)[:n_candidates]]
    marks.append(time.perf_counter())
    labels = dict.fromkeys(np.concatenate([graph, snapshot.labels[slots]]).tolist())
    records = [collection.store.by_label[label] for label in labels]
    tokens, offsets, _ = searcher.token_matrix(records)
    marks.append(time.perf_counter())
    scores = maxsim(query, tokens, offsets).scores
    best = np.argsort(-scores)[:10]
    marks.append(time.perf_counter())
    for stage, (a, b) in zip(STAGES, pairwise(marks), strict=True):
        clock[stage] += b - a
    return {int(records[i].id) for i in best}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--candidates", type=int, default=128)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/mvr-profile"))
    parser.add_argument(
        "--build-threads", type=int, default=2, help="indexer and coding threads (as mvr serve)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "profile_search_10k.json")
    args = parser.parse_args()
    limit_blas_threads()
    corpus, queries, truth = topic_dataset(args.docs, args.queries)
    manager, collection, build = open_collection(args, corpus)
    stats = collection.stats()
    footprint = {
        "disk_bytes_per_doc": {k: round(v / stats.documents) for k, v in stats.bytes_on_disk.items()},
        "memory_bytes_per_doc": {k: round(v / stats.documents) for k, v in stats.bytes_in_memory.items()},
        "centroids": stats.centroids,
    }
    print(footprint, flush=True)
    if collection.tokens is None or collection.tokens.snapshot is None:
        raise SystemExit("the collection has no codes: not enough tokens to train a codec")
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # searches on one core
    for query in queries[:10]:  # warm up: JIT caches, page cache
        profile_query(collection, query, args.candidates, dict.fromkeys(STAGES, 0.0))
    clock = dict.fromkeys(STAGES, 0.0)
    found = [profile_query(collection, q, args.candidates, clock) for q in queries]
    recall = float(np.mean([len(f & set(t.tolist())) / 10 for f, t in zip(found, truth, strict=True)]))
    ms = {stage: round(seconds / len(queries) * 1e3, 3) for stage, seconds in clock.items()}
    ms["total"] = round(sum(ms.values()), 3)
    for stage, value in ms.items():
        print(f"{stage:>22} {value:8.3f} ms")
    print(f"{'recall@10':>22} {recall:8.3f}")
    manager.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": " ".join(sys.argv),
                "machine": platform.machine(),
                "docs": corpus.n_docs,
                "queries": len(queries),
                "candidates": args.candidates,
                "build": build,
                "footprint": footprint,
                "ms_per_query": ms,
                "recall_at_10": recall,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
