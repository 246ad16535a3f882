"""What the largest requests the default limits allow cost a real server in memory (RSS).

Starts `mvr serve --model none`, fills a collection with documents at the token limit
(``max_document_tokens``, 8,192 tokens of 128 dims each), then sends, one at a time, the searches the
limits still allow at their largest: a query at ``max_query_tokens`` (1,024 tokens), ``top_k`` and
``candidates`` at their maxima, with and without ``explain`` (which returns every query token's best
match for each of the top_k hits). Reports the server's resident memory (VmRSS) and its peak (VmHWM)
after loading and after each request, and how long each took; prints a table and writes JSON.

    python bench/worst_request.py [--docs 40] [--out bench/results/worst_request.json]

The exact stage's similarity tile is bounded by construction (whole documents of at most 8,192 tokens
× at most 1,024 query tokens, float32: 32 MiB); what grows beyond it is per candidate (the (query
tokens × candidates) maxima, and with explain their argmax) and per hit (the explanation).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "client"), str(ROOT / "bench")]

from mvr.client import Client, Document  # noqa: E402
from mvr.server.limits import Limits  # noqa: E402
from serverproc import memory_kib, server_process  # noqa: E402

DIM = 128


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=40, help="documents of max_document_tokens tokens each")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "worst_request.json")
    args = parser.parse_args()
    limits = Limits()
    rng = np.random.default_rng(0)
    rows = []
    with server_process("--model", "none") as (target, server), Client(target, timeout=600) as mvr:
        mvr.wait_until_serving(120)
        started = memory_kib(server.pid)
        mvr.create_collection("worst", model=None, dim=DIM)
        for start in range(0, args.docs, 4):  # 4 × 8,192 × 128 float32 = 16 MiB a message
            count = min(4, args.docs - start)
            mvr.upsert(
                "worst",
                [
                    Document(f"d{start + i}", vectors=unit(rng, limits.max_document_tokens))
                    for i in range(count)
                ],
            )
        time.sleep(5)  # the indexer inserts the graph entries
        loaded = memory_kib(server.pid)
        print(
            f"server RSS: started {started['VmRSS'] / 1024:.0f} MiB, loaded {loaded['VmRSS'] / 1024:.0f} MiB"
        )
        query = unit(rng, limits.max_query_tokens)
        requests = [
            ("query at max_query_tokens, defaults", {"top_k": 10}),
            (
                "… top_k and candidates at their maxima",
                {"top_k": limits.max_top_k, "candidates": limits.max_candidates},
            ),
            (
                "… and explain",
                {"top_k": limits.max_top_k, "candidates": limits.max_candidates, "explain": True},
            ),
        ]
        for name, knobs in requests:
            before = memory_kib(server.pid)
            clock = time.perf_counter()
            hits = mvr.search("worst", query, **knobs)
            seconds = time.perf_counter() - clock
            after = memory_kib(server.pid)
            row = {
                "request": name,
                "knobs": knobs,
                "hits": len(hits),
                "seconds": round(seconds, 3),
                "rss_before_mib": round(before["VmRSS"] / 1024, 1),
                "rss_after_mib": round(after["VmRSS"] / 1024, 1),
                "peak_mib": round(after["VmHWM"] / 1024, 1),
                "peak_over_loaded_mib": round((after["VmHWM"] - loaded["VmRSS"]) / 1024, 1),
            }
            rows.append(row)
            print(row, flush=True)
    result = {
        "command": " ".join(["python", *sys.argv]),
        "machine": {"cpus": platform.machine(), "python": platform.python_version()},
        "docs": args.docs,
        "document_tokens": limits.max_document_tokens,
        "query_tokens": limits.max_query_tokens,
        "rss_started_mib": round(started["VmRSS"] / 1024, 1),
        "rss_loaded_mib": round(loaded["VmRSS"] / 1024, 1),
        "requests": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
