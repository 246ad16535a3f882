"""How much token precision each data set's ranking needs, and whether spending bytes per token helps.

The engine's disk target (~10 KB a document: about 4 bits a dimension) and its i.i.d. recall target
pull apart: 4-bit codes keep the topic corpus's ranking but lose ~3 points on the i.i.d. one. This
measures why, without the server, on both synthetic data sets (bench/synthetic.py) at the same size:

* the score margin the ranking has to keep: per query token, the exact Chamfer score of the 10th
  document minus the 11th's (median over queries);
* the ceiling (recall@10 of exact MaxSim over *all* documents decoded from the codes) at ``--bits``
  and at 8 bits, the two quantisers sharing the same centroids;
* per-token widths: the ``--wide-fractions`` of tokens with the largest ``--bits`` error coded at 8
  bits instead (the most any per-token rule could pick, since it reads each token's actual error),
  with the bytes a token then costs on average;
* the Gaussian rate-distortion bound at ``--bits``: the least squared error any code of that size
  can reach on residuals like the i.i.d. generator's (isotropic Gaussian noise around topics);
* the tolerance: the ceiling when every token carries isotropic noise of a given mean squared error
  (``--noise-errors``, renormalised as decoded tokens are), the error each ranking survives.

    python bench/precision.py [--data topics iid] [--docs 10000] [--queries 200] [--bits 4] \\
        [--wide-fractions 0.25 0.5 0.75] [--noise-errors 0.001 0.0003 0.0001] \\
        [--out results/precision_10k.json]
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
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "bench")]

from codec import recall  # noqa: E402  (bench/codec.py's, as bench/retrain.py imports it)
from mvr.server import codec  # noqa: E402
from mvr.server.app import limit_blas_threads  # noqa: E402
from synthetic import exact_top_k, make_corpus, make_queries, topic_dataset  # noqa: E402

WIDE_BITS = 8


def load(name: str, n_docs: int, n_queries: int):
    """(tokens, offsets, queries) of a data set, as bench/load.py's ``dataset`` builds it."""
    if name == "topics":
        corpus, queries, _ = topic_dataset(n_docs, n_queries)
    else:
        corpus, centroids = make_corpus(n_docs)
        queries = make_queries(corpus, centroids, n_queries)
    return corpus.tokens, corpus.offsets, queries


def wide_quantiser(
    narrow: codec.Codec, tokens: np.ndarray, ids: np.ndarray, norms: np.ndarray
) -> codec.Codec:
    """An 8-bit codec on ``narrow``'s centroids, its levels fitted to these tokens' scaled residuals
    (``ids``, ``norms``: their centroids and residual norms) the way codec.train fits them (its
    private helpers: training has no entry that takes centroids)."""
    residuals = (tokens - narrow.centroids[ids]) * codec._inverse(norms)[:, None]
    cutoffs, values = codec._uniform_buckets(residuals, codec.UNIFORM_CLIPS)
    return codec.Codec(narrow.centroids, cutoffs, values, WIDE_BITS, True)


def squared_errors(decoded: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    error = decoded - tokens
    return np.einsum("ij,ij->i", error, error)


def with_noise(tokens: np.ndarray, mean_squared_error: float, rng: np.random.Generator) -> np.ndarray:
    """Tokens plus isotropic Gaussian noise of that mean squared norm, renormalised to unit length."""
    noise = rng.standard_normal(tokens.shape).astype(np.float32)
    noise *= np.float32(np.sqrt(mean_squared_error / tokens.shape[1]))
    noisy = tokens + noise
    return noisy / np.linalg.norm(noisy, axis=1, keepdims=True)


def measure(name: str, args) -> dict:
    started = time.perf_counter()
    tokens, offsets, queries = load(name, args.docs, args.queries)
    ids11, scores11 = exact_top_k(tokens, offsets, queries, 11)
    truth = ids11[:, :10]
    margin = float(np.median((scores11[:, 9] - scores11[:, 10]) / len(queries[0])))
    spread = float(np.median((scores11[:, 0] - scores11[:, 10]) / len(queries[0])))
    n_centroids = codec.default_centroids(len(tokens), args.bits)
    rng = np.random.default_rng(0)
    sample = tokens[np.sort(rng.choice(len(tokens), min(len(tokens), 32 * n_centroids), replace=False))]
    narrow = codec.train(sample, n_centroids, args.bits, iterations=args.iterations)
    ids = narrow.assign(tokens)
    norms = codec.residual_norms(tokens, narrow.centroids, ids)
    wide = wide_quantiser(narrow, tokens, ids, norms)
    narrow_tokens = narrow.decode(*narrow.encode(tokens))
    wide_tokens = wide.decode(*wide.encode(tokens))
    narrow_error = squared_errors(narrow_tokens, tokens)
    wide_error = squared_errors(wide_tokens, tokens)

    def ceiling(decoded: np.ndarray) -> float:
        return recall(exact_top_k(decoded, offsets, queries, 10)[0], truth)

    mean_squared_norm = float(np.mean(np.square(norms, dtype=np.float64)))
    result = {
        "data": name,
        "tokens": len(tokens),
        "centroids": n_centroids,
        "median_margin_10th_11th_per_query_token": round(margin, 5),
        "median_spread_1st_11th_per_query_token": round(spread, 5),
        "residual_norm_quantiles_10_50_90": np.quantile(norms, [0.1, 0.5, 0.9]).round(3).tolist(),
        "mean_squared_residual_norm": round(mean_squared_norm, 5),
        # the least mean squared error any code of that many bits a dimension reaches on an isotropic
        # Gaussian residual of that power (Shannon: D = σ²·2^(−2R)); the i.i.d. generator's residuals
        # are close to that, and no source of the same power needs more
        f"gaussian_bound_squared_error_{args.bits}bit": mean_squared_norm * 2.0 ** (-2 * args.bits),
        f"token_squared_error_{args.bits}bit": float(narrow_error.mean()),
        "token_squared_error_8bit": float(wide_error.mean()),
        f"ceiling_{args.bits}bit": ceiling(narrow_tokens),
        "ceiling_8bit": ceiling(wide_tokens),
        f"bytes_per_token_{args.bits}bit": narrow.token_bytes,
        "bytes_per_token_8bit": wide.token_bytes,
    }
    print(json.dumps(result), flush=True)
    widened = []
    order = np.argsort(-narrow_error)  # the tokens the narrow codes hurt most first
    for fraction in args.wide_fractions:
        chosen = np.zeros(len(tokens), dtype=bool)
        chosen[order[: round(fraction * len(tokens))]] = True
        mixed = np.where(chosen[:, None], wide_tokens, narrow_tokens)
        row = {
            "wide_fraction": fraction,
            "bytes_per_token": round(
                narrow.token_bytes + fraction * (wide.token_bytes - narrow.token_bytes), 1
            ),
            "token_squared_error": float(np.where(chosen, wide_error, narrow_error).mean()),
            "ceiling": ceiling(mixed),
        }
        print(json.dumps(row), flush=True)
        widened.append(row)
    tolerance = []
    for error in args.noise_errors:
        row = {"token_squared_error": error, "ceiling": ceiling(with_noise(tokens, error, rng))}
        print(json.dumps(row), flush=True)
        tolerance.append(row)
    result.update(widened=widened, noise=tolerance, seconds=round(time.perf_counter() - started, 1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", nargs="+", choices=("topics", "iid"), default=["topics", "iid"])
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--bits", type=int, default=4, choices=[b for b in codec.SUPPORTED_BITS if b < 8])
    parser.add_argument("--iterations", type=int, default=8, help="k-means rounds")
    parser.add_argument("--wide-fractions", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--noise-errors", type=float, nargs="+", default=[0.001, 0.0003, 0.0001])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "precision_10k.json")
    args = parser.parse_args()
    limit_blas_threads()
    results = [measure(name, args) for name in args.data]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "command": " ".join(sys.argv),
        "machine": platform.machine(),
        "docs": args.docs,
        "queries": args.queries,
    }
    args.out.write_text(json.dumps({**header, "results": results}, indent=2))


if __name__ == "__main__":
    main()
