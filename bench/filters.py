"""Filtered search beside unfiltered: latency and recall at 1%, 10% and 50% selectivity.

Builds (or reuses, ``--dir``) a topic-clustered collection of ``--docs`` documents (128-d, 30–200
tokens) whose metadata holds ``bucket`` = i % 100 and ``tags`` = ["t{i % 10}", "even" | "odd"], so
that ``{"bucket": {"$lt": s}}`` selects s% of them, ``{"tags": "t3"}`` 10% and ``{"tags": "even"}``
50% (a string in a list: a posting list), then, one query at a time on one thread (BLAS, Numba),
times per query: the filter's evaluation alone, on the resident columns that search reads
(:meth:`Collection.allowed`) and in SQLite over the catalog (:meth:`Collection.matching`, what
delete-by-filter runs) side by side, the filtered search (evaluation included) and the unfiltered
search; and measures recall@10 against exact Chamfer by brute force over the matching documents (the
unfiltered row: over all documents).

    python bench/filters.py [--docs 100000] [--queries 50] [--dir /tmp/mvr-filters-100k-tags] \\
        [--out bench/results/filters_100k.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "bench")]

from mvr.server.app import limit_blas_threads  # noqa: E402
from mvr.server.manager import CollectionManager  # noqa: E402
from mvr.server.metadata import AllOf, Condition, Not  # noqa: E402
from mvr.server.values import DocumentInput  # noqa: E402
from synthetic import TopicCorpusSpec, exact_top_k, make_topic_corpus, make_topic_queries  # noqa: E402

# (row name, filter, which documents i match)
FILTERS = [
    ("bucket<1 (1%)", Condition("bucket", "lt", 1), lambda i: i % 100 < 1),
    ("bucket<10 (10%)", Condition("bucket", "lt", 10), lambda i: i % 100 < 10),
    ("bucket<50 (50%)", Condition("bucket", "lt", 50), lambda i: i % 100 < 50),
    ("tags=t3 (10%)", Condition("tags", "eq", "t3"), lambda i: i % 10 == 3),
    ("tags=even (50%)", Condition("tags", "eq", "even"), lambda i: i % 2 == 0),
    (
        "bucket<20 and not tags=odd (10%)",
        AllOf((Condition("bucket", "lt", 20), Not(Condition("tags", "eq", "odd")))),
        lambda i: i % 100 < 20 and i % 2 == 0,
    ),
]


def build(directory: Path, corpus, threads: int) -> dict:
    manager = CollectionManager(directory, index_threads=threads, fde_threads=threads)
    if "filters" in {config.name for config in manager.list()}:
        manager.close()
        return {"reused": str(directory)}
    manager.create("filters", model=None, dim=corpus.tokens.shape[1])
    collection = manager.get("filters")
    started = time.perf_counter()
    for start in range(0, corpus.n_docs, 500):
        stop = min(start + 500, corpus.n_docs)
        collection.upsert(
            [
                DocumentInput(
                    str(i),
                    vectors=corpus.tokens[corpus.offsets[i] : corpus.offsets[i + 1]],
                    metadata={"bucket": i % 100, "tags": [f"t{i % 10}", "odd" if i % 2 else "even"]},
                )
                for i in range(start, stop)
            ]
        )
    collection.flush()
    result = {"build_s": round(time.perf_counter() - started, 1)}
    print(result, flush=True)
    manager.close()
    return result


def subset_truth(corpus, queries, selected: np.ndarray, k: int = 10) -> list[set[str]]:
    """Exact Chamfer top-k over the selected documents only."""
    lengths = corpus.offsets[selected + 1] - corpus.offsets[selected]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = np.concatenate([corpus.tokens[corpus.offsets[i] : corpus.offsets[i + 1]] for i in selected])
    top, _ = exact_top_k(tokens, offsets, queries, k)
    return [{str(selected[j]) for j in row} for row in top]


def timed(run, queries) -> tuple[list[float], list]:
    times, results = [], []
    for query in queries:
        started = time.perf_counter()
        results.append(run(query))
        times.append((time.perf_counter() - started) * 1e3)
    return times, results


def summary(times: list[float]) -> dict:
    return {
        "p50_ms": round(float(np.percentile(times, 50)), 2),
        "p99_ms": round(float(np.percentile(times, 99)), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/mvr-filters-100k-tags"))
    parser.add_argument("--build-threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/filters_100k.json")
    args = parser.parse_args()

    corpus = make_topic_corpus(TopicCorpusSpec(n_docs=args.docs, seed=0))
    queries, _ = make_topic_queries(corpus, args.queries)
    result: dict = {"command": " ".join(sys.argv), "docs": args.docs, "queries": args.queries}
    result["build"] = build(args.dir, corpus, args.build_threads)
    limit_blas_threads()
    manager = CollectionManager(args.dir, index_threads=1, fde_threads=1)
    collection = manager.get("filters")
    collection.flush()
    for query in queries[:5]:  # warm-up: kernels, caches
        collection.search(query, 10)
        collection.search(query, 10, where=Condition("bucket", "lt", 10))

    all_ids = np.arange(args.docs)
    truth = subset_truth(corpus, queries, all_ids)
    times, results = timed(lambda q: collection.search(q, 10), queries)
    rows = {"unfiltered": {**summary(times), "recall_at_10": _recall(results, truth)}}
    for name, where, matches in FILTERS:
        resident, _ = timed(lambda q, w=where: collection.allowed(None, w), queries)
        sql, _ = timed(lambda q, w=where: collection.matching(w), queries)
        times, results = timed(lambda q, w=where: collection.search(q, 10, where=w), queries)
        selected = all_ids[[matches(int(i)) for i in all_ids]]
        truth = subset_truth(corpus, queries, selected)
        rows[name] = {
            **summary(times),
            "filter_evaluation_p50_ms": summary(resident)["p50_ms"],
            "sql_evaluation_p50_ms": summary(sql)["p50_ms"],
            "recall_at_10": _recall(results, truth),
            "matching_documents": len(selected),
        }
        print(name, rows[name], flush=True)
    manager.close()
    result["searches"] = rows
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


def _recall(results: list, truth: list[set[str]]) -> float:
    return round(
        float(
            np.mean(
                [len({h.id for h in hits} & best) / 10 for hits, best in zip(results, truth, strict=True)]
            )
        ),
        3,
    )


if __name__ == "__main__":
    main()
