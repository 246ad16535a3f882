"""FDE encoding speed: mvr's kernel beside fastembed's Muvera and beside the machine's GEMM roofline.

For each (R, k_sim, d_proj) × token dim, on the same random unit-norm inputs (100 tokens a document,
32 a query), in one run:
  * mvr docs/s (batch API) and queries/s;
  * fastembed's ``Muvera.process_document`` / ``process_query`` (one set per call, its only API);
  * a roofline: the float32 GEMM rate measured now on this machine (numpy matmul of the same shape as
    our projection), turned into docs/s for the FLOPs every FDE must spend — the hyperplane and
    projection products, 2·n_tokens·dim·R·(k_sim + d_proj) per document. Bucketing, averaging and
    filling are extra work the roofline does not count, so 100% is not reachable.

    python bench/fde.py [--docs 2000] [--peer-docs 100] [--out bench/results/fde.json]
Needs fastembed (bash scripts/install.sh bench); without it the peer column is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "client")]

from mvr.server.fde import FDE, FDEConfig  # noqa: E402

CONFIGS = [(20, 4, 8), (20, 5, 8), (20, 5, 16)]
DIMS = [128, 384]


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def best_of(repeats: int, fn) -> float:
    """Shortest wall time of several runs: the least disturbed by the other core's load."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def gemm_rate(rows: int, dim: int, cols: int) -> float:
    rng = np.random.default_rng(1)
    a, b = (
        rng.standard_normal((rows, dim), dtype=np.float32),
        rng.standard_normal((dim, cols), dtype=np.float32),
    )
    a @ b
    seconds = best_of(5, lambda: a @ b)
    return 2 * rows * dim * cols / seconds


def run(args: argparse.Namespace) -> dict:
    try:
        from fastembed.postprocess.muvera import Muvera
    except ImportError:
        Muvera = None
        print("fastembed not installed: peer column skipped (bash scripts/install.sh bench)")
    rng = np.random.default_rng(0)
    rows = []
    for dim in DIMS:
        doc_tokens = unit(rng, args.docs * 100, dim)
        doc_offsets = np.arange(0, args.docs * 100 + 1, 100, dtype=np.int64)
        query_tokens = unit(rng, args.docs * 32, dim)
        query_offsets = np.arange(0, args.docs * 32 + 1, 32, dtype=np.int64)
        for reps, k_sim, d_proj in CONFIGS:
            fde = FDE(FDEConfig(reps, k_sim, d_proj), dim)
            fde.encode_documents(doc_tokens[:1000], doc_offsets[:11])  # JIT warm-up
            doc_s = best_of(3, lambda: fde.encode_documents(doc_tokens, doc_offsets))  # noqa: B023
            query_s = best_of(3, lambda: fde.encode_queries(query_tokens, query_offsets))  # noqa: B023
            cols = reps * (k_sim + d_proj)
            flops_per_doc = 2 * 100 * dim * cols
            rate = gemm_rate(100 * args.docs, dim, cols)
            row = {
                "dim": dim,
                "repetitions": reps,
                "k_sim": k_sim,
                "d_proj": d_proj,
                "fde_dim": fde.output_dim,
                "mvr_docs_per_s": args.docs / doc_s,
                "mvr_queries_per_s": args.docs / query_s,
                "gemm_gflops": rate / 1e9,
                "roofline_docs_per_s": rate / flops_per_doc,
            }
            row["fraction_of_roofline"] = row["mvr_docs_per_s"] / row["roofline_docs_per_s"]
            if Muvera is not None:
                peer = Muvera(dim=dim, k_sim=k_sim, dim_proj=d_proj, r_reps=reps)
                docs = [doc_tokens[i * 100 : (i + 1) * 100] for i in range(args.peer_docs)]
                queries = [query_tokens[i * 32 : (i + 1) * 32] for i in range(args.peer_docs)]
                peer.process_document(docs[0])
                peer_doc_s = best_of(2, lambda: [peer.process_document(d) for d in docs])  # noqa: B023
                peer_query_s = best_of(2, lambda: [peer.process_query(q) for q in queries])  # noqa: B023
                row["fastembed_docs_per_s"] = args.peer_docs / peer_doc_s
                row["fastembed_queries_per_s"] = args.peer_docs / peer_query_s
                row["speedup_docs_vs_fastembed"] = row["mvr_docs_per_s"] / row["fastembed_docs_per_s"]
                row["speedup_queries_vs_fastembed"] = (
                    row["mvr_queries_per_s"] / row["fastembed_queries_per_s"]
                )
            rows.append(row)
            print(
                f"dim {dim:>3} R={reps} k={k_sim} d={d_proj:>2} ({fde.output_dim:>5}-d): "
                f"mvr {row['mvr_docs_per_s']:>8.0f} docs/s {row['mvr_queries_per_s']:>8.0f} q/s | "
                f"roofline {row['roofline_docs_per_s']:>8.0f} docs/s ({row['fraction_of_roofline']:.0%}) | "
                + (
                    f"fastembed {row['fastembed_docs_per_s']:>6.0f} docs/s "
                    f"→ ×{row['speedup_docs_vs_fastembed']:.0f}, "
                    f"queries ×{row['speedup_queries_vs_fastembed']:.0f}"
                    if "fastembed_docs_per_s" in row
                    else ""
                )
            )
    return {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "numpy": np.__version__},
        "tokens_per_document": 100,
        "tokens_per_query": 32,
        "documents": args.docs,
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=2000, help="documents (and queries) per mvr measurement")
    parser.add_argument("--peer-docs", type=int, default=100, help="documents per fastembed measurement")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "fde.json"))
    args = parser.parse_args()
    results = run(args)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
