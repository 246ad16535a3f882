"""Snapshots under load: what a snapshot costs the writers, how long it takes, and that it is right.

Starts `mvr serve --model none` on loopback, loads a topic-clustered collection (``--docs``, 128-d,
30–200 tokens a document) and waits until it is at rest (in the graph, coded, no retraining). Then
one writer thread upserts single documents back to back (each acknowledged once durable) while,
after ``--baseline-s`` seconds, the collection is snapshotted (CreateSnapshot). Reports:

* the writer's upsert latency (p50 / p99 / max) before the snapshot and while it was being taken, and
  how many writes were acknowledged meanwhile;
* the snapshot's duration and size (bytes a document, and by part), the download, the upload restore
  and the server-side restore times;
* consistency: in the restored copy, every write acknowledged before CreateSnapshot was called, none
  issued after it returned;
* identical answers: with the writer stopped and the collection at rest again, a second snapshot
  restored, the fraction of ``--queries`` searches (top 10, default knobs) whose hits and scores
  equal the source's.

    python bench/snapshot.py [--docs 20000] [--out bench/results/snapshot.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "client"), str(ROOT / "bench")]

from mvr.client import Client, Document  # noqa: E402
from serverproc import server_process  # noqa: E402
from synthetic import TopicCorpusSpec, make_topic_corpus, make_topic_queries  # noqa: E402

COLLECTION = "snap"


def load(client: Client, corpus, n_docs: int) -> None:
    batch = 256
    for start in range(0, n_docs, batch):
        docs = [
            Document(f"d{i}", vectors=corpus.tokens[corpus.offsets[i] : corpus.offsets[i + 1]])
            for i in range(start, min(start + batch, n_docs))
        ]
        client.upsert(COLLECTION, docs, batch_size=batch)


def wait_settled(client: Client, name: str, timeout_s: float = 1800) -> dict:
    """Polls until every live document is in the graph and coded (the corpus is past the training
    point) and no retraining is under way: the collection at rest. Returns its stats."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = client.get_collection(name).stats
        settled = stats.indexed_documents == stats.documents == stats.coded_documents
        if settled and not stats.recoded_documents:
            return {
                "documents": stats.documents,
                "codec_generation": stats.codec_generation,
                "bytes_on_disk": dict(stats.bytes_on_disk),
            }
        time.sleep(1)
    raise TimeoutError(f"{name} not settled in {timeout_s} s")


class Writer(threading.Thread):
    """Upserts one new document at a time; records (issued, acknowledged, id) of every write."""

    def __init__(self, target: str, corpus) -> None:
        super().__init__(daemon=True)
        self.target, self.corpus = target, corpus
        self.stop = threading.Event()
        self.writes: list[tuple[float, float, str]] = []

    def run(self) -> None:
        with Client(self.target, timeout=60) as client:
            n = 0
            while not self.stop.is_set():
                i = n % self.corpus.n_docs
                doc = Document(
                    f"w{n}", vectors=self.corpus.tokens[self.corpus.offsets[i] : self.corpus.offsets[i + 1]]
                )
                issued = time.monotonic()
                client.upsert(COLLECTION, [doc])
                self.writes.append((issued, time.monotonic(), doc.id))
                n += 1


def latency_ms(writes: list[tuple[float, float, str]], start: float, stop: float) -> dict:
    """Latency of the writes issued in [start, stop)."""
    spans = np.array([(a - i) * 1e3 for i, a, _ in writes if start <= i < stop])
    if not len(spans):
        return {"writes": 0}
    return {
        "writes": len(spans),
        "p50": round(float(np.percentile(spans, 50)), 2),
        "p99": round(float(np.percentile(spans, 99)), 2),
        "max": round(float(spans.max()), 2),
    }


def parts(path: Path) -> dict[str, int]:
    """Bytes of each part of a snapshot file, from its manifest."""
    with tarfile.open(path) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    return {name: entry["bytes"] for name, entry in manifest["files"].items()}


def listed_ids(client: Client, name: str) -> set[str]:
    return {d.id for d in client.list_documents(name, page_size=1000)}


def answers(client: Client, name: str, queries: list[np.ndarray]) -> list[list[tuple[str, float]]]:
    return [[(h.id, h.score) for h in client.search(name, q, top_k=10)] for q in queries]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--baseline-s", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/snapshot.json")
    args = parser.parse_args()

    corpus = make_topic_corpus(TopicCorpusSpec(n_docs=args.docs, seed=0))
    queries, _ = make_topic_queries(corpus, args.queries)
    result: dict = {"docs": args.docs, "tokens": int(corpus.offsets[-1])}
    with server_process("--model", "none") as (target, _), Client(target, timeout=600) as client:
        client.wait_until_serving(300)
        client.create_collection(COLLECTION, model=None, dim=corpus.tokens.shape[1])
        started = time.monotonic()
        load(client, corpus, args.docs)
        result["collection"] = wait_settled(client, COLLECTION)
        result["load_index_code_s"] = round(time.monotonic() - started, 1)
        print(f"{args.docs} documents loaded, indexed, coded in {result['load_index_code_s']} s", flush=True)

        writer = Writer(target, corpus)
        writer.start()
        time.sleep(args.baseline_s)
        began = time.monotonic()
        snapshot = client.create_snapshot(COLLECTION)
        ended = time.monotonic()
        time.sleep(1.0)
        writer.stop.set()
        writer.join()
        baseline_start = began - args.baseline_s + 1.0  # the writer's first second is its warm-up
        result["snapshot"] = {
            "seconds": round(ended - began, 2),
            "bytes": snapshot.size_bytes,
            "bytes_per_document": round(snapshot.size_bytes / snapshot.document_count),
            "documents": snapshot.document_count,
        }
        result["upsert_latency_ms"] = {
            "before": latency_ms(writer.writes, baseline_start, began),
            "during_snapshot": latency_ms(writer.writes, began, ended),
        }

        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "snap.tar"
            t0 = time.monotonic()
            client.download_snapshot(snapshot.name, path)
            t1 = time.monotonic()
            result["snapshot"]["bytes_by_part"] = parts(path)
            client.restore_snapshot("uploaded", path=path)
            t2 = time.monotonic()
        client.restore_snapshot("kept", snapshot=snapshot.name)
        t3 = time.monotonic()
        result["transfer_s"] = {
            "download": round(t1 - t0, 2),
            "restore_uploaded": round(t2 - t1, 2),
            "restore_server_side": round(t3 - t2, 2),
        }

        restored = listed_ids(client, "kept")
        acknowledged_before = {i for _, a, i in writer.writes if a < began}
        issued_after = {i for s, _, i in writer.writes if s > ended}
        result["consistency"] = {
            "acknowledged_before_call": len(acknowledged_before),
            "of_them_missing": len(acknowledged_before - restored),
            "issued_after_return": len(issued_after),
            "of_them_present": len(issued_after & restored),
            "uploaded_copy_lists_the_same_ids": listed_ids(client, "uploaded") == restored,
        }

        wait_settled(client, COLLECTION)
        quiet = client.create_snapshot(COLLECTION)
        client.restore_snapshot("quiet", snapshot=quiet.name)
        source, copy = answers(client, COLLECTION, queries), answers(client, "quiet", queries)
        result["identical_answers"] = sum(a == b for a, b in zip(source, copy, strict=True)) / len(queries)

    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
