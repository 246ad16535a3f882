"""Search throughput and latency through the server under concurrent load, text queries on the
default model: shows what the query batcher (one forward pass for concurrent queries) buys.

Starts `mvr serve` (default model) on a free loopback port, indexes the papers corpus, then runs
closed-loop clients (1, 4, 16 concurrent) sending title queries, and reports queries/s and p50/p95
latency. Run once with the batcher's default window and once with batching off (max batch 1) by
setting MVR_QUERY_MAX_BATCH=1 in the server's environment, side by side.

    python bench/search_load.py [--seconds 10] [--out bench/results/search_load.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "client"), str(ROOT / "bench")]

from mvr.client import Client, Document  # noqa: E402
from serverproc import running_server  # noqa: E402

PAPERS = ROOT.parent / "shared" / "data" / "papers-dev.jsonl"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load(target: str, titles: list[str], clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(offset: int) -> None:
        with Client(target, timeout=60) as mvr:
            i = offset
            while time.monotonic() < stop:
                started = time.perf_counter()
                mvr.search("papers", titles[i % len(titles)], top_k=10)
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                i += clients

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "queries_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
    }


def run_server(batch: int, papers: list[dict], seconds: float) -> list[dict]:
    flags = ("--workers", "32")
    with running_server(*flags, env={"MVR_QUERY_MAX_BATCH": str(batch)}) as target:
        with Client(target, timeout=300) as mvr:
            mvr.wait_until_serving(300)
            mvr.create_collection("papers", model="default")
            mvr.upsert("papers", [Document(p["id"], text=p["abstract"]) for p in papers])
        titles = [p["title"] for p in papers]
        load(target, titles, 1, 2)  # warm-up
        rows = []
        for clients in (1, 4, 16):
            row = {"max_batch": batch, **load(target, titles, clients, seconds)}
            print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}))
            rows.append(row)
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "search_load.json"))
    args = parser.parse_args()
    papers = [json.loads(line) for line in PAPERS.read_text().splitlines() if line.strip()]
    rows = run_server(32, papers, args.seconds) + run_server(1, papers, args.seconds)
    Path(args.out).write_text(json.dumps({"rows": rows, "machine": platform.platform()}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
