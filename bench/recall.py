"""First-stage + rerank quality and speed: recall@10 against exact Chamfer, and queries/s.

Builds a collection per FDE configuration (the real engine: store, FDE, HNSW, rerank) over a seeded
synthetic corpus (bench/synthetic.py), computes the exact Chamfer top-10 of every query by brute force,
then sweeps candidates C × HNSW ef and records recall@10 and single-thread queries/s. Writes JSON and a
Pareto plot (recall vs queries/s).

    python bench/recall.py [--docs 20000] [--queries 100] [--configs 20,3,16 20,4,8 ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "client"), str(ROOT / "bench")]

from mvr.server.app import limit_blas_threads  # noqa: E402
from mvr.server.fde import available_cpus  # noqa: E402
from mvr.server.manager import CollectionManager  # noqa: E402
from mvr.server.rerank import maxsim  # noqa: E402
from mvr.server.values import DocumentInput  # noqa: E402
from synthetic import make_corpus, make_queries  # noqa: E402


def ground_truth(corpus, queries: list[np.ndarray], k: int = 10) -> list[set[int]]:
    truth = []
    for query in queries:
        scores = maxsim(query, corpus.tokens, corpus.offsets).scores
        truth.append(set(np.argsort(-scores)[:k].tolist()))
    return truth


def build(manager: CollectionManager, name: str, corpus, fde: dict, threads: int) -> tuple[float, float]:
    manager.create(name, model=None, dim=corpus.tokens.shape[1], fde=fde)
    collection = manager.get(name)
    started = time.perf_counter()
    for start in range(0, corpus.n_docs, 500):
        stop = min(start + 500, corpus.n_docs)
        collection.upsert([DocumentInput(str(i), vectors=corpus.document(i)) for i in range(start, stop)])
    acknowledged = time.perf_counter() - started
    collection.flush()
    return acknowledged, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--configs", nargs="+", default=["20,3,16", "20,4,8", "20,4,16", "20,5,16"])
    parser.add_argument("--candidates", nargs="+", type=int, default=[100, 200, 500])
    parser.add_argument("--ef-factors", nargs="+", type=float, default=[1.0, 2.0])
    parser.add_argument("--index-threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "recall.json"))
    args = parser.parse_args()

    corpus, centroids = make_corpus(args.docs)
    queries = make_queries(corpus, centroids, args.queries)
    started = time.perf_counter()
    truth = ground_truth(corpus, queries)  # multi-threaded BLAS for the brute force
    limit_blas_threads()  # then the server's setting for everything measured
    print(
        f"{args.docs} docs, {len(corpus.tokens)} tokens; "
        f"ground truth in {time.perf_counter() - started:.1f} s"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        manager = CollectionManager(
            Path(tmp), index_threads=args.index_threads, fde_threads=available_cpus(), save_interval_s=3600
        )
        for spec in args.configs:
            reps, k_sim, d_proj = (int(x) for x in spec.split(","))
            name = f"r{reps}-k{k_sim}-d{d_proj}"
            ack_s, indexed_s = build(
                manager,
                name,
                corpus,
                {"repetitions": reps, "k_sim": k_sim, "d_proj": d_proj},
                args.index_threads,
            )
            collection = manager.get(name)
            stats = collection.stats()
            for candidates in args.candidates:
                for factor in args.ef_factors:
                    ef = int(candidates * factor)
                    collection.search(queries[0], 10, candidates=candidates, ef=ef)
                    found, started = [], time.perf_counter()
                    for query in queries:
                        found.append(
                            {int(h.id) for h in collection.search(query, 10, candidates=candidates, ef=ef)}
                        )
                    seconds = time.perf_counter() - started
                    recall = float(np.mean([len(f & t) / 10 for f, t in zip(found, truth, strict=True)]))
                    row = {
                        "repetitions": reps,
                        "k_sim": k_sim,
                        "d_proj": d_proj,
                        "fde_dim": collection.fde.output_dim,
                        "candidates": candidates,
                        "ef": ef,
                        "recall@10": recall,
                        "queries_per_s": len(queries) / seconds,
                        "ingest_ack_docs_per_s": args.docs / ack_s,
                        "seconds_until_indexed": indexed_s,
                        "hnsw_bytes_per_doc": stats.bytes_in_memory["hnsw"] / args.docs,
                    }
                    rows.append(row)
                    print(
                        f"{name:>12} C={candidates:<4} ef={ef:<5} recall@10={recall:.3f} "
                        f"{row['queries_per_s']:7.1f} q/s"
                    )
            manager.delete(name)
        manager.close()
    results = {
        "docs": args.docs,
        "queries": args.queries,
        "tokens": len(corpus.tokens),
        "machine": platform.platform(),
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    plot(rows, Path(args.out).with_suffix(".png"), args.docs)
    print(f"wrote {args.out}")


def plot(rows: list[dict], path: Path, docs: int) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (bash scripts/install.sh bench)")
        return
    figure, axes = plt.subplots(figsize=(8, 5))
    for config in sorted({(r["repetitions"], r["k_sim"], r["d_proj"]) for r in rows}):
        points = sorted(
            (r["queries_per_s"], r["recall@10"])
            for r in rows
            if (r["repetitions"], r["k_sim"], r["d_proj"]) == config
        )
        axes.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            "o-",
            label=f"R={config[0]} k={config[1]} d={config[2]}",
        )
    axes.set_xlabel("queries/s (1 thread, rerank included)")
    axes.set_ylabel("recall@10 vs exact Chamfer")
    axes.set_title(f"mvr FDE → HNSW → MaxSim, {docs:,} synthetic documents (dim 128)")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
