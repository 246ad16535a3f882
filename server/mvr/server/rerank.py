"""Exact late-interaction scoring: Chamfer / MaxSim of a query against candidate documents.

Owns the second stage. score(Q, D) = Σ_q max_d ⟨q, d⟩ over the documents' stored token vectors. The
candidates' tokens are gathered into one ragged float32 matrix; one BLAS GEMM gives every query-token ×
document-token similarity, and a Numba kernel takes the maximum within each document's own segment
(ragged: there is no padding, so no padded zero can beat an all-negative row) and sums over query
tokens in float32. The argmax per (query token, document) gives the per-token explanation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np


@dataclass(frozen=True)
class Scored:
    """Scores of candidate documents; ``best_tokens`` (q, m) only when asked for."""

    scores: np.ndarray  # float32 (m,)
    token_scores: np.ndarray | None  # float32 (q, m): each query token's best similarity per document
    best_tokens: np.ndarray | None  # int64 (q, m): index of that token within the document


def maxsim(query: np.ndarray, tokens: np.ndarray, offsets: np.ndarray, explain: bool = False) -> Scored:
    """Chamfer similarity of ``query`` (q, dim) to each document of a ragged batch.

    ``tokens`` (n, dim) holds the documents' token vectors back to back; document i is
    ``tokens[offsets[i]:offsets[i+1]]`` and must have at least one token.
    """
    query = np.ascontiguousarray(query, dtype=np.float32)
    tokens = np.ascontiguousarray(tokens, dtype=np.float32)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    if len(offsets) < 2:
        empty = np.zeros(0, dtype=np.float32)
        return (
            Scored(empty, None, None)
            if not explain
            else Scored(empty, np.zeros((len(query), 0), np.float32), np.zeros((len(query), 0), np.int64))
        )
    similarities = query @ tokens.T  # (q, n), one GEMM over all candidates
    kernel = _segment_max_parallel if similarities.size >= PARALLEL_MIN_WORK else _segment_max_serial
    best, where = kernel(similarities, offsets)
    scores = best.sum(axis=0, dtype=np.float32)
    if not explain:
        return Scored(scores, None, None)
    return Scored(scores, best, where - offsets[:-1][None, :])


def _segment_max(similarities, offsets):
    n_query, n_docs = similarities.shape[0], len(offsets) - 1
    best = np.empty((n_query, n_docs), dtype=np.float32)
    where = np.empty((n_query, n_docs), dtype=np.int64)
    for doc in numba.prange(n_docs):
        start, stop = offsets[doc], offsets[doc + 1]
        for q in range(n_query):
            top = similarities[q, start]
            arg = start
            for t in range(start + 1, stop):
                value = similarities[q, t]
                if value > top:
                    top = value
                    arg = t
            best[q, doc] = top
            where[q, doc] = arg
    return best, where


# Waking Numba's thread pool costs milliseconds when torch's OpenMP threads are about; a typical
# rerank (32 query tokens × 100 candidates × ~100 tokens) is faster on one thread.
_segment_max_parallel = numba.njit(parallel=True, cache=True)(_segment_max)
_segment_max_serial = numba.njit(parallel=False, cache=True)(_segment_max)
PARALLEL_MIN_WORK = 4_000_000
