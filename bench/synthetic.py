"""Seeded synthetic multi-vector corpora with cluster structure, for recall and speed benchmarks.

Tokens are drawn around topic centroids (unit vectors) with Gaussian noise and re-normalised; each
document mixes a few topics and has 30–200 tokens; a query mixes the topics of one document with
fresh noise. This gives the near-duplicate neighbourhoods that make first-stage retrieval hard, which
uniform random vectors do not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Corpus:
    tokens: np.ndarray  # float32 (n_tokens, dim), unit rows
    offsets: np.ndarray  # int64 (n_docs + 1,)
    topics: list[np.ndarray]  # topic ids of each document

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    def document(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_corpus(
    n_docs: int,
    dim: int = 128,
    *,
    n_topics: int = 2000,
    topics_per_doc: int = 4,
    min_tokens: int = 30,
    max_tokens: int = 200,
    noise: float = 0.06,
    seed: int = 0,
) -> tuple[Corpus, np.ndarray]:
    """(corpus, centroids). ``noise`` is per dimension: token-to-centroid distance ≈ noise·√dim."""
    rng = np.random.default_rng(seed)
    centroids = _normalise(rng.standard_normal((n_topics, dim)))
    sizes = rng.integers(min_tokens, max_tokens + 1, size=n_docs)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    tokens = np.empty((int(offsets[-1]), dim), dtype=np.float32)
    topics = []
    for i, size in enumerate(sizes):
        chosen = rng.choice(n_topics, size=topics_per_doc, replace=False)
        topics.append(chosen)
        picks = chosen[rng.integers(0, topics_per_doc, size=size)]
        tokens[offsets[i] : offsets[i + 1]] = _normalise(
            centroids[picks] + noise * rng.standard_normal((size, dim)).astype(np.float32)
        )
    return Corpus(tokens, offsets, topics), centroids


def make_queries(
    corpus: Corpus,
    centroids: np.ndarray,
    n_queries: int,
    *,
    tokens: int = 32,
    noise: float = 0.06,
    seed: int = 1,
) -> list[np.ndarray]:
    """Queries about the topics of random documents (a subset of them, as a real query would)."""
    rng = np.random.default_rng(seed)
    queries = []
    for _ in range(n_queries):
        source = corpus.topics[int(rng.integers(corpus.n_docs))]
        chosen = rng.choice(source, size=max(1, len(source) // 2), replace=False)
        picks = chosen[rng.integers(0, len(chosen), size=tokens)]
        queries.append(
            _normalise(centroids[picks] + noise * rng.standard_normal((tokens, centroids.shape[1])))
        )
    return queries
