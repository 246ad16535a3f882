"""Where one search's time goes, stage by stage, in the real engine (no gRPC), one thread.

Builds a collection over the topic-clustered corpus (bench/synthetic.py), or reopens one kept by an
earlier run (``--dir``), then times each cascade stage of :class:`mvr.server.search.Searcher` over
the queries: FDE of the query, graph (HNSW + pending scan), query × centroids, probe, centroid
interaction, exact MaxSim (tokens read / decoded a tile at a time, one GEMM per tile). Beside it, on the
same candidates and outside the total, the exact stage without tiling (every candidate's tokens decoded
into one matrix, then one GEMM): the before/after of the tiling. Prints a table and writes JSON.

    python bench/profile_search.py [--docs 10000] [--dir /tmp/mvr-profile] [--build-threads 2] \
        [--candidates N] [--fde-dim N] [--residual-bits N] [--train-rounds N] [--train-seed N] \
        [--max-centroids N] \
        [--out bench/results/profile_search_10k.json]

Builds with both cores (as `mvr serve` does), closes the collection and reopens it as a restarted
server would (measuring the resident anonymous memory the open adds), then pins itself to one core
for the searches.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "bench")]

from mvr.server import codec, indexer, rerank  # noqa: E402
from mvr.server.app import limit_blas_threads  # noqa: E402
from mvr.server.candidates import (  # noqa: E402
    byte_scores,
    centroid_interaction,
    probe_lists,
    probe_table,
)
from mvr.server.manager import CollectionManager  # noqa: E402
from mvr.server.rerank import maxsim_tiled  # noqa: E402
from mvr.server.search import (  # noqa: E402
    GRAPH_SHARE,
    default_candidates,
    default_centroid_candidates,
    default_probe,
    graph_ef,
    graph_share,
)
from mvr.server.store import token_offsets  # noqa: E402
from synthetic import topic_dataset, upsert_in_batches  # noqa: E402

STAGES = ["query_fde", "graph", "centroid_scores", "probe", "centroid_interaction", "exact"]
# the exact stage as it was before tiling (all candidates' tokens read into one matrix, then one GEMM),
# timed on the same candidates beside it and not counted in the total
UNTILED = "exact_untiled"
# the exact stage's parts, timed on a third pass over the same candidates (warm: their codes are in
# the CPU caches by then, so "read" is a lower bound): reading / decoding the tiles, the GEMMs, the
# per-document maxima; also outside the total
PARTS = ["exact_read", "exact_gemm", "exact_max"]


def anonymous_rss() -> int:
    """This process's resident anonymous memory in bytes (Linux: RssAnon of /proc/self/status): the
    heap and anonymous mappings, not the pages of mapped files (the code file), which the page cache
    can drop."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def open_collection(args, corpus) -> tuple[CollectionManager, object, dict, int]:
    """The collection in ``args.dir`` (built first if absent, then closed), how its build went, and
    the resident anonymous memory opening it takes, measured in a fresh process (this one's heap
    holds the corpus and what an earlier open freed)."""
    build = build_collection(args, corpus)
    measured = subprocess.run(
        [sys.executable, __file__, "--measure-open", str(args.dir)],
        check=True,
        capture_output=True,
        text=True,
    )
    manager = CollectionManager(args.dir, index_threads=args.build_threads, fde_threads=args.build_threads)
    return manager, manager.get("profile"), build, int(measured.stdout.split()[-1])


def measure_open(directory: Path) -> None:
    """Prints the resident anonymous memory that opening the collection adds to a process that has
    already run every kernel once (JIT code, libraries and pools are per process, not per document):
    a small collection is built, coded and searched first in a temporary directory."""
    limit_blas_threads()
    corpus, queries, _ = topic_dataset(1_500, 1, cache=None)
    with tempfile.TemporaryDirectory() as scratch:
        warm = CollectionManager(Path(scratch), index_threads=1, fde_threads=1)
        warm.create("warm", model=None, dim=corpus.tokens.shape[1], tokens={"train_after_tokens": 1 << 14})
        collection = warm.get("warm")
        upsert_in_batches(collection, corpus)
        collection.flush()
        assert collection.stats().centroids, "the warm-up collection was not coded"
        collection.search(queries[0], 10, explain=True)
        collection.search(queries[0], 10)
        warm.close()
    gc.collect()
    before = anonymous_rss()
    manager = CollectionManager(directory, index_threads=1, fde_threads=1)
    manager.get("profile").flush()  # the indexer has caught up
    print(anonymous_rss() - before)
    manager.close()


def build_collection(args, corpus) -> dict:
    """Builds the collection in ``args.dir`` unless it is there; how its build went."""
    manager = CollectionManager(args.dir, index_threads=args.build_threads, fde_threads=args.build_threads)
    if "profile" in {config.name for config in manager.list()}:
        manager.close()
        return {"reused": str(args.dir)}
    options: dict = {} if args.fde_dim is None else {"fde": {"final_dim": args.fde_dim}}
    if args.residual_bits is not None:
        options["tokens"] = {"residual_bits": args.residual_bits}
    manager.create("profile", model=None, dim=corpus.tokens.shape[1], **options)
    collection = manager.get("profile")
    started = time.perf_counter()
    upsert_in_batches(collection, corpus)
    acknowledged = time.perf_counter() - started
    collection.flush()
    build = {
        "acknowledged_docs_per_s": round(corpus.n_docs / acknowledged),
        "build_s": round(time.perf_counter() - started, 1),
        "threads": args.build_threads,
    }
    print(build, flush=True)
    manager.close()
    return build


def profile_query(
    collection, query: np.ndarray, args, clock: dict[str, float], turn: int
) -> dict[str, set[int]]:
    """Runs and times one search stage by stage; returns the document ids each stage passes on."""
    searcher = collection.searcher
    snapshot = collection.tokens.snapshot

    def timed(stage: str, run):
        started = time.perf_counter()
        result = run()
        clock[stage] += time.perf_counter() - started
        return result

    n_candidates = args.candidates
    query_fde = timed("query_fde", lambda: collection.fde.encode_query(query))
    n_graph = graph_share(10, n_candidates, args.graph_share)  # every document coded, top_k 10
    ef = graph_ef(collection.config.hnsw.ef_search, n_graph)
    graph = timed("graph", lambda: searcher.graph_stage(query_fde, n_graph, ef, None))
    scores = timed("centroid_scores", lambda: snapshot.centroid_table.scores(query))
    probed, _ = timed(
        "probe",
        lambda: probe_lists(
            scores,
            probe_table(scores, len(query), args.probe),
            snapshot.list_offsets,
            snapshot.list_slots,
            snapshot.n_listed,
            snapshot.alive[: snapshot.n],
            args.centroid_candidates,
        ),
    )

    def centroid_stage() -> np.ndarray:
        table, _, _ = byte_scores(scores)
        approximate = centroid_interaction(table, snapshot.cids, snapshot.cid_offsets, probed)
        return probed[np.argpartition(-approximate, n_candidates - 1)[:n_candidates]]

    slots = timed("centroid_interaction", centroid_stage)
    labels = dict.fromkeys(np.concatenate([graph, snapshot.labels[slots]]).tolist())
    records = [collection.store.by_label[label] for label in labels]

    def exact() -> tuple[list, np.ndarray]:
        tokens = searcher.tokens_of(records)
        return tokens.records, maxsim_tiled(query, tokens.counts, tokens.read).scores

    def untiled() -> np.ndarray:
        return untiled_exact(query, searcher.token_matrix(records), token_offsets(records))

    # both variants score the same candidates, and whichever runs second finds their codes in the CPU
    # caches: they take turns going first
    if turn % 2:
        before = timed(UNTILED, untiled)
        ordered, scores = timed("exact", exact)
    else:
        ordered, scores = timed("exact", exact)
        before = timed(UNTILED, untiled)
    position = {id(r): i for i, r in enumerate(ordered)}
    np.testing.assert_allclose(before, scores[[position[id(r)] for r in records]], rtol=0, atol=1e-4)
    tokens = searcher.tokens_of(records)
    np.testing.assert_allclose(exact_in_parts(query, tokens, clock), scores, rtol=0, atol=1e-4)

    def ids(labels) -> set[int]:
        return {int(collection.store.by_label[label].id) for label in np.asarray(labels).tolist()}

    return {
        "graph": ids(graph),
        "probe": ids(snapshot.labels[probed]),
        "centroid_interaction": ids(snapshot.labels[slots]),
        "exact_candidates": ids(list(labels)),
        "top_10": {int(ordered[i].id) for i in np.argsort(-scores)[:10]},
    }


def exact_in_parts(query: np.ndarray, tokens, clock: dict[str, float]) -> np.ndarray:
    """The exact stage's tile loop (:func:`mvr.server.rerank.maxsim_tiled`, without explain), each part
    timed into ``clock``; returns the scores."""
    query = np.ascontiguousarray(query, dtype=np.float32)
    counts = tokens.counts
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    best = np.empty((len(query), len(counts)), dtype=np.float32)
    buffer = np.empty((max(rerank.TILE_TOKENS, int(counts.max())), query.shape[1]), dtype=np.float32)
    start = 0
    for stop in rerank.tile_bounds(offsets, rerank.TILE_TOKENS):
        rows = offsets[start : stop + 1] - offsets[start]
        t0 = time.perf_counter()
        tile = tokens.read(start, stop, buffer[: rows[-1]])
        t1 = time.perf_counter()
        similarities = tile @ query.T
        t2 = time.perf_counter()
        rerank._segment_max(similarities, rows, start, best)
        t3 = time.perf_counter()
        clock["exact_read"] += t1 - t0
        clock["exact_gemm"] += t2 - t1
        clock["exact_max"] += t3 - t2
        start = stop
    return best.sum(axis=0, dtype=np.float32)


def untiled_exact(query: np.ndarray, tokens: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """MaxSim scores with one GEMM over all candidates' tokens at once (the pre-tiling exact stage)."""
    similarities = query @ tokens.T
    return np.maximum.reduceat(similarities, offsets[:-1], axis=1).sum(axis=0, dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--candidates", type=int, help="default: the engine's for the codec's centroids (top 10)"
    )
    parser.add_argument("--probe", type=int, help="default: the engine's for the codec's centroids")
    parser.add_argument("--centroid-candidates", type=int, help="default: as --probe")
    parser.add_argument(
        "--tile-tokens", type=int, default=rerank.TILE_TOKENS, help="rows per tile of the exact stage"
    )
    parser.add_argument(
        "--train-rounds",
        type=int,
        help="fixed k-means rounds for the codec trainings during the build (default: the engine's, "
        "budgeted against the collection's size: indexer.train_rounds)",
    )
    parser.add_argument(
        "--train-seed",
        type=int,
        default=indexer.TRAIN_SEED,
        help="the codec trainings' draw (sample and k-means start; default: the engine's); a new build",
    )
    parser.add_argument(
        "--max-centroids",
        type=int,
        default=None,
        help="the most centroids a training chooses by the collection's size, whatever the residual "
        "width (default: the engine's, codec.MAX_DEFAULT_CENTROIDS: 16,384 at 4 bits, 8,192 else); "
        "a new build",
    )
    parser.add_argument(
        "--fde-dim", type=int, help="the graph FDE's final projection (default: the engine's); a new build"
    )
    parser.add_argument(
        "--graph-share",
        type=int,
        default=GRAPH_SHARE,
        help="the graph sends candidates / this many documents to the exact stage (default: the engine's)",
    )
    parser.add_argument(
        "--residual-bits", type=int, help="bits of the coded residuals (default: the engine's); a new build"
    )
    parser.add_argument("--dir", type=Path, default=Path("/tmp/mvr-profile"))
    parser.add_argument(
        "--build-threads", type=int, default=2, help="indexer and coding threads (as mvr serve)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "profile_search_10k.json")
    parser.add_argument("--measure-open", type=Path, help=argparse.SUPPRESS)  # the child of open_collection
    args = parser.parse_args()
    if args.measure_open:
        measure_open(args.measure_open)
        return
    limit_blas_threads()
    rerank.TILE_TOKENS = args.tile_tokens
    if args.train_rounds is not None:  # fixed rounds instead of the engine's budget
        indexer.MIN_TRAIN_ROUNDS = indexer.MAX_TRAIN_ROUNDS = args.train_rounds
    indexer.TRAIN_SEED = args.train_seed
    if args.max_centroids is not None:
        codec.MAX_DEFAULT_CENTROIDS = dict.fromkeys(codec.SUPPORTED_BITS, args.max_centroids)
    corpus, queries, truth = topic_dataset(args.docs, args.queries)
    manager, collection, build, opened_rss = open_collection(args, corpus)
    reused = "reused" in build
    rounds = "engine" if args.train_rounds is None else args.train_rounds
    stats = collection.stats()
    footprint = {
        "disk_bytes_per_doc": {k: round(v / stats.documents) for k, v in stats.bytes_on_disk.items()},
        "memory_bytes_per_doc": {k: round(v / stats.documents) for k, v in stats.bytes_in_memory.items()},
        "centroids": stats.centroids,
        "codec_generation": stats.codec_generation,  # 1 + retrainings while the collection grew
        # measured, not estimated: the resident anonymous memory opening the collection adds to a
        # fresh process (an upper bound: what the open allocated and freed may stay in its heap)
        "opened_anon_rss_bytes_per_doc": round(opened_rss / stats.documents),
    }
    print(footprint, flush=True)
    if collection.tokens is None or collection.tokens.snapshot is None:
        raise SystemExit("the collection has no codes: not enough tokens to train a codec")
    args.candidates = args.candidates or default_candidates(stats.centroids, 10)
    args.centroid_candidates = args.centroid_candidates or default_centroid_candidates(
        stats.centroids, args.candidates
    )
    args.probe = args.probe or default_probe(stats.centroids, args.centroid_candidates)
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # searches on one core
    for query in queries[:10]:  # warm up: JIT caches, page cache
        profile_query(collection, query, args, dict.fromkeys([*STAGES, UNTILED, *PARTS], 0.0), 0)
    clock = dict.fromkeys([*STAGES, UNTILED, *PARTS], 0.0)
    found = [profile_query(collection, q, args, clock, turn) for turn, q in enumerate(queries)]
    # the share of the true top-10 that each stage's output still holds
    pairs = list(zip(found, (set(t.tolist()) for t in truth), strict=True))
    stage_recall = {
        stage: round(float(np.mean([len(f[stage] & t) / 10 for f, t in pairs])), 4) for stage in found[0]
    }
    recall = stage_recall["top_10"]
    ms = {stage: round(clock[stage] / len(queries) * 1e3, 3) for stage in STAGES}
    ms["total"] = round(sum(ms.values()), 3)
    for extra in (UNTILED, *PARTS):
        ms[extra] = round(clock[extra] / len(queries) * 1e3, 3)
    for stage, value in ms.items():
        print(f"{stage:>22} {value:8.3f} ms")
    for stage, value in stage_recall.items():
        print(f"{'recall ' + stage:>28} {value:8.3f}")
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
                "graph_share": args.graph_share,
                "probe": args.probe,
                "centroid_candidates": args.centroid_candidates,
                "tile_tokens": args.tile_tokens,
                # the build's knobs; null for a collection reused from an earlier run (its JSON has them)
                "train_rounds": None if reused else rounds,
                "train_seed": None if reused else args.train_seed,
                "max_centroids": None if reused else args.max_centroids or "engine",
                "build": build,
                "footprint": footprint,
                "ms_per_query": ms,
                "recall_at_10": recall,
                "true_top_10_kept_by_stage": stage_recall,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
