"""Token-level candidates and the cheap approximate late-interaction passes of the search cascade.

Owns the two Numba kernels that sit between the first stage and the exact MaxSim:

* :func:`probe_lists` — the token-level candidate source (PLAID / WARP): every query token probes the
  inverted lists of its ``n_probe`` best centroids; a document found there scores that centroid's
  similarity for that query token, and a query token that found nothing in it is imputed the
  similarity of the first centroid it did not probe (an upper bound of what it missed). One pass over
  the probed postings; the documents are ranked by that sum.
* :func:`centroid_interaction` — Σ over query tokens of the max over a document's distinct centroids
  of ⟨q, centroid⟩: late interaction with every token replaced by its centroid, so thousands of
  candidates cost about a millisecond.

The probe reads the query-token × centroid similarities as float32, :meth:`CentroidTable.scores`
(centroid-major: a centroid's row of query-token scores is contiguous; computed from an int8 copy of
the centroids). Centroid interaction reads them quantised to one byte on one affine scale,
:func:`byte_scores`, rows padded to a multiple of :data:`LANES` query tokens: a row block is one
32-byte load and one unsigned-max instruction (``llvm.umax.v32i8``, emitted directly: LLVM did not
vectorise the scalar maxima of the float kernel this replaces), and the table (8,192 centroids × 32
tokens: 256 KiB) stays in L2 where the float one (1 MiB) did not (bench/profile_search.py, 100k
documents, 8,192 centroids, 2,000 candidates: 5.4 → 1.6 ms, the quantisation included). One scale for
the whole table keeps the sum of byte maxima an affine function of the sum of the dequantised maxima,
so it ranks documents as they would, up to rounding (at most half a step, ≈ 0.003, per query token).

Both work on *slots*: dense document positions of :class:`mvr.server.tokens.TokenIndex`; the caller
maps slots to labels and drops versions that are no longer live.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 32  # uint8 lanes of an AVX2 register: the interaction kernel's block of query tokens


# int8 centroids widened to float32 per GEMM of the query × centroid scores (512 KiB of scratch)
_WIDEN_ROWS = 1024


@dataclass(frozen=True)
class CentroidTable:
    """A codec's centroids as the centroid stages read them: one int8 per coordinate on a scale per
    dimension, a quarter of the float32 bytes.

    The query × centroid scores read every centroid once a query, and the float32 matrix (4 MiB at
    8,192 centroids, 8 MiB at 16,384) does not stay in cache from one query to the next. The int8
    copy is read instead, a block of rows widened to float32 at a time, the per-dimension scale folded
    into the query: bench/profile_search.py at 100k documents, side by side, 1.36 → 1.18 ms a query
    at 8,192 centroids and 2.81 → 2.18 ms at 16,384, every stage's recall unchanged. Each score is
    off by at most ``Σ_d |q_d| · scale_d / 2`` (:meth:`error_bound`): these scores only choose
    candidates (the probe's lists and imputed scores, centroid interaction's byte table, itself
    rounded to ~0.005), never rank the answer."""

    codes: np.ndarray  # int8 (K, dim): round(centroid / scale)
    scale: np.ndarray  # float32 (dim,): the largest |coordinate| of the dimension / 127

    @classmethod
    def of(cls, centroids: np.ndarray) -> CentroidTable:
        centroids = np.asarray(centroids, dtype=np.float32)
        # 0 in a dimension no centroid uses: its codes are 0 (a codec has at least one centroid)
        scale = (np.abs(centroids).max(axis=0) / 127.0).astype(np.float32)
        codes = np.clip(np.rint(centroids / np.where(scale > 0, scale, 1.0)), -127, 127).astype(np.int8)
        return cls(np.ascontiguousarray(codes), scale)

    @property
    def n_centroids(self) -> int:
        return int(self.codes.shape[0])

    def scores(self, query: np.ndarray) -> np.ndarray:
        """≈ ⟨q_i, centroid_c⟩ as float32 (K, m), C-contiguous (centroid-major), within
        :meth:`error_bound`."""
        scaled = np.ascontiguousarray((np.asarray(query, dtype=np.float32) * self.scale).T)  # (dim, m)
        out = np.empty((self.n_centroids, scaled.shape[1]), dtype=np.float32)
        scratch = np.empty((min(_WIDEN_ROWS, self.n_centroids), self.codes.shape[1]), dtype=np.float32)
        for start in range(0, self.n_centroids, _WIDEN_ROWS):
            stop = min(start + _WIDEN_ROWS, self.n_centroids)
            _widen(self.codes, start, stop, scratch)
            np.matmul(scratch[: stop - start], scaled, out=out[start:stop])
        return out

    def error_bound(self, query: np.ndarray) -> np.ndarray:
        """float32 (m,): how far :meth:`scores` can be from the float32 centroids' scores, per query
        token (rounding to the int8 grid; float32 summation adds ~1e-6)."""
        return np.abs(np.asarray(query, dtype=np.float32)) @ (self.scale / 2)


@numba.njit(cache=True, fastmath=True)
def _widen(codes, start, stop, out):
    """out[: stop − start] ← codes[start:stop] as float32."""
    for r in range(stop - start):
        row = codes[start + r]
        for j in range(row.shape[0]):
            out[r, j] = np.float32(row[j])


@numba.njit(cache=True)
def byte_scores(scores):
    """``scores`` (K, m) quantised to uint8 on one affine scale: (table uint8 (K, m rounded up to a
    multiple of LANES), lo, step) with ``scores[c, i] ≈ lo + step · table[c, i]`` (error ≤ step / 2).
    Padding columns are 0 in every row, so they add the same (nothing) to every document's sum."""
    n_centroids, n_query = scores.shape
    lo, hi = np.float32(np.inf), np.float32(-np.inf)
    for c in range(n_centroids):
        for i in range(n_query):
            lo = min(lo, scores[c, i])
            hi = max(hi, scores[c, i])
    table = np.zeros((n_centroids, -(-n_query // LANES) * LANES), dtype=np.uint8)
    if not hi > lo:  # one value everywhere (or no query token): every byte 0 ranks every document alike
        return table, lo, np.float32(0.0)
    scale = np.float32(255.0) / (hi - lo)
    for c in range(n_centroids):
        for i in range(n_query):
            table[c, i] = np.uint8(min(255, np.int32((scores[c, i] - lo) * scale + np.float32(0.5))))
    return table, lo, (hi - lo) / np.float32(255.0)


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

    ``scores``: :meth:`CentroidTable.scores` of a query. ``probes``: :func:`probe_table`, int64
    (query tokens, n_probe + 1), each row the query token's best centroids in descending score; the
    last column is the first centroid *not* probed, whose score is imputed to a document the token
    did not find. Returns (slots int64, scores float32) of at most ``keep`` live documents, in no
    particular order (:func:`best_positions`: ties at the cut go to the documents found first)."""
    n_query, n_probe = probes.shape[0], probes.shape[1] - 1
    imputed = np.empty(n_query, dtype=np.float32)
    base = np.float32(0.0)
    for i in range(n_query):
        imputed[i] = scores[probes[i, n_probe], i]
        base += imputed[i]
    # which slots any query token found, and which the current one did: bitmaps (12.5 KiB per 100k
    # slots, in L1), so that a posting costs a random access to ``gain`` only when it counts
    words = (n_slots + 63) // 64
    found = np.zeros(words, dtype=np.uint64)
    found_by_token = np.empty(words, dtype=np.uint64)
    gain = np.empty(n_slots, dtype=np.float32)
    touched = np.empty(n_slots, dtype=np.int32)
    n_touched = 0
    for i in range(n_query):
        found_by_token[:] = 0
        for p in range(n_probe):
            c = probes[i, p]
            delta = scores[c, i] - imputed[i]
            for q in range(list_offsets[c], list_offsets[c + 1]):
                s = list_slots[q]
                word, bit = s >> 6, np.uint64(1) << np.uint64(s & 63)
                if found_by_token[word] & bit:
                    continue  # probes descend: the first centroid that found s is its best for i
                found_by_token[word] |= bit
                if found[word] & bit:
                    gain[s] += delta
                else:
                    found[word] |= bit
                    gain[s] = delta
                    touched[n_touched] = s
                    n_touched += 1
    n_found = 0  # dead versions are dropped once here rather than tested at every posting
    for k in range(n_touched):
        if alive[touched[k]]:
            touched[n_found] = touched[k]
            n_found += 1
    approximate = np.empty(n_found, dtype=np.float32)
    for k in range(n_found):
        approximate[k] = gain[touched[k]] + base
    top = best_positions(approximate, keep)
    return touched[top].astype(np.int64), approximate[top]


_SELECT_BINS = 4096


@numba.njit(cache=True)
def best_positions(values, keep):
    """Positions of the ``keep`` largest of ``values`` (all of them if fewer), ties at the cut to the
    lower positions; above the cut in ascending position, then the cut's bin best first. A histogram
    finds the bin of the cut in two passes (a large collection touches tens of thousands of documents:
    a partition and a sort of them cost more than the walk over the postings)."""
    n = values.shape[0]
    if n <= keep:
        return np.arange(n)
    lo, hi = values.min(), values.max()
    scale = (_SELECT_BINS - 1) / (np.float64(hi) - np.float64(lo)) if hi > lo else 0.0
    bins = np.empty(n, dtype=np.int32)
    counts = np.zeros(_SELECT_BINS, dtype=np.int64)
    for k in range(n):
        bins[k] = min(_SELECT_BINS - 1, int((np.float64(values[k]) - lo) * scale))
        counts[bins[k]] += 1
    cut, above = _SELECT_BINS - 1, 0
    while above + counts[cut] < keep:  # bins are monotone in value: every bin above the cut is kept
        above += counts[cut]
        cut -= 1
    out = np.empty(keep, dtype=np.int64)
    at_cut = np.empty(counts[cut], dtype=np.int64)
    n_out = n_cut = 0
    for k in range(n):
        if bins[k] > cut:
            out[n_out] = k
            n_out += 1
        elif bins[k] == cut:
            at_cut[n_cut] = k
            n_cut += 1
    out[n_out:] = at_cut[np.argsort(-values[at_cut], kind="mergesort")[: keep - n_out]]
    return out


@intrinsic
def _max_rows_sum(typingctx, table, rows, first, last, column):
    """Σ over LANES byte lanes j of max over t in [first, last) of ``table[rows[t], column + j]``
    (0 if the range is empty), as int64: the maxima live in one <32 x i8> register (``llvm.umax``),
    summed once at the end. ``table``: uint8 (K, width) C-contiguous, ``column + LANES ≤ width``;
    ``rows``: unsigned integers < K. Neither is checked here: the caller guarantees them."""
    if not (
        isinstance(table, types.Array)
        and table.dtype == types.uint8
        and table.ndim == 2
        and table.layout == "C"
        and isinstance(rows, types.Array)
        and rows.ndim == 1
        and isinstance(rows.dtype, types.Integer)
        and not rows.dtype.signed
        and all(isinstance(ty, types.Integer) for ty in (first, last, column))
    ):
        return None

    def codegen(context, builder, signature, args):
        table_ty, rows_ty, first_ty, last_ty, column_ty = signature.args
        i64 = ir.IntType(64)
        lanes = ir.VectorType(ir.IntType(8), LANES)
        wide = ir.VectorType(ir.IntType(32), LANES)
        table_array = context.make_array(table_ty)(context, builder, args[0])
        rows_array = context.make_array(rows_ty)(context, builder, args[1])
        start = context.cast(builder, args[2], first_ty, types.int64)
        stop = context.cast(builder, args[3], last_ty, types.int64)
        column = context.cast(builder, args[4], column_ty, types.int64)
        row_bytes = builder.extract_value(table_array.strides, 0)
        base = builder.gep(table_array.data, [column])
        umax = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(lanes, [lanes, lanes]), f"llvm.umax.v{LANES}i8"
        )
        add = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(32), [wide]), f"llvm.vector.reduce.add.v{LANES}i32"
        )
        maxima = cgutils.alloca_once(builder, lanes)  # promoted to a register by LLVM's mem2reg
        builder.store(ir.Constant(lanes, None), maxima)
        with cgutils.for_range_slice(builder, start, stop, i64(1), intp=i64) as (t, _):
            row = builder.zext(builder.load(builder.gep(rows_array.data, [t])), i64)
            pointer = builder.bitcast(builder.gep(base, [builder.mul(row, row_bytes)]), lanes.as_pointer())
            builder.store(builder.call(umax, [builder.load(maxima), builder.load(pointer, align=1)]), maxima)
        total = builder.call(add, [builder.zext(builder.load(maxima), wide)])
        return builder.zext(total, i64)

    return types.int64(table, rows, first, last, column), codegen


@numba.njit(cache=True)
def centroid_interaction(table, doc_cids, doc_offsets, slots):
    """Σ_i max over a document's distinct centroids c of table[c, i], for each slot, as int64.

    ``table``: :func:`byte_scores` (columns a multiple of LANES; zero padding adds nothing). The sums
    rank documents as Σ_i max_c ⟨q_i, c⟩ does, up to rounding: that sum ≈ m · lo + step · result."""
    if table.shape[1] % LANES:
        raise ValueError("centroid_interaction: table columns must be a multiple of LANES")
    out = np.empty(slots.shape[0], dtype=np.int64)
    for r in range(slots.shape[0]):
        s = slots[r]
        first, last = doc_offsets[s], doc_offsets[s + 1]
        total = 0
        for column in range(0, table.shape[1], LANES):
            total += _max_rows_sum(table, doc_cids, first, last, column)
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
    worst = np.full(n_query, -np.inf, dtype=np.float32)  # value[:, width - 1], contiguous
    filled = np.zeros(n_query, dtype=np.int64)
    for c in range(n_centroids):
        row = scores[c]
        # most rows beat no query token's current worst: one vectorised pass over the row rules them
        # out (the first ``width`` rows fill every list whatever their scores)
        better = False
        for i in range(n_query):
            better |= row[i] > worst[i]
        if not better and c >= width:
            continue
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
            worst[i] = value[i, width - 1]
    if top.shape[1] > width:
        top[:, width] = top[:, width - 1]
    return top
