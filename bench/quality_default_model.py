"""Retrieval quality of the embedded default model (all-MiniLM-L6-v2) on the papers corpus.

Index the abstracts of ../shared/data/papers-dev.jsonl, query with each title, the relevant document is
the abstract with the same id. Compares, by brute force (no index, no FDE):
  * exact MaxSim over the model's token vectors (what mvr ranks by), and
  * the model's own single vector (mean pooling + cosine, how it was trained to be used),
and, for the quantization question, MaxSim with int8 dynamic quantization of the Linear layers.

    python bench/quality_default_model.py [--data PATH] [--out bench/results/quality_default_model.json]
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
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "client")]

from mvr.server.encoder import Encoder  # noqa: E402


def metrics(ranks: list[int]) -> dict[str, float]:
    """ranks: 1-based rank of the relevant document per query."""
    r = np.array(ranks)
    return {
        "mrr@10": float(np.mean(np.where(r <= 10, 1.0 / r, 0.0))),
        "recall@1": float(np.mean(r <= 1)),
        "recall@10": float(np.mean(r <= 10)),
    }


def maxsim_ranks(queries: list[np.ndarray], docs: list[np.ndarray]) -> tuple[list[int], np.ndarray]:
    scores = np.array([[float((q @ d.T).max(axis=1).sum()) for d in docs] for q in queries])
    return [int((scores[i] > scores[i, i]).sum()) + 1 for i in range(len(queries))], scores


def mean_pooled(encoded: list[np.ndarray]) -> np.ndarray:
    pooled = np.stack([e.mean(axis=0) for e in encoded])
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "papers-dev.jsonl"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "quality_default_model.json"))
    args = parser.parse_args()
    papers = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    titles, abstracts = [p["title"] for p in papers], [p["abstract"] for p in papers]
    results: dict[str, object] = {
        "corpus": args.data,
        "documents": len(papers),
        "machine": platform.machine(),
    }

    for label, quantize in (("float32", False), ("int8_dynamic", True)):
        encoder = Encoder.load("default", quantize=quantize)
        started = time.perf_counter()
        docs = [e.vectors for e in encoder.encode_documents(abstracts)]
        encode_s = time.perf_counter() - started
        queries = [e.vectors for e in encoder.encode_queries(titles)]
        ranks, scores = maxsim_ranks(queries, docs)
        entry = {"maxsim": metrics(ranks), "document_encode_seconds": round(encode_s, 2)}
        if not quantize:
            reference_scores = scores
            q, d = mean_pooled(queries), mean_pooled(docs)
            single = q @ d.T
            entry["mean_pooled_cosine"] = metrics(
                [int((single[i] > single[i, i]).sum()) + 1 for i in range(len(papers))]
            )
        else:
            top_float = np.argsort(-reference_scores, axis=1)[:, :10]
            top_int8 = np.argsort(-scores, axis=1)[:, :10]
            entry["top10_overlap_with_float32"] = float(
                np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top_float, top_int8, strict=True)])
            )
            entry["maxsim_score_correlation_with_float32"] = float(
                np.corrcoef(reference_scores.ravel(), scores.ravel())[0, 1]
            )
        results[label] = entry
        print(label, json.dumps(entry))
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
