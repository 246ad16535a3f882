"""FDE encoding speed: mvr's kernel beside fastembed's Muvera and beside the machine's GEMM roofline.

For each (R, k_sim, d_proj) × token dim, on the same random unit-norm inputs (100 tokens a document,
32 a query), in one run, the measurements interleaved round by round (the best round of each counts,
so a busy second core disturbs all columns alike):
  * mvr docs/s and queries/s through the batch API (``encode_documents`` / ``encode_queries``), into a
    fresh array (as a caller gets by default; compared with the peer) and into a preallocated one
    (``out=``; compared with the roofline, whose sgemm also writes into a preallocated array), and
    the latency of one query through ``encode_query``, with BLAS on one thread per call as the server
    runs it (``limit_blas_threads``; the FDE then shares a batch's chunks among its threads);
  * fastembed's ``Muvera.process_document`` / ``process_query`` (one set per call, its only API),
    constructed directly (no model download), its better time of BLAS on one thread and on all;
  * a roofline: the float32 GEMM rate measured now on this machine — numpy matmul into a preallocated
    output, BLAS on all its threads (its best: one large sgemm over every core), same shape as the
    FDE's product (all tokens × dim @ dim × R·(k_sim + d_proj)) — turned into docs/s for the FLOPs
    every FDE must spend: the hyperplane and projection products, 2 · 100 · dim · R · (k_sim + d_proj)
    per document. Bucketing, scatter, averaging, filling, the sgemm padding and writing the output
    are extra work the roofline does not count, so 100% is out of reach; the fraction says how close
    mvr is to "nothing but the unavoidable matmul".

    python bench/fde.py [--docs 2000] [--peer-docs 100] [--rounds 3] [--out bench/results/fde.json]
Needs fastembed (pip install -c constraints.txt fastembed); without it the peer columns are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np
from threadpoolctl import ThreadpoolController

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "client")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the peer is built from its class: nothing to download

from mvr.server.fde import FDE, FDEConfig, available_cpus  # noqa: E402

CONFIGS = [(20, 4, 8), (20, 5, 8), (20, 5, 16)]
DOC_TOKENS = 100
QUERY_TOKENS = 32


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


BLAS = ThreadpoolController()
BLAS_SETTLE_S = 0.3
BLAS_DEFAULT_THREADS = max(pool["num_threads"] for pool in BLAS.info() if pool["user_api"] == "blas")


def interleaved_best(methods: dict[str, tuple[Callable[[], object], int]], rounds: int) -> dict[str, float]:
    """Shortest wall time of each method over ``rounds`` rounds, methods alternating within a round
    (fewest BLAS threads first); each runs with the BLAS thread count given beside it, set outside
    the timed region. After a multi-threaded method a pause comes first: OpenBLAS's idle workers spin
    for a while after a call (about 2^28 cycles) and would take a core from the next method."""
    best = dict.fromkeys(methods, float("inf"))
    order = sorted(methods, key=lambda name: methods[name][1])
    previous_threads = 1
    for _ in range(rounds):
        for name in order:
            method, blas_threads = methods[name]
            with BLAS.limit(limits=blas_threads, user_api="blas"):
                if blas_threads < previous_threads:
                    time.sleep(BLAS_SETTLE_S)
                previous_threads = blas_threads
                started = time.perf_counter()
                method()
                best[name] = min(best[name], time.perf_counter() - started)
    return best


def machine_info() -> dict:
    info = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "fde_threads": available_cpus(),
        "blas_threads_default": BLAS_DEFAULT_THREADS,
        "load_average_start": os.getloadavg(),
    }
    try:
        cpu = Path("/proc/cpuinfo").read_text()
        info["cpu_model"] = next(
            line.split(":", 1)[1].strip() for line in cpu.splitlines() if "model name" in line
        )
    except (OSError, StopIteration):
        info["cpu_model"] = platform.processor()
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [
            {k: pool.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
            for pool in threadpool_info()
            if pool.get("user_api") == "blas"
        ]
    except ImportError:
        pass
    return info


def measure(args: argparse.Namespace, dim: int, config: tuple[int, int, int], peer_class) -> dict:
    reps, k_sim, d_proj = config
    rng = np.random.default_rng(dim * 1000 + k_sim * 100 + d_proj)
    doc_tokens = unit(rng, args.docs * DOC_TOKENS, dim)
    doc_offsets = np.arange(0, len(doc_tokens) + 1, DOC_TOKENS, dtype=np.int64)
    query_tokens = unit(rng, args.docs * QUERY_TOKENS, dim)
    query_offsets = np.arange(0, len(query_tokens) + 1, QUERY_TOKENS, dtype=np.int64)
    fde = FDE(FDEConfig(reps, k_sim, d_proj), dim, threads=available_cpus())
    weights = np.ascontiguousarray(rng.standard_normal((dim, reps * (k_sim + d_proj)), dtype=np.float32))
    gemm_out = np.empty((len(doc_tokens), weights.shape[1]), np.float32)
    fde_out = np.empty((args.docs, fde.output_dim), np.float32)  # like gemm_out: no first-touch faults
    single_queries = [query_tokens[i * QUERY_TOKENS : (i + 1) * QUERY_TOKENS] for i in range(args.peer_docs)]

    all_blas = BLAS_DEFAULT_THREADS
    methods: dict[str, tuple[Callable[[], object], int]] = {
        "mvr_docs": (lambda: fde.encode_documents(doc_tokens, doc_offsets), 1),
        "mvr_docs_into": (lambda: fde.encode_documents(doc_tokens, doc_offsets, out=fde_out), 1),
        "gemm": (lambda: np.matmul(doc_tokens, weights, out=gemm_out), all_blas),
        "mvr_queries": (lambda: fde.encode_queries(query_tokens, query_offsets), 1),
        "mvr_single_queries": (lambda: [fde.encode_query(q) for q in single_queries], 1),
    }
    if peer_class is not None:  # the peer gets the better of one BLAS thread and all of them
        peer = peer_class(dim=dim, k_sim=k_sim, dim_proj=d_proj, r_reps=reps)
        peer_docs = [doc_tokens[i * DOC_TOKENS : (i + 1) * DOC_TOKENS] for i in range(args.peer_docs)]
        for blas_threads in sorted({1, all_blas}):
            methods[f"peer_docs_{blas_threads}"] = (
                lambda: [peer.process_document(d) for d in peer_docs],
                blas_threads,
            )
            methods[f"peer_queries_{blas_threads}"] = (
                lambda: [peer.process_query(q) for q in single_queries],
                blas_threads,
            )
    interleaved_best(methods, 1)  # warm-up: JIT, BLAS buffers, page faults
    seconds = interleaved_best(methods, args.rounds)
    for kind in ("peer_docs", "peer_queries"):
        timed = [value for name, value in seconds.items() if name.startswith(kind + "_")]
        if timed:
            seconds[kind] = min(timed)

    flops_per_doc = 2 * DOC_TOKENS * dim * reps * (k_sim + d_proj)
    gemm_flops = 2 * len(doc_tokens) * dim * weights.shape[1]
    row = {
        "dim": dim,
        "repetitions": reps,
        "k_sim": k_sim,
        "d_proj": d_proj,
        "fde_dim": fde.output_dim,
        "mvr_docs_per_s": args.docs / seconds["mvr_docs"],
        "mvr_docs_into_preallocated_per_s": args.docs / seconds["mvr_docs_into"],
        "mvr_queries_per_s": args.docs / seconds["mvr_queries"],
        "mvr_single_query_us": 1e6 * seconds["mvr_single_queries"] / args.peer_docs,
        "gemm_gflops": gemm_flops / seconds["gemm"] / 1e9,
        "roofline_flops_per_doc": flops_per_doc,
    }
    row["roofline_docs_per_s"] = gemm_flops / seconds["gemm"] / flops_per_doc
    # Like for like: the roofline's sgemm writes into a preallocated array, so does mvr here.
    row["fraction_of_roofline"] = row["mvr_docs_into_preallocated_per_s"] / row["roofline_docs_per_s"]
    row["fraction_of_roofline_fresh_output"] = row["mvr_docs_per_s"] / row["roofline_docs_per_s"]
    if peer_class is not None:
        row["fastembed_docs_per_s"] = args.peer_docs / seconds["peer_docs"]
        row["fastembed_queries_per_s"] = args.peer_docs / seconds["peer_queries"]
        row["speedup_docs_vs_fastembed"] = row["mvr_docs_per_s"] / row["fastembed_docs_per_s"]
        row["speedup_docs_into_preallocated_vs_fastembed"] = (
            row["mvr_docs_into_preallocated_per_s"] / row["fastembed_docs_per_s"]
        )
        row["roofline_vs_fastembed"] = row["roofline_docs_per_s"] / row["fastembed_docs_per_s"]
        row["speedup_queries_vs_fastembed"] = row["mvr_queries_per_s"] / row["fastembed_queries_per_s"]
        row["speedup_single_query_vs_fastembed"] = (
            row["fastembed_queries_per_s"] ** -1 * 1e6 / row["mvr_single_query_us"]
        )
    return row


def describe(row: dict) -> str:
    r = row
    text = (
        f"dim {r['dim']:>3} ({r['repetitions']},{r['k_sim']},{r['d_proj']:>2}) {r['fde_dim']:>5}-d | "
        f"mvr {r['mvr_docs_per_s']:>7.0f} docs/s {r['mvr_queries_per_s']:>7.0f} q/s "
        f"{r['mvr_single_query_us']:>5.0f} µs/q | roofline {r['roofline_docs_per_s']:>7.0f} docs/s "
        f"({r['gemm_gflops']:.0f} GFLOP/s) → {r['fraction_of_roofline']:.0%} "
        f"({r['fraction_of_roofline_fresh_output']:.0%} into a fresh array)"
    )
    if "fastembed_docs_per_s" in r:
        text += (
            f" | fastembed {r['fastembed_docs_per_s']:>4.0f} docs/s {r['fastembed_queries_per_s']:>4.0f} q/s"
            f" → docs ×{r['speedup_docs_vs_fastembed']:.0f}"
            f" (×{r['speedup_docs_into_preallocated_vs_fastembed']:.0f} preallocated;"
            f" roofline ×{r['roofline_vs_fastembed']:.0f}),"
            f" queries ×{r['speedup_queries_vs_fastembed']:.0f}"
            f" (one by one ×{r['speedup_single_query_vs_fastembed']:.0f})"
        )
    return text


def run(args: argparse.Namespace) -> dict:
    try:
        from fastembed.postprocess.muvera import Muvera
    except ImportError:
        Muvera = None
        print("fastembed not installed: peer columns skipped (pip install -c constraints.txt fastembed)")
    info = machine_info()
    rows = []
    for dim in args.dims:
        for config in CONFIGS:
            row = measure(args, dim, config, Muvera)
            print(describe(row), flush=True)
            rows.append(row)
    info["load_average_end"] = os.getloadavg()
    if Muvera is not None:
        import fastembed

        info["fastembed"] = fastembed.__version__
    summary = {
        "min_fraction_of_roofline": min(r["fraction_of_roofline"] for r in rows),
        "min_fraction_of_roofline_fresh_output": min(r["fraction_of_roofline_fresh_output"] for r in rows),
        "min_speedup_docs_vs_fastembed": min(
            (r.get("speedup_docs_vs_fastembed", 0) for r in rows), default=0
        ),
    }
    print(
        f"worst row: {summary['min_fraction_of_roofline']:.0%} of the roofline, "
        f"×{summary['min_speedup_docs_vs_fastembed']:.0f} fastembed's docs/s"
    )
    return {
        "machine": info,
        "tokens_per_document": DOC_TOKENS,
        "tokens_per_query": QUERY_TOKENS,
        "documents": args.docs,
        "peer_documents": args.peer_docs,
        "rounds": args.rounds,
        "roofline_counts": "2·tokens·dim·R·(k_sim+d_proj) FLOPs per document (hyperplane + projection "
        "products) at the float32 GEMM rate numpy reaches now on the same shape",
        "rows": rows,
        "summary": summary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=2000, help="documents (and queries) per mvr measurement")
    parser.add_argument(
        "--peer-docs", type=int, default=100, help="documents (and queries) per fastembed run"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best of each counts")
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 384], help="token dims")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "fde.json"))
    args = parser.parse_args()
    results = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
