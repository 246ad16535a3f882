"""Exact late-interaction scoring: Chamfer / MaxSim of a query against candidate documents.

Owns the last stage. score(Q, D) = Σ_q max_d ⟨q, d⟩ over the documents' token vectors. The
candidates' tokens are read a tile at a time (about :data:`TILE_TOKENS` rows: whole documents, decoded
or converted into one float32 buffer that stays in cache), one BLAS GEMM per tile gives every
document-token × query-token similarity (token-major: OpenBLAS runs ``tile @ query.T`` faster than
``query @ tile.T`` when the query is the thin side), and a Numba kernel takes the maximum over each
document's own rows (ragged: there is no padding, so no padded zero can beat an
all-negative row); scores are summed over query tokens in float32. With ``explain`` the kernel also
keeps the argmax per (query token, document): the per-token explanation.

Tiling is what makes this stage cheap: decoding all candidates first and then multiplying wrote and
re-read a buffer larger than the cache (bench/profile_search.py, 10k topic documents, ~160 candidates:
8.6 ms against 10.0 ms, side by side).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np
from mvr.server.errors import check_deadline

# Tokens per tile: (2048 × 128) float32 is 1 MiB, which stays in L2/L3 between the read and the GEMM.
TILE_TOKENS = 2048

# read(start, stop, buffer) → float32 (tokens of documents [start, stop), dim): their tokens back to
# back, written into ``buffer`` (exactly that many rows) or returned as a view of an existing array.
TileReader = Callable[[int, int, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Scored:
    """Scores of candidate documents; ``token_scores`` and ``best_tokens`` (q, m) only when asked for."""

    scores: np.ndarray  # float32 (m,)
    token_scores: np.ndarray | None  # float32 (q, m): each query token's best similarity per document
    best_tokens: np.ndarray | None  # int64 (q, m): index of that token within the document


def maxsim(query: np.ndarray, tokens: np.ndarray, offsets: np.ndarray, explain: bool = False) -> Scored:
    """Chamfer similarity of ``query`` (q, dim) to each document of a ragged batch.

    ``tokens`` (n, dim) holds the documents' token vectors back to back; document i is
    ``tokens[offsets[i]:offsets[i+1]]`` and must have at least one token.
    """
    tokens = np.ascontiguousarray(tokens, dtype=np.float32)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    return maxsim_tiled(
        query, np.diff(offsets), lambda start, stop, _: tokens[offsets[start] : offsets[stop]], explain
    )


def maxsim_tiled(
    query: np.ndarray,
    counts: np.ndarray,
    read: TileReader,
    explain: bool = False,
    deadline: float | None = None,
) -> Scored:
    """Chamfer similarity of ``query`` (q, dim) to documents of ``counts[i]`` ≥ 1 tokens each, whose
    tokens ``read`` produces a tile of whole documents at a time. Stops with DeadlineExceeded before a
    tile once ``deadline`` (``time.monotonic()``) has passed."""
    query = np.ascontiguousarray(query, dtype=np.float32)
    n_query, n_docs = len(query), len(counts)
    offsets = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    best = np.empty((n_query, n_docs), dtype=np.float32)
    where = np.empty((n_query, n_docs), dtype=np.int64) if explain else None
    if n_docs:
        buffer = np.empty((max(TILE_TOKENS, int(counts.max())), query.shape[1]), dtype=np.float32)
        start = 0
        for stop in tile_bounds(offsets, TILE_TOKENS):
            check_deadline(deadline, "the exact scoring's next tile")
            rows = offsets[start : stop + 1] - offsets[start]
            tile = read(start, stop, buffer[: rows[-1]])
            similarities = tile @ query.T  # (tile rows, q), one GEMM per tile
            if explain:
                _segment_argmax(similarities, rows, start, best, where)
            else:
                _segment_max(similarities, rows, start, best)
            start = stop
    scores = best.sum(axis=0, dtype=np.float32)
    return Scored(scores, best, where) if explain else Scored(scores, None, None)


def tile_bounds(offsets: np.ndarray, tile_tokens: int) -> list[int]:
    """End document of each tile: whole documents, greedily up to ``tile_tokens`` rows (a longer
    document is a tile of its own)."""
    bounds, start, n_docs = [], 0, len(offsets) - 1
    while start < n_docs:
        stop = int(np.searchsorted(offsets, offsets[start] + tile_tokens, side="right")) - 1
        start = max(stop, start + 1)
        bounds.append(start)
    return bounds


@numba.njit(cache=True, fastmath=True)
def _segment_max(similarities, rows, first, best):
    """best[q, first + d] ← max of similarities[rows[d]:rows[d + 1], q]."""
    n_query = similarities.shape[1]
    top = np.empty(n_query, dtype=np.float32)
    for d in range(rows.shape[0] - 1):
        top[:] = similarities[rows[d]]
        for t in range(rows[d] + 1, rows[d + 1]):
            row = similarities[t]
            for q in range(n_query):
                top[q] = max(top[q], row[q])
        best[:, first + d] = top


@numba.njit(cache=True)
def _segment_argmax(similarities, rows, first, best, where):
    """:func:`_segment_max`, and where[q, first + d] ← the position of that maximum in document d
    (the first, on ties)."""
    for d in range(rows.shape[0] - 1):
        start, stop = rows[d], rows[d + 1]
        for q in range(similarities.shape[1]):
            top = similarities[start, q]
            arg = start
            for t in range(start + 1, stop):
                value = similarities[t, q]
                if value > top:
                    top = value
                    arg = t
            best[q, first + d] = top
            where[q, first + d] = arg - start
