"""Search quality and speed of the engine: recall@10 against exact Chamfer, and single-thread queries/s,
over a sweep of the search knobs.

Builds a collection per FDE configuration (the real engine in this process: store, FDE, HNSW, codec,
inverted lists, cascade) over a seeded synthetic data set (bench/synthetic.py), waits for ``flush()``
(indexed, codec trained once the collection holds ``train_after_tokens`` tokens, all coded), then sweeps
``candidates`` × ``probe`` × ``centroid_candidates`` (× HNSW ``ef`` as a factor of candidates) and records
recall@10 against the exact Chamfer top-10 and queries/s on one thread; plus one row at the server's
defaults. probe and centroid_candidates only act on coded collections: without codes they are not swept.

Data sets: ``topics`` (default; topic-clustered tokens, paraphrasing queries, truth cached in
bench/.cache by topic_dataset) or ``iid`` (i.i.d. tokens around topic centroids, truth by brute force).
Writes JSON and a plot of recall against queries/s beside it (if matplotlib is importable).

    python bench/recall.py [--data topics|iid] [--docs 20000] [--queries 200] \\
        [--candidates 64 128 300] [--probe 1 2 4] [--centroid-candidates 250 1000 4000] [--ef-factors 0] \\
        [--configs default 20,3,16,0 ...] [--residual-bits 4] [--train-after-tokens 0] [--keep-vectors]
    python bench/recall.py --data iid --docs 100000 --configs 20,3,16,0 --candidates 100 200 300 500 \\
        --ef-factors 2 --residual-bits 0   # the setup of the README's recall_100k.json (FDE + exact rerank)
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "client"), str(ROOT / "bench")]

from load import dataset, describe  # noqa: E402
from mvr.server import search as cascade  # noqa: E402
from mvr.server.app import limit_blas_threads  # noqa: E402
from mvr.server.collection import Collection  # noqa: E402
from mvr.server.fde import available_cpus  # noqa: E402
from mvr.server.manager import CollectionManager  # noqa: E402
from synthetic import upsert_in_batches  # noqa: E402

Knobs = tuple[int | None, int | None, int | None, int | None]  # candidates, ef, probe, centroid_candidates


def fde_overrides(spec: str) -> dict | None:
    """'default' → None (the server's FDE); 'R,k_sim,d_proj' → those three (the rest, final_dim
    included, the server's defaults); 'R,k_sim,d_proj,F' → also final_dim F (0: no projection)."""
    if spec == "default":
        return None
    values = [int(x) for x in spec.split(",")]
    overrides: dict[str, Any] = dict(zip(("repetitions", "k_sim", "d_proj"), values[:3], strict=True))
    if len(values) == 4:
        overrides["final_dim"] = values[3] or None
    return overrides


def token_storage(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {"keep_vectors": args.keep_vectors}
    if args.residual_bits is not None:
        overrides["residual_bits"] = args.residual_bits
    if args.train_after_tokens:
        overrides["train_after_tokens"] = args.train_after_tokens
    return overrides


def build(manager: CollectionManager, name: str, corpus: Any, spec: str, args: argparse.Namespace) -> dict:
    """Creates and fills the collection; returns acknowledged docs/s and seconds until flush() returned."""
    dim = corpus.tokens.shape[1]
    manager.create(name, model=None, dim=dim, fde=fde_overrides(spec), tokens=token_storage(args))
    collection = manager.get(name)
    started = time.perf_counter()
    upsert_in_batches(collection, corpus)
    acknowledged = time.perf_counter() - started
    collection.flush()
    return {
        "ingest_ack_docs_per_s": corpus.n_docs / acknowledged,
        "seconds_until_flushed": time.perf_counter() - started,
    }


def grid(args: argparse.Namespace, coded: bool) -> list[Knobs]:
    """Every combination of the swept knobs, and the all-defaults point first."""
    probes = args.probe if coded else [None]
    centroid_candidates = args.centroid_candidates if coded else [None]
    points: list[Knobs] = [(None, None, None, None)]
    for c, factor, p, cc in itertools.product(args.candidates, args.ef_factors, probes, centroid_candidates):
        points.append((c, int(c * factor) if factor else None, p, cc))
    return points


def measure(collection: Collection, queries: list[np.ndarray], truth: np.ndarray, knobs: Knobs) -> dict:
    """recall@10 and queries/s (one thread) of one knob setting, after one warm-up query."""
    candidates, ef, probe, centroid_candidates = knobs
    params = {"candidates": candidates, "ef": ef, "probe": probe, "centroid_candidates": centroid_candidates}
    collection.search(queries[0], 10, **params)
    found, precisions = [], Counter()
    started = time.perf_counter()
    for query in queries:
        hits = collection.search(query, 10, **params)
        found.append({int(h.id) for h in hits})
        precisions.update(h.precision for h in hits)
    seconds = time.perf_counter() - started
    recall = float(np.mean([len(f & set(t.tolist())) / 10 for f, t in zip(found, truth, strict=True)]))
    return {
        **params,
        "recall@10": recall,
        "queries_per_s": len(queries) / seconds,
        "ms_per_query": 1000 * seconds / len(queries),
        "score_precision": dict(precisions),
    }


def print_row(data: str, config: str, row: dict) -> None:
    knobs = " ".join(
        f"{short}={row[key] if row[key] is not None else 'dflt':<5}"
        for short, key in (
            ("C", "candidates"),
            ("ef", "ef"),
            ("probe", "probe"),
            ("cc", "centroid_candidates"),
        )
    )
    print(
        f"{data:>6} {config:>9} {knobs} recall@10={row['recall@10']:.3f} {row['queries_per_s']:7.1f} q/s",
        flush=True,
    )


def run_config(
    manager: CollectionManager,
    spec: str,
    corpus: Any,
    queries: list,
    truth: np.ndarray,
    args: argparse.Namespace,
) -> list[dict]:
    name = "c-" + spec.replace(",", "-")
    built = build(manager, name, corpus, spec, args)
    collection = manager.get(name)
    stats = collection.stats()
    coded = stats.coded > 0
    rate, flushed = built["ingest_ack_docs_per_s"], built["seconds_until_flushed"]
    print(
        f"{args.data} / FDE {spec} ({collection.fde.output_dim} dims): {rate:,.0f} docs/s acknowledged, "
        f"flushed after {flushed:.1f} s, {stats.coded:,} documents coded ({stats.centroids} centroids)"
        + ("" if coded else ": no codes, probe and cc not swept"),
        flush=True,
    )
    rows = []
    for knobs in grid(args, coded):
        row = {
            "data": args.data,
            "config": spec,
            "fde": collection.config.fde.to_dict(),
            "fde_dim": collection.fde.output_dim,
            "coded_documents": stats.coded,
            "centroids": stats.centroids,
            **measure(collection, queries, truth, knobs),
            **built,
            "bytes_per_doc_in_memory": sum(stats.bytes_in_memory.values()) / corpus.n_docs,
            "bytes_per_doc_on_disk": sum(stats.bytes_on_disk.values()) / corpus.n_docs,
        }
        print_row(args.data, spec, row)
        rows.append(row)
    manager.delete(name)
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", choices=("topics", "iid"), default="topics")
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["default"],
        help="'default', R,k_sim,d_proj or R,k_sim,d_proj,final_dim (0: none)",
    )
    parser.add_argument("--candidates", nargs="+", type=int, default=[64, 128, 300])
    parser.add_argument("--probe", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--centroid-candidates", nargs="+", type=int, default=[250, 1000, 4000])
    parser.add_argument(
        "--ef-factors", nargs="+", type=float, default=[0.0], help="ef = factor·C; 0: default"
    )
    parser.add_argument("--residual-bits", type=int, default=None, help="0: no codes; default: the server's")
    parser.add_argument("--train-after-tokens", type=int, default=0, help="0: the server's default")
    parser.add_argument("--keep-vectors", action="store_true", help="final scores over the float vectors")
    parser.add_argument("--index-threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "recall.json"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    corpus, queries, truth = dataset(args.data, args.docs, args.queries)  # multi-threaded BLAS
    limit_blas_threads()  # then the server's setting for everything measured
    print(
        f"data set {args.data!r}: {corpus.n_docs:,} docs, {len(corpus.tokens):,} tokens, "
        f"{len(queries)} queries; exact Chamfer truth ready in {time.perf_counter() - started:.1f} s"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        manager = CollectionManager(
            Path(tmp), index_threads=args.index_threads, fde_threads=available_cpus(), save_interval_s=3600
        )
        for spec in args.configs:
            rows += run_config(manager, spec, corpus, queries, truth, args)
        manager.close()
    results = {
        "benchmark": "bench/recall.py",
        "data": {"name": args.data, "description": describe(args.data), "docs": corpus.n_docs},
        "tokens": len(corpus.tokens),
        "queries": len(queries),
        "truth": "exact Chamfer (MaxSim) top-10 by brute force",
        "token_storage": token_storage(args),
        "server_defaults": {
            "candidates": cascade.DEFAULT_CANDIDATES,
            # from cascade.FINE_CENTROIDS centroids on
            "candidates_fine_centroids": cascade.DEFAULT_CANDIDATES_FINE,
            "candidates_uncoded": cascade.DEFAULT_CANDIDATES_UNCODED,
            "per_centroids": cascade.DEFAULTS_AT_CENTROIDS,  # probe and centroid_candidates scale with K
            "probe": cascade.DEFAULT_PROBE,
            "centroid_candidates": cascade.DEFAULT_CENTROID_CANDIDATES,
        },
        "machine": platform.platform(),
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    plot(rows, Path(args.out).with_suffix(".png"), f"{args.data}, {corpus.n_docs:,} documents")
    print(f"wrote {args.out}")


def plot(rows: list[dict], path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not importable: no plot (bash scripts/install.sh bench installs it)")
        return
    figure, axes = plt.subplots(figsize=(8, 5))
    for (config, probe), group in itertools.groupby(
        sorted(rows, key=lambda r: (r["config"], r["probe"] or 0)), key=lambda r: (r["config"], r["probe"])
    ):
        points = [(r["queries_per_s"], r["recall@10"]) for r in group]
        label = f"FDE {config}" + (f", probe {probe}" if probe else "")
        axes.scatter([p[0] for p in points], [p[1] for p in points], label=label, s=24)
    front, best = [], -1.0
    for r in sorted(rows, key=lambda r: -r["queries_per_s"]):
        if r["recall@10"] > best:
            front.append((r["queries_per_s"], r["recall@10"]))
            best = r["recall@10"]
    axes.plot([p[0] for p in front], [p[1] for p in front], "k--", lw=1, label="Pareto front")
    axes.set_xlabel("queries/s (1 thread, every stage included)")
    axes.set_ylabel("recall@10 vs exact Chamfer")
    axes.set_title(f"mvr search knobs: {title} (dim 128)")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
