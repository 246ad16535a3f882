"""Token-level candidates and the cheap approximate late-interaction passes of the search cascade.

Owns the two Numba kernels that sit between the first stage and the exact MaxSim:

* :func:`probe_lists` — the token-level candidate source (PLAID / WARP): every query token probes the
  inverted lists of its ``n_probe`` best centroids; a document found there scores that centroid's
  similarity for that query token, and a query token that found nothing in it is imputed the
  similarity of the first centroid it did not probe (an upper bound of what it missed). One pass over
  the probed postings; the documents are ranked by that sum.
* :func:`centroid_interaction` — Σ over query tokens of the max over a document's distinct centroids
  of ⟨q, centroid⟩: late interaction with every token replaced by its centroid, one (query tokens)-wide
  row lookup per distinct centroid of a candidate, so thousands of candidates cost a few milliseconds.

Both read one table of query-token × centroid similarities, :func:`centroid_scores`: centroid-major
(a centroid's row of query-token scores is contiguous) and padded to a multiple of :data:`LANES`
query tokens with zero columns, so that the interaction kernel keeps eight running maxima in one
vector register (bench/profile_search.py, 10k documents, 1,000 candidates: 1.2–1.7 ms, was 3.4).

Both work on *slots*: dense document positions of :class:`mvr.server.tokens.TokenIndex`; the caller
maps slots to labels and drops versions that are no longer live.
"""

from __future__ import annotations

import numba
import numpy as np

LANES = 8  # float32 lanes of an AVX2 register: the interaction kernel's block of query tokens


def centroid_scores(centroids: np.ndarray, query: np.ndarray) -> np.ndarray:
    """⟨q_i, centroid_c⟩ as float32 (K, m rounded up to a multiple of LANES); the padding columns
    are 0, so they add nothing to a sum of maxima and are never read as query tokens."""
    padded = np.zeros((-(-len(query) // LANES) * LANES, query.shape[1]), dtype=np.float32)
    padded[: len(query)] = query
    return centroids @ padded.T


@numba.njit(cache=True)
def build_lists(doc_cids, doc_offsets, n_slots, n_centroids):
    """Inverted lists (centroid → slots holding it) of slots ``[0, n_slots)``, by counting sort.

    Returns (list_offsets int64 (K+1,), list_slots int32 (postings,)); slots ascend within a list."""
    counts = np.zeros(n_centroids + 1, dtype=np.int64)
    for s in range(n_slots):
        for t in range(doc_offsets[s], doc_offsets[s + 1]):
            counts[doc_cids[t] + 1] += 1
    for c in range(n_centroids):
        counts[c + 1] += counts[c]
    list_offsets = counts.copy()
    cursor = counts[:-1].copy()
    list_slots = np.empty(list_offsets[-1], dtype=np.int32)
    for s in range(n_slots):
        for t in range(doc_offsets[s], doc_offsets[s + 1]):
            c = doc_cids[t]
            list_slots[cursor[c]] = s
            cursor[c] += 1
    return list_offsets, list_slots


@numba.njit(cache=True)
def probe_lists(scores, probes, list_offsets, list_slots, n_slots, alive, keep):
    """Approximate scores of the documents found by probing, and the best ``keep`` of them.

    ``scores``: :func:`centroid_scores` of a query. ``probes``: :func:`probe_table`, int64
    (query tokens, n_probe + 1), each row the query token's best centroids in descending score; the
    last column is the first centroid *not* probed, whose score is imputed to a document the token
    did not find. Returns (slots int64, scores float32) of at most ``keep`` documents, best first."""
    n_query, n_probe = probes.shape[0], probes.shape[1] - 1
    imputed = np.empty(n_query, dtype=np.float32)
    base = np.float32(0.0)
    for i in range(n_query):
        imputed[i] = scores[probes[i, n_probe], i]
        base += imputed[i]
    gain = np.zeros(n_slots, dtype=np.float32)
    stamp = np.full(n_slots, -1, dtype=np.int32)  # the last query token that found the slot; -1: none yet
    touched = np.empty(n_slots, dtype=np.int64)
    n_touched = 0
    for i in range(n_query):
        for p in range(n_probe):
            c = probes[i, p]
            delta = scores[c, i] - imputed[i]
            for q in range(list_offsets[c], list_offsets[c + 1]):
                s = list_slots[q]
                if stamp[s] == i or not alive[s]:
                    continue  # probes descend: the first centroid that found s is its best for i
                if stamp[s] == -1:
                    touched[n_touched] = s
                    n_touched += 1
                stamp[s] = i
                gain[s] += delta
    found = touched[:n_touched]
    approximate = gain[found] + base
    if n_touched > keep:  # select before sorting: a large collection touches tens of thousands
        threshold = np.partition(approximate, n_touched - keep)[n_touched - keep]
        selected = np.flatnonzero(approximate >= threshold)
        found, approximate = found[selected], approximate[selected]
    top = np.argsort(-approximate, kind="mergesort")[:keep]
    return found[top], approximate[top]


@numba.njit(cache=True, fastmath=True)
def centroid_interaction(scores, doc_cids, doc_offsets, slots):
    """Σ_i max over a document's distinct centroids c of scores[c, i], for each slot.

    ``scores``: :func:`centroid_scores` (columns a multiple of LANES; zero padding adds nothing). Eight
    query tokens at a time, their running maxima in scalars that LLVM keeps in one vector register."""
    out = np.empty(slots.shape[0], dtype=np.float32)
    for r in range(slots.shape[0]):
        s = slots[r]
        first, last = doc_offsets[s], doc_offsets[s + 1]
        total = np.float32(0.0)
        for i in range(0, scores.shape[1], LANES):
            m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = np.float32(-np.inf)
            for t in range(first, last):
                row = scores[doc_cids[t]]
                m0 = max(m0, row[i])
                m1 = max(m1, row[i + 1])
                m2 = max(m2, row[i + 2])
                m3 = max(m3, row[i + 3])
                m4 = max(m4, row[i + 4])
                m5 = max(m5, row[i + 5])
                m6 = max(m6, row[i + 6])
                m7 = max(m7, row[i + 7])
            total += ((m0 + m1) + (m2 + m3)) + ((m4 + m5) + (m6 + m7))
        out[r] = total
    return out


@numba.njit(cache=True)
def probe_table(scores, n_query, n_probe):
    """Each query token's ``n_probe`` best centroids in descending score (ties: lower id first), then
    the next one (int64 (n_query, n_probe + 1)): the input of :func:`probe_lists`. One pass over the
    centroid-major table. With no more centroids than probes, all K are probed (K + 1 columns, the
    last repeating the worst: the imputed score)."""
    n_centroids = scores.shape[0]
    width = min(n_probe + 1, n_centroids)
    top = np.empty((n_query, min(n_probe, n_centroids) + 1), dtype=np.int64)
    value = np.full((n_query, width), -np.inf, dtype=np.float32)
    filled = np.zeros(n_query, dtype=np.int64)
    for c in range(n_centroids):
        row = scores[c]
        for i in range(n_query):
            x = row[i]
            if filled[i] == width and not x > value[i, width - 1]:
                continue
            j = min(filled[i], width - 1)
            while j > 0 and x > value[i, j - 1]:  # insertion: strictly better moves up, ties keep order
                value[i, j] = value[i, j - 1]
                top[i, j] = top[i, j - 1]
                j -= 1
            value[i, j] = x
            top[i, j] = c
            filled[i] = min(filled[i] + 1, width)
    if top.shape[1] > width:
        top[:, width] = top[:, width - 1]
    return top
