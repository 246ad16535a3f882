"""What every engine runner of bench/vs_peers.py shares: the data file, the timing loop and the stats.

Imported by the runners in both venvs (the main one for mvr, bench/.peers-venv for PLAID and Voyager),
so it needs numpy and the standard library only. A runner is run as a script; its directory (this
one) is then first on sys.path.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WARMUP_QUERIES = 5
SearchFunction = Callable[[np.ndarray], Sequence[int]]  # query (32, dim) → doc indices, best first


@dataclass
class Data:
    """The benchmark data as vs_peers.py wrote it: corpus tokens, queries and exact top-10 truth."""

    tokens: np.ndarray  # float32 (n_tokens, dim), unit rows
    offsets: np.ndarray  # int64 (n_docs + 1,)
    queries: np.ndarray  # float32 (n_queries, query_tokens, dim)
    truth: np.ndarray  # int (n_queries, 10): exact Chamfer top-10 doc indices

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    def document(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]


def load_data(path: Path) -> Data:
    with np.load(path) as npz:
        return Data(npz["tokens"], npz["offsets"], npz["queries"], npz["truth"])


def runner_arguments(description: str) -> argparse.Namespace:
    """The command line every runner takes: a phase, the data, an index directory, JSON parameters."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("phase", choices=["build", "search"])
    parser.add_argument("--data", type=Path, required=True, help=".npz written by bench/vs_peers.py")
    parser.add_argument("--index-dir", type=Path, required=True)
    parser.add_argument("--create", type=json.loads, default={}, help="index build parameters (JSON)")
    parser.add_argument("--sweep", type=json.loads, nargs="*", default=[{}], help="search settings (JSON)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the result JSON")
    return parser.parse_args()


def check_keys(setting: dict, known: set[str], what: str) -> None:
    """Fail loudly on a parameter the engine does not have (a typo would otherwise measure defaults)."""
    unknown = sorted(set(setting) - known)
    if unknown:
        raise TypeError(f"{what}: unknown parameter(s) {unknown}; known: {sorted(known)}")


def disk_usage(path: Path) -> dict[str, int]:
    """Bytes allocated on disk (as `du` counts them) and apparent bytes of everything under ``path``."""
    allocated = apparent = 0
    for directory, _, files in os.walk(path):
        for name in files:
            stat = os.lstat(os.path.join(directory, name))
            allocated += stat.st_blocks * 512
            apparent += stat.st_size
    return {"disk_bytes": allocated, "apparent_bytes": apparent}


def peak_rss_mb() -> float:
    """Peak resident set of this process so far: VmHWM of its own memory map. (getrusage's ru_maxrss
    is no good here: Linux carries it over fork and exec, so a runner would report its parent's peak.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(search: SearchFunction, data: Data, k: int = 10) -> dict[str, float]:
    """One query at a time: recall@k against the exact truth and per-query latency stats."""
    for query in data.queries[:WARMUP_QUERIES]:  # JIT compilation, caches, lazy loads
        search(query)
    latencies = np.empty(len(data.queries))
    hits = 0
    for i, query in enumerate(data.queries):
        started = time.perf_counter()
        ids = search(query)
        latencies[i] = time.perf_counter() - started
        hits += len(set(list(ids)[:k]) & set(data.truth[i, :k].tolist()))
    mean = float(latencies.mean())
    return {
        "recall_at_10": hits / (k * len(data.queries)),
        "p50_ms": float(np.percentile(latencies, 50) * 1e3),
        "p99_ms": float(np.percentile(latencies, 99) * 1e3),
        "mean_ms": mean * 1e3,
        "qps": 1.0 / mean,
    }


def sweep(settings: list[dict], prepare: Callable[[dict], SearchFunction], data: Data) -> list[dict]:
    """Measures every setting; ``prepare`` applies one and returns the search function to time."""
    rows = []
    for setting in settings:
        row = {"setting": setting, **measure(prepare(setting), data)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def search_result(rows: list[dict], load_s: float) -> dict:
    """What a runner's search phase writes; the peak RSS covers the whole process (load and sweep)."""
    return {"rows": rows, "load_s": load_s, "peak_rss_mb": peak_rss_mb()}


def timed(build: Callable[[], None]) -> float:
    started = time.perf_counter()
    build()
    return time.perf_counter() - started


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
