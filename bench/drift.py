"""Retraining on drift: a collection whose new documents come from topics its codec never saw.

A collection is loaded with ``--docs`` documents of the topic-clustered corpus (bench/synthetic.py,
seed 0; its codec trained once on all of them: ``train_after_tokens`` is their token count), then
``--later`` more documents arrive, in the scenario:

* ``shift``: from another corpus of the same generator with another seed (other topic centres,
  words and stopwords: a new domain). The collection grows by less than ``RETRAIN_GROWTH``, so only
  the drift measure can call for a retraining.
* ``same``: more documents of the first corpus (the control: the drift measure must stay below its
  threshold).

Each scenario runs with the drift measure as the engine has it and, for ``shift``, also with it
switched off (``DRIFT_RATIO`` = ∞). Reported: the codec trainings and why (growth, drift) with the
drift ratio that triggered them, the drift ratio at the end, and recall@10 at the defaults of
paraphrasing queries of the later documents and of the first ones, against exact Chamfer over all
documents. In process (no gRPC), the indexer with both cores, the searches on one.

    python bench/drift.py [--docs 6000] [--later 3000] [--out bench/results/drift.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "bench")]

from mvr.server import indexer  # noqa: E402
from mvr.server.app import limit_blas_threads  # noqa: E402
from mvr.server.manager import CollectionManager  # noqa: E402
from synthetic import (  # noqa: E402
    TopicCorpusSpec,
    exact_top_k,
    make_topic_corpus,
    make_topic_queries,
    upsert_in_batches,
)


class Trainings(logging.Handler):
    """Collects the indexer's "codec trained" / "codec retrained" records."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("codec"):
            self.rows.append(
                {
                    "message": record.getMessage(),
                    "reason": getattr(record, "reason", None),
                    "drift_ratio": getattr(record, "drift_ratio", None),
                    "centroids": getattr(record, "centroids", None),
                }
            )


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t.tolist())) / len(t) for f, t in zip(found, truth, strict=True)]))


def run(name: str, drift_ratio: float, first, later, query_sets: dict, args) -> dict:
    indexer.DRIFT_RATIO = drift_ratio
    trainings = Trainings()
    logging.getLogger("mvr.indexer").addHandler(trainings)
    logging.getLogger("mvr.indexer").setLevel(logging.INFO)
    with tempfile.TemporaryDirectory() as scratch:
        manager = CollectionManager(Path(scratch), index_threads=2, fde_threads=2)
        # the first codec is trained on the whole first load (not on its first ~1,100 documents and
        # retrained at 4× as the server would): the later load then stays below RETRAIN_GROWTH
        train_after = int(first.offsets[-1])
        tokens = {"train_after_tokens": train_after}
        manager.create("drift", model=None, dim=first.tokens.shape[1], tokens=tokens)
        collection = manager.get("drift")
        started = time.perf_counter()
        upsert_in_batches(collection, first)
        collection.flush()
        first_s = time.perf_counter() - started
        before = len(trainings.rows)
        started = time.perf_counter()
        upsert_in_batches(collection, later, first_id=first.n_docs)
        collection.flush()
        later_s = time.perf_counter() - started
        stats = collection.stats()
        ratio_at_end = collection._indexer.drift.ratio(collection.store.codec)
        affinity = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(affinity)})
        recalls = {}
        for label, (queries, truth) in query_sets.items():
            found = [[int(hit.id) for hit in collection.search(q, 10)] for q in queries]
            recalls[label] = recall(found, truth)
        os.sched_setaffinity(0, affinity)
        manager.close()
    logging.getLogger("mvr.indexer").removeHandler(trainings)
    row = {
        "run": name,
        "drift_ratio_threshold": None if math.isinf(drift_ratio) else drift_ratio,
        "trainings_first_load": trainings.rows[:before],
        "trainings_later_load": trainings.rows[before:],
        "codec_generation": stats.codec_generation,
        "centroids": stats.centroids,
        "drift_ratio_at_end": round(ratio_at_end, 3),
        "first_load_s": round(first_s, 1),
        "later_load_s": round(later_s, 1),
        "recall_at_10": recalls,
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=6000, help="documents of the first load")
    parser.add_argument("--later", type=int, default=3000, help="documents that arrive afterwards")
    parser.add_argument("--queries", type=int, default=200, help="of each kind (later, first)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "drift.json")
    args = parser.parse_args()
    limit_blas_threads()
    both = make_topic_corpus(TopicCorpusSpec(n_docs=args.docs + args.later, seed=0))
    split = int(both.offsets[args.docs])
    first = replace(
        both,
        tokens=both.tokens[:split],
        offsets=both.offsets[: args.docs + 1],
        topics=both.topics[: args.docs],
        token_words=both.token_words[:split],
    )
    same = replace(
        both,
        tokens=both.tokens[split:],
        offsets=both.offsets[args.docs :] - split,
        topics=both.topics[args.docs :],
        token_words=both.token_words[split:],
    )
    shifted = make_topic_corpus(TopicCorpusSpec(n_docs=args.later, seed=1))

    def query_sets(later_corpus) -> dict:
        """Paraphrases of the later documents and of the first ones; truth over all documents."""
        tokens = np.concatenate([first.tokens, later_corpus.tokens])
        offsets = np.concatenate([first.offsets, later_corpus.offsets[1:] + split])
        later_queries, _ = make_topic_queries(later_corpus, args.queries, seed=3)
        first_queries, _ = make_topic_queries(first, args.queries, seed=4)
        return {
            "later_documents": (later_queries, exact_top_k(tokens, offsets, later_queries, 10)[0]),
            "first_documents": (first_queries, exact_top_k(tokens, offsets, first_queries, 10)[0]),
        }

    engine_ratio = indexer.DRIFT_RATIO
    rows = [
        run("shift, drift measure on", engine_ratio, first, shifted, query_sets(shifted), args),
        run("shift, drift measure off", math.inf, first, shifted, query_sets(shifted), args),
        run("same topics, drift measure on", engine_ratio, first, same, query_sets(same), args),
    ]
    indexer.DRIFT_RATIO = engine_ratio
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": " ".join(["python", *sys.argv]),
                "machine": platform.machine(),
                "docs": args.docs,
                "later": args.later,
                "queries": args.queries,
                "drift": {
                    "ratio": engine_ratio,
                    "window_tokens": indexer.DRIFT_WINDOW_TOKENS,
                    "min_share": indexer.DRIFT_MIN_SHARE,
                    "hold_out": indexer.DRIFT_HOLD_OUT,
                },
                "runs": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
