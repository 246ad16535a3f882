"""What retraining the codec buys a growing collection, and what re-coding from decoded codes costs.

A collection's first codec is trained when it holds ``train_after_tokens`` (131,072) tokens: its first
~1,100 documents, which cover only the topics they happen to be about. The indexer retrains at 4× the
tokens of the last training, on a sample of all documents, and re-codes every document — from its
float vectors where still stored, else from its decoded codes (a second rounding). On the
topic-clustered corpus (bench/synthetic.py), without the server or the graph, this measures:

* ``first``: the codec trained on the first ``--first-docs`` documents' tokens, coding every document
  (a collection that never retrains);
* ``retrained K``: a codec of K centroids trained on a uniform sample of all documents (32 tokens a
  centroid, as the indexer), coding every document from its vectors;
* ``retrained K, from decoded``: the same codec coding the first codec's decoded tokens (what the
  rewrite does for documents whose vectors a compaction dropped), with ``--from-decoded``.

For each: the ceiling (recall@10 of exact MaxSim over every decoded document) and the cascade stage by
stage (bench/codec.py: probe → centroid interaction → exact MaxSim over the decoded candidates).

    python bench/retrain.py [--docs 100000] [--centroids 4096 16384] [--bits 8] [--from-decoded] \
        [--out bench/results/retrain_100k.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "bench")]

from codec import cascade, ceiling_recall, code_corpus, decode_corpus, write_results  # noqa: E402
from mvr.server import codec  # noqa: E402
from mvr.server.app import limit_blas_threads  # noqa: E402
from mvr.server.indexer import TRAIN_SAMPLE_PER_CENTROID, train_rounds  # noqa: E402
from synthetic import topic_dataset  # noqa: E402


def evaluate(name: str, coded, corpus, queries, truth, args, extra: dict) -> dict:
    row = {"codec": name, **extra}
    if args.ceiling:
        row["ceiling_recall_at_10"] = ceiling_recall(coded, corpus, queries, truth)
    print(json.dumps(row), flush=True)
    row["cascade"] = cascade(coded, corpus, queries, truth, args.probes, args.keep, args.rerank)
    return row


def train_timed(
    sample: np.ndarray, n_centroids: int, collection_tokens: int, args
) -> tuple[codec.Codec, float]:
    """Trains as the indexer does when the collection holds ``collection_tokens`` (its k-means rounds)."""
    started = time.perf_counter()
    rounds = train_rounds(collection_tokens, len(sample))
    trained = codec.train(sample, n_centroids, args.bits, iterations=rounds, threads=args.threads)
    return trained, round(time.perf_counter() - started, 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--first-docs", type=int, default=1100, help="what the first training sees")
    parser.add_argument("--first-centroids", type=int, default=4096)
    parser.add_argument("--centroids", type=int, nargs="+", default=[4096])
    parser.add_argument("--bits", type=int, default=8)
    parser.add_argument("--from-decoded", action="store_true")
    parser.add_argument(
        "--ceiling",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="exact MaxSim over every decoded document (at 100k: minutes and 6 GB each)",
    )
    parser.add_argument("--probes", type=int, nargs="+", default=[2])
    parser.add_argument("--keep", type=int, nargs="+", default=[1000])
    parser.add_argument("--rerank", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--threads", type=int, default=2, help="training and coding threads")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "retrain_100k.json")
    args = parser.parse_args()
    limit_blas_threads()
    corpus, queries, truth = topic_dataset(args.docs, args.queries)
    tokens, offsets = corpus.tokens, corpus.offsets
    first_tokens = tokens[: int(offsets[min(args.first_docs, corpus.n_docs)])]
    first, train_s = train_timed(
        first_tokens, min(args.first_centroids, len(first_tokens)), len(first_tokens), args
    )
    coded_first = code_corpus(first, tokens, offsets, args.threads)
    results: list[dict] = []

    def add(result: dict) -> None:
        """Keeps a row and rewrites the JSON: a long run stopped early keeps the rows it has."""
        results.append(result)
        write_results(args.out, corpus, queries, results, bits=args.bits)

    add(
        evaluate(
            "first",
            coded_first,
            corpus,
            queries,
            truth,
            args,
            {"centroids": first.n_centroids, "sample_tokens": len(first_tokens), "train_s": train_s},
        )
    )
    decoded_first = decode_corpus(coded_first, offsets) if args.from_decoded else None
    del coded_first
    rng = np.random.default_rng(0)
    for n_centroids in args.centroids:
        # as the indexer: 32 tokens a centroid, at least 65,536
        sample_size = min(len(tokens), max(TRAIN_SAMPLE_PER_CENTROID * n_centroids, 1 << 16))
        sample = tokens[np.sort(rng.choice(len(tokens), sample_size, replace=False))]
        trained, train_s = train_timed(sample, n_centroids, len(tokens), args)
        started = time.perf_counter()
        coded = code_corpus(trained, tokens, offsets, args.threads)
        extra = {
            "centroids": n_centroids,
            "sample_tokens": sample_size,
            "train_s": train_s,
            "encode_tokens_per_s": round(len(tokens) / (time.perf_counter() - started)),
        }
        add(evaluate(f"retrained {n_centroids}", coded, corpus, queries, truth, args, extra))
        if decoded_first is not None:
            del coded
            coded = code_corpus(trained, decoded_first, offsets, args.threads)
            add(
                evaluate(f"retrained {n_centroids}, from decoded", coded, corpus, queries, truth, args, extra)
            )


if __name__ == "__main__":
    main()
