"""Soak: mixed reads and writes at high concurrency against a real server for a bounded time, then a
consistency check of everything it acknowledged.

Starts `mvr serve --model none` on loopback (or uses ``--target``), creates a collection, and runs for
``--seconds``: writer threads upsert batches of documents (replacing earlier versions: each writer owns
its own ids, so the last acknowledged write of an id is known) and delete some; reader threads search,
read documents and page through the collection. Every call has a deadline. It samples the server's
resident memory (VmRSS) once a second, counts calls by method and status code, and at the end reads
back every id: each must exist exactly when its last acknowledged write was an upsert, with the version
(a metadata field) of that write, and the listing must hold exactly those ids. Prints a summary and
writes JSON (the RSS series included).

    python bench/soak.py [--seconds 120] [--writers 4] [--readers 12] [--out bench/results/soak.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "client"), str(ROOT / "bench")]

from mvr.client import Client, Document, MvrError  # noqa: E402
from serverproc import memory_kib, server_process  # noqa: E402

DIM = 64
IDS_PER_WRITER = 2000


class Tally:
    """Calls by (method, status code), shared by the threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()

    def call(self, method: str, run, *args, **kwargs) -> tuple[object, str]:
        """``run(*args, **kwargs)``; its result (None on failure) and status code name."""
        try:
            result, code = run(*args, **kwargs), "OK"
        except MvrError as error:
            result, code = None, error.code.name
        with self._lock:
            self.counts[(method, code)] += 1
        return result, code


# A write that failed with one of these may still have been applied: its ids are left out of the check.
AMBIGUOUS = {"DEADLINE_EXCEEDED", "UNAVAILABLE", "CANCELLED", "UNKNOWN", "INTERNAL"}


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def writer(target: str, number: int, stop: threading.Event, tally: Tally, acknowledged: dict) -> None:
    """Upserts batches of this writer's ids (new versions of old ones too) and deletes some; records
    the last acknowledged write of each id: a version number, or None for a delete."""
    rng = np.random.default_rng(number)
    version = 0
    with Client(target, timeout=30) as mvr:
        while not stop.is_set():
            version += 1
            ids = [f"w{number}-{i}" for i in rng.choice(IDS_PER_WRITER, size=16, replace=False)]
            if rng.random() < 0.15:
                ids = ids[:4]
                _, code = tally.call("DeleteDocuments", mvr.delete, "soak", ids)
                state: int | str | None = None  # deleted
            else:
                documents = [
                    Document(
                        i, vectors=unit(rng, int(rng.integers(8, 64))), metadata={"version": str(version)}
                    )
                    for i in ids
                ]
                _, code = tally.call("UpsertDocuments", mvr.upsert, "soak", documents)
                state = version
            if code == "OK":
                acknowledged.update(dict.fromkeys(ids, state))
            elif code in AMBIGUOUS:
                acknowledged.update(dict.fromkeys(ids, "ambiguous"))


def reader(target: str, number: int, stop: threading.Event, tally: Tally) -> None:
    rng = np.random.default_rng(1000 + number)
    with Client(target, timeout=30) as mvr:
        while not stop.is_set():
            choice = rng.random()
            if choice < 0.8:
                tally.call("Search", mvr.search, "soak", unit(rng, 32), top_k=10)
            elif choice < 0.95:
                doc_id = f"w{rng.integers(0, 4)}-{rng.integers(0, IDS_PER_WRITER)}"
                tally.call("GetDocument", mvr.get, "soak", doc_id)
            else:
                tally.call("ListDocuments", lambda: sum(1 for _ in mvr.list_documents("soak", page_size=500)))


def check(target: str, acknowledged: dict[str, int | str | None]) -> dict:
    """Every acknowledged id as its last acknowledged write left it; the listing exactly the live ids
    (ids whose last write ended ambiguously are only counted)."""
    wrong = []
    ambiguous = {doc_id for doc_id, version in acknowledged.items() if version == "ambiguous"}
    with Client(target, timeout=60) as mvr:
        for doc_id, version in acknowledged.items():
            if doc_id in ambiguous:
                continue
            try:
                stored = mvr.get("soak", doc_id)
                found = int(stored.metadata["version"])
            except MvrError as error:
                if error.code.name != "NOT_FOUND":
                    raise
                found = None
            if found != version:
                wrong.append({"id": doc_id, "acknowledged": version, "found": found})
        listed = {d.id for d in mvr.list_documents("soak", page_size=1000)} - ambiguous
    live = {doc_id for doc_id, version in acknowledged.items() if version is not None} - ambiguous
    return {
        "ids_checked": len(acknowledged) - len(ambiguous),
        "ids_ambiguous": len(ambiguous),
        "live": len(live),
        "wrong": wrong[:20],
        "n_wrong": len(wrong),
        "listing_matches": listed == live,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--readers", type=int, default=12)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    args = parser.parse_args()
    with server_process("--model", "none", "--workers", "16") as (target, server):
        with Client(target, timeout=60) as mvr:
            mvr.wait_until_serving(120)
            mvr.create_collection("soak", model=None, dim=DIM)
        tally, stop = Tally(), threading.Event()
        acknowledged: list[dict] = [{} for _ in range(args.writers)]
        threads = [
            threading.Thread(target=writer, args=(target, w, stop, tally, acknowledged[w]))
            for w in range(args.writers)
        ] + [threading.Thread(target=reader, args=(target, r, stop, tally)) for r in range(args.readers)]
        rss = [(0.0, memory_kib(server.pid))]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        while (elapsed := time.monotonic() - started) < args.seconds:
            time.sleep(1.0)
            rss.append((round(elapsed, 1), memory_kib(server.pid)))
        stop.set()
        for thread in threads:
            thread.join(120)
        merged = {k: v for part in acknowledged for k, v in part.items()}
        consistency = check(target, merged)
    calls = collections.defaultdict(dict)
    for (method, code), count in sorted(tally.counts.items()):
        calls[method][code] = count
    quarter = max(1, len(rss) // 4)

    def summary(field: str) -> dict[str, float]:
        mib = [sample[field] / 1024 for _, sample in rss]
        return {
            "start": round(mib[0], 1),
            "first_quarter_mean": round(float(np.mean(mib[:quarter])), 1),
            "last_quarter_mean": round(float(np.mean(mib[-quarter:])), 1),
            "max": round(max(mib), 1),
        }

    result = {
        "command": " ".join(["python", *sys.argv]),
        "seconds": args.seconds,
        "writers": args.writers,
        "readers": args.readers,
        "calls": calls,
        "calls_per_s": round(sum(tally.counts.values()) / args.seconds, 1),
        "rss_mib": summary("VmRSS"),
        "anonymous_rss_mib": summary("RssAnon"),  # heap and arrays: what a leak would grow
        "file_rss_mib": summary("RssFile"),  # mapped files: grows with the data written
        "rss_series_kib": rss,
        "consistency": consistency,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rss_series_kib"}, indent=2))
    print(f"wrote {args.out}")
    if consistency["n_wrong"] or not consistency["listing_matches"]:
        raise SystemExit("inconsistent: see 'consistency' above")


if __name__ == "__main__":
    main()
