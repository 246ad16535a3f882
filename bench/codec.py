"""The compressed token store and the cascade's cheap stages, measured stage by stage, without the server.

On the topic-clustered corpus (bench/synthetic.py) with its exact Chamfer truth, for each number of
centroids K and residual bits b:

* train / encode cost (spherical k-means on a sample; nearest centroid + packed residual per token);
* the ceiling: recall@10 of exact MaxSim over *all* documents decoded from the codes (what no search
  knob can beat at that precision);
* the cascade: probe_lists (n_probe centroids per query token → top ``keep`` documents), then
  centroid interaction → top ``rerank``, then exact MaxSim on the decoded tokens of those → top 10:
  recall of each stage's survivors and its time per query, one thread.

    python bench/codec.py [--docs 10000] [--centroids 1024 4096] [--bits 2 4] [--scaled 0 1] \
        [--lloyd-rounds 0 100] [--levels polynomial lloyd] [--clips 0.0005 engine] \
        [--iterations 3 8] [--seeds 0 1 2] [--out results/codec_10k.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "bench")]

from mvr.server import candidates, codec  # noqa: E402
from mvr.server.app import limit_blas_threads  # noqa: E402
from mvr.server.rerank import maxsim  # noqa: E402
from synthetic import exact_top_k, topic_dataset  # noqa: E402


def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth, strict=True)])
    )


def run_config(
    corpus,
    queries,
    truth,
    n_centroids: int,
    bits: int,
    scaled: bool,
    fitting: dict,
    iterations: int,
    seed: int,
    args,
) -> dict:
    """``fitting``: codec.train's options for the residual levels (:func:`fittings`); ``seed`` draws
    the training sample and the k-means' first centroids."""
    rng = np.random.default_rng(seed)
    tokens = corpus.tokens
    sample_size = min(len(tokens), max(args.sample_per_centroid * n_centroids, 65_536))
    sample = tokens[np.sort(rng.choice(len(tokens), sample_size, replace=False))]
    started = time.perf_counter()
    trained = codec.train(
        sample, n_centroids, bits, iterations=iterations, seed=seed, scaled=scaled, **fitting
    )
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    coded = code_corpus(trained, tokens, corpus.offsets)
    encode_s = time.perf_counter() - started
    result = {
        "centroids": n_centroids,
        "bits": bits,
        "scaled": scaled,
        "iterations": iterations,
        "seed": seed,
        **{key: list(value) if isinstance(value, tuple) else value for key, value in fitting.items()},
        "sample_tokens": sample_size,
        "train_s": round(train_s, 2),
        "encode_tokens_per_s": round(len(tokens) / encode_s),
        "bytes_per_token": trained.token_bytes,
        "token_squared_error": token_squared_error(coded, corpus),
        "ceiling_recall_at_10": ceiling_recall(coded, corpus, queries, truth),
    }
    print(json.dumps(result), flush=True)
    result["cascade"] = cascade(coded, corpus, queries, truth, args.probes, args.keep, args.rerank)
    return result


@dataclass
class CodedCorpus:
    """Every document of a corpus coded by one codec, laid out as the server's code file."""

    codec: codec.Codec
    blocks: np.ndarray  # uint8: one block per document, back to back
    block_offsets: np.ndarray  # int64 (n_docs,)


def code_corpus(
    trained: codec.Codec, tokens: np.ndarray, offsets: np.ndarray, threads: int = 1
) -> CodedCorpus:
    ids, payload = trained.encode(tokens, threads)
    blocks = np.frombuffer(
        b"".join(codec.pack_block(ids[a:b], payload[a:b]) for a, b in pairwise(offsets.tolist())),
        dtype=np.uint8,
    )
    return CodedCorpus(trained, blocks, offsets[:-1] * trained.token_bytes)


def decode_corpus(coded: CodedCorpus, offsets: np.ndarray) -> np.ndarray:
    out = np.empty((int(offsets[-1]), coded.codec.dim), dtype=np.float32)
    coded.codec.decode_into(coded.blocks, coded.block_offsets, np.diff(offsets), offsets[:-1], out)
    return out


def token_squared_error(coded: CodedCorpus, corpus) -> float:
    """Mean ‖decoded token − token‖² over the corpus (tokens are unit vectors)."""
    error = decode_corpus(coded, corpus.offsets) - corpus.tokens
    return float(np.mean(np.einsum("ij,ij->i", error, error)))


def ceiling_recall(coded: CodedCorpus, corpus, queries, truth) -> float:
    """recall@10 of exact MaxSim over every document's decoded tokens."""
    found, _ = exact_top_k(decode_corpus(coded, corpus.offsets), corpus.offsets, queries, 10)
    return recall(list(found), truth)


def cascade(coded: CodedCorpus, corpus, queries, truth, probes, keeps, reranks) -> list[dict]:
    """The cheap stages and the exact one over decoded candidates, for every (probe, keep, rerank):
    recall of each stage's survivors and ms per query, one thread."""
    trained, blocks, block_offsets, offsets = coded.codec, coded.blocks, coded.block_offsets, corpus.offsets
    n_centroids = trained.n_centroids
    doc_cids, doc_offsets = codec.distinct_centroids(blocks, block_offsets, np.diff(offsets), n_centroids)
    list_offsets, list_slots = candidates.build_lists(doc_cids, doc_offsets, corpus.n_docs, n_centroids)
    alive = np.ones(corpus.n_docs, np.uint8)
    table_of_centroids = candidates.CentroidTable.of(trained.centroids)
    rows = []
    for n_probe in probes:
        for keep in keeps:
            for rerank in reranks:
                stage_s = np.zeros(4)
                kept_found, ci_found, final_found = [], [], []
                for query in queries:
                    t0 = time.perf_counter()
                    scores = table_of_centroids.scores(query)
                    probed = candidates.probe_table(scores, len(query), n_probe)
                    slots, _ = candidates.probe_lists(
                        scores, probed, list_offsets, list_slots, corpus.n_docs, alive, keep
                    )
                    t1 = time.perf_counter()
                    table, _, _ = candidates.byte_scores(scores)
                    ci = candidates.centroid_interaction(table, doc_cids, doc_offsets, slots)
                    best = slots[np.argsort(-ci)[:rerank]]
                    t2 = time.perf_counter()
                    counts = offsets[best + 1] - offsets[best]
                    local = np.zeros(len(best) + 1, np.int64)
                    np.cumsum(counts, out=local[1:])
                    out = np.empty((int(local[-1]), trained.dim), np.float32)
                    trained.decode_into(blocks, block_offsets[best], counts, local[:-1], out)
                    t3 = time.perf_counter()
                    exact = maxsim(query, out, local).scores
                    final = best[np.argsort(-exact)[:10]]
                    t4 = time.perf_counter()
                    stage_s += [t1 - t0, t2 - t1, t3 - t2, t4 - t3]
                    kept_found.append(slots)
                    ci_found.append(best)
                    final_found.append(final)
                row = {
                    "n_probe": n_probe,
                    "keep": keep,
                    "rerank": rerank,
                    "recall_probe_kept": recall(kept_found, truth),
                    "recall_ci_kept": recall(ci_found, truth),
                    "recall_at_10": recall(final_found, truth),
                    "ms_per_query": dict(
                        zip(
                            ["probe", "centroid_interaction", "decode", "maxsim"],
                            (stage_s / len(queries) * 1e3).round(3).tolist(),
                            strict=True,
                        )
                    ),
                }
                row["ms_per_query"]["total"] = round(sum(row["ms_per_query"].values()), 3)
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--centroids", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 4])
    parser.add_argument(
        "--scaled", type=int, nargs="+", default=[1], choices=[0, 1], help="1: residual / its norm"
    )
    parser.add_argument(
        "--lloyd-rounds",
        type=int,
        nargs="+",
        default=[codec.LLOYD_ROUNDS],
        help="Lloyd–Max steps of the residual buckets below 8 bits (0: equal-probability quantiles)",
    )
    parser.add_argument(
        "--levels",
        nargs="+",
        default=["polynomial"],
        choices=["polynomial", "lloyd"],
        help="below 8 bits: each dimension's levels as the cubic fitted to its Lloyd–Max levels "
        "(planar codes, arithmetic decode; the engine's) or those levels themselves (table decode)",
    )
    parser.add_argument(
        "--clips",
        nargs="+",
        default=["engine"],
        help="8 bits: tail fractions clipped that training chooses among, comma-separated, one set per "
        "run ('engine': the codec's own, e.g. --clips 0.0005 engine)",
    )
    parser.add_argument("--probes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--keep", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--rerank", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--iterations", type=int, nargs="+", default=[8], help="k-means rounds")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="one run per seed (the training sample and the first centroids): how much a k-means draw moves",
    )
    parser.add_argument("--sample-per-centroid", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "codec_10k.json")
    args = parser.parse_args()
    limit_blas_threads()
    started = time.perf_counter()
    corpus, queries, truth = topic_dataset(args.docs, args.queries)
    print(f"data: {corpus.n_docs} docs, {len(corpus.tokens)} tokens, {time.perf_counter() - started:.1f} s")
    results = [
        run_config(corpus, queries, truth, k, b, bool(scaled), fitting, iterations, seed, args)
        for k in args.centroids
        for b in args.bits
        for scaled in args.scaled
        for fitting in fittings(b, args)
        for iterations in args.iterations
        for seed in args.seeds
    ]
    write_results(args.out, corpus, queries, results)


def fittings(bits: int, args) -> list[dict]:
    """codec.train's level options to compare at ``bits``: the clip sets at 8 bits; below, the
    Lloyd–Max rounds × the level shapes (the cubic fitted to them, decoded by arithmetic, or the
    Lloyd–Max levels themselves, decoded by a table)."""
    if bits == 8:
        return [{"uniform_clips": clips} for clips in clip_sets(args.clips)]
    return [
        {"lloyd_rounds": rounds, "polynomial": levels == "polynomial"}
        for rounds in args.lloyd_rounds
        for levels in args.levels
    ]


def clip_sets(specs: list[str]) -> list[tuple[float, ...]]:
    return [codec.UNIFORM_CLIPS if s == "engine" else tuple(float(x) for x in s.split(",")) for s in specs]


def write_results(out: Path, corpus, queries, results: list[dict], **extra) -> None:
    """The run's JSON: command, machine, data sizes, ``extra`` fields and the result rows."""
    out.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "command": " ".join(sys.argv),
        "machine": platform.machine(),
        "docs": corpus.n_docs,
        "tokens": len(corpus.tokens),
        "queries": len(queries),
    }
    out.write_text(json.dumps({**header, **extra, "results": results}, indent=2))


if __name__ == "__main__":
    main()
