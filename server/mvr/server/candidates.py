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

Both work on *slots*: dense document positions of :class:`mvr.server.tokens.TokenIndex`; the caller
maps slots to labels and drops versions that are no longer live.
"""

from __future__ import annotations

import numba
import numpy as np


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
def probe_lists(similarities, probes, list_offsets, list_slots, n_slots, alive, keep):
    """Approximate scores of the documents found by probing, and the best ``keep`` of them.

    ``similarities``: float32 (m, K) query tokens × centroids. ``probes``: int64 (m, n_probe + 1), each
    row the query token's best centroids in descending similarity; the last column is the first
    centroid *not* probed, whose similarity is imputed to a document the token did not find.
    Returns (slots int64, scores float32) of at most ``keep`` documents, best first."""
    m, width = probes.shape
    n_probe = width - 1
    imputed = np.empty(m, dtype=np.float32)
    base = np.float32(0.0)
    for i in range(m):
        imputed[i] = similarities[i, probes[i, n_probe]]
        base += imputed[i]
    gain = np.zeros(n_slots, dtype=np.float32)
    stamp = np.full(n_slots, -1, dtype=np.int32)
    touched = np.empty(n_slots, dtype=np.int64)
    n_touched = 0
    seen = np.zeros(n_slots, dtype=np.uint8)
    for i in range(m):
        for p in range(n_probe):
            c = probes[i, p]
            delta = similarities[i, c] - imputed[i]
            for q in range(list_offsets[c], list_offsets[c + 1]):
                s = list_slots[q]
                if stamp[s] == i or not alive[s]:
                    continue  # probes descend: the first centroid that found s is its best for i
                stamp[s] = i
                gain[s] += delta
                if not seen[s]:
                    seen[s] = 1
                    touched[n_touched] = s
                    n_touched += 1
    found = touched[:n_touched]
    scores = gain[found] + base
    top = np.argsort(-scores)[:keep]
    return found[top], scores[top]


@numba.njit(cache=True, fastmath=True)
def centroid_interaction(similarities_t, doc_cids, doc_offsets, slots):
    """Σ_i max over a document's distinct centroids c of similarities_t[c, i], for each slot.

    ``similarities_t``: float32 (K, m), centroid-major so that one centroid's row is contiguous."""
    m = similarities_t.shape[1]
    out = np.empty(slots.shape[0], dtype=np.float32)
    best = np.empty(m, dtype=np.float32)
    for r in range(slots.shape[0]):
        s = slots[r]
        best[:] = -np.inf
        for t in range(doc_offsets[s], doc_offsets[s + 1]):
            row = similarities_t[doc_cids[t]]
            for i in range(m):
                best[i] = max(best[i], row[i])
        total = np.float32(0.0)
        for i in range(m):
            total += best[i]
        out[r] = total
    return out


def probe_table(similarities: np.ndarray, n_probe: int) -> np.ndarray:
    """Each query token's ``n_probe`` best centroids in descending similarity, then the next one
    (int64 (m, n_probe + 1)): the input of :func:`probe_lists`."""
    n_centroids = similarities.shape[1]
    width = min(n_probe + 1, n_centroids)
    part = np.argpartition(-similarities, width - 1, axis=1)[:, :width]
    order = np.argsort(-np.take_along_axis(similarities, part, axis=1), axis=1, kind="stable")
    table = np.take_along_axis(part, order, axis=1).astype(np.int64)
    if width < n_probe + 1:  # fewer centroids than probes: every centroid probed, impute the worst
        table = np.concatenate([table, table[:, -1:]], axis=1)
    return table
