"""Token codec: per-collection centroids + b-bit residuals (the PLAID compression of token vectors).

Owns training (spherical k-means on a sample of the collection's tokens, then per-dimension buckets
of the residuals: evenly spaced at 8 bits; below, Lloyd–Max levels smoothed to a cubic in the code),
encoding (nearest centroid + each residual dimension's bucket, packed ``bits`` per dimension) and
decoding into contiguous float32 buffers, all over contiguous arrays (BLAS for the nearest-centroid
search, Numba for packing and unpacking). Every decode is arithmetic on the code (lo + code·step at
8 bits, the cubic below) so that it vectorises; codecs trained before the cubic decode below 8 bits
through a table of what each byte stands for.

A token costs ``4 + dim·bits/8`` bytes (a uint16 centroid id, a float16 residual norm and the packed
residual): 132 bytes at 128 dimensions and 8 bits (the default), 68 at 4 bits, 36 at 2, against 256
for float16. The centroid ids double as the vocabulary of the inverted lists and of the
centroid-interaction pass (:mod:`mvr.server.candidates`).

Unlike PLAID, bucket boundaries and reconstruction values are per dimension (a residual's spread
differs by dimension), the residual is quantised *after division by its own norm* (stored per token:
the buckets then spend their levels on the residual's direction, not on how far the token happens to
lie from its centroid; bench/codec.py --scaled 0 1, 10k topic documents, recall@10 of exact MaxSim
over all decoded documents: 2 bits 0.882 → 0.924, 4 bits 0.958 → 0.970, 8 bits 0.996 → 0.998), and
decoded tokens are renormalised to unit length, as the encoder's are.
Codecs trained before the norm was kept (``scaled`` False) decode as they were written.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numba
import numpy as np

SUPPORTED_BITS = (1, 2, 4, 8)
MAX_CENTROIDS = 1 << 16  # ids are stored as uint16
# What default_centroids grows to, by residual width (a collection may ask for more): 4-bit codes lose
# more in the exact stage, so their candidates must come from finer centroids (see default_centroids)
MAX_DEFAULT_CENTROIDS = {8: 8192, 4: 16384, 2: 8192, 1: 8192}
# 8 bits: the tail fractions clipped at each end of a dimension's range that training chooses among
UNIFORM_CLIPS = (0.0, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3)
LLOYD_ROUNDS = 1000  # an upper bound: the steps stop once the cutoffs settle
_ASSIGN_CHUNK = 4096  # tokens per GEMM in the nearest-centroid search: (4096 × K) float32 scratch


def default_centroids(n_tokens: int, bits: int = 8) -> int:
    """Centroids for a codec of ``bits``-bit residuals trained when the collection holds ``n_tokens``
    tokens (the indexer retrains at every 4× growth, so this is re-evaluated as the collection grows).

    Up to ~1M tokens: the largest power of two with at least 32 tokens each (what k-means needs to
    place them), within [256, 4096] — at 10k topic-clustered documents (1.15M tokens) 4,096 kept 0.95
    of the true top-10 in the centroid-interaction top 64, 1,024 only 0.80 (bench/codec.py). Beyond,
    the power of two nearest 4·√n (a quarter of PLAID's 16·√n), at most :data:`MAX_DEFAULT_CENTROIDS`
    for the width: at 100k documents (11.5M tokens, codecs trained on all of them, bench/retrain.py)
    8,192 centroids with 4 probes and 2,000 kept give recall@10 0.955, 4,096 with 2 and 1,000 0.922;
    more centroids cost coding time in proportion (30k tokens/s on two cores at 8,192) and the query ×
    centroid scores grow with them. 4-bit codes go on to 16,384 (from ~8.4M tokens, ~73k documents):
    their exact stage loses 1.5 points of what the candidates hold, so the candidates must hold more;
    at 100k they reach recall@10 0.969 with 144 candidates where 8,192 centroids gave 0.9405,
    and 0.9605 with the 100 candidates searches default to at 16,384 centroids (1.02–1.17× the 8-bit
    defaults' time in process, 1.31× in one pair of server runs), for a build 2.1–2.3× as long
    (bench/profile_search.py, bench/vs_peers.py; BENCHMARKS.md, *More centroids for the 4-bit
    setting*). 2-bit codes were not measured at 100k with more centroids and keep 8,192."""
    if n_tokens <= 0:
        return 256
    fitting = 1 << int(np.floor(np.log2(max(n_tokens // 32, 1))))
    by_size = 1 << int(np.round(np.log2(4 * np.sqrt(n_tokens))))
    return int(min(MAX_DEFAULT_CENTROIDS[bits], max(256, min(fitting, max(4096, by_size)))))


@dataclass(frozen=True, eq=False)
class Codec:
    """Trained centroids and residual quantiser of one collection. Immutable once trained; compared
    and hashed by identity (a collection's records name the codec their codes were written with)."""

    centroids: np.ndarray  # float32 (K, dim), unit rows
    cutoffs: np.ndarray  # float32 (dim, 2**bits - 1): bucket boundaries per dimension, ascending
    values: np.ndarray  # float32 (dim, 2**bits): reconstruction value of each bucket per dimension
    bits: int
    scaled: bool = False  # residuals divided by their norm before quantising; the norm kept per token
    # mean squared residual norm (as stored, float16) of the tokens held out of the training (of the
    # sample when none were): how far new tokens of the trained kind lie from the centroids, the
    # baseline of the indexer's drift measure (None for codecs trained before it was kept)
    distortion: float | None = None
    # below 8 bits: float32 (4, dim), each dimension's level as a cubic in its code k,
    # value = a + b·u + c·u² + d·u³ with u = k − (2**bits − 1)/2 (rows a, b, c, d), codes packed planar
    # (see :func:`code_slot`) and decoded by that arithmetic; None: codes packed interleaved and
    # decoded through the byte table (codecs trained before the levels were fitted)
    level_poly: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def n_centroids(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def residual_bytes(self) -> int:
        """Bytes of one token's packed residual."""
        return self.dim * self.bits // 8

    @property
    def payload_bytes(self) -> int:
        """Bytes of one token after its centroid id: the float16 norm (scaled codecs), then the residual."""
        return SCALE_BYTES * self.scaled + self.residual_bytes

    @property
    def token_bytes(self) -> int:
        """Bytes of one token on disk."""
        return 2 + self.payload_bytes

    # ------------------------------------------------------------------------------ coding

    def assign(self, tokens: np.ndarray, threads: int = 1) -> np.ndarray:
        """Nearest centroid (largest inner product) of each token: uint16 (n,)."""
        return nearest_centroids(tokens, self.centroids, threads)

    def encode(self, tokens: np.ndarray, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(centroid ids uint16 (n,), payloads uint8 (n, payload_bytes)) of float32 tokens: each payload
        the residual's float16 norm (scaled codecs) and its packed buckets."""
        tokens = np.ascontiguousarray(tokens, dtype=np.float32)
        ids = self.assign(tokens, threads)
        payload = np.zeros((len(tokens), self.payload_bytes), dtype=np.uint8)
        inverse_norms = np.ones(len(tokens), dtype=np.float32)
        if self.scaled:
            norms = residual_norms(tokens, self.centroids, ids)
            payload[:, :SCALE_BYTES] = norms.astype("<f2").view(np.uint8).reshape(-1, SCALE_BYTES)
            inverse_norms = _inverse(norms)
        packed = payload[:, SCALE_BYTES * self.scaled :]
        if self.bits == 8:
            _encode_uniform8(tokens, self.centroids, ids, inverse_norms, self.cutoffs, packed)
        else:
            _encode_residuals(
                tokens, self.centroids, ids, inverse_norms, self.cutoffs, self.bits, self.planar, packed
            )
        return ids, payload

    @property
    def planar(self) -> bool:
        """Codes below 8 bits packed planar and decoded by the level polynomial (see ``level_poly``)."""
        return self.level_poly is not None

    def decode(self, ids: np.ndarray, payload: np.ndarray) -> np.ndarray:
        """float32 (n, dim) unit vectors back from :meth:`encode`'s output."""
        data = np.frombuffer(pack_block(ids, payload), dtype=np.uint8)
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        zero = np.zeros(1, dtype=np.int64)
        self.decode_into(data, zero, np.array([len(ids)]), zero, out)
        return out

    def decode_into(
        self, data: np.ndarray, offsets: np.ndarray, counts: np.ndarray, targets: np.ndarray, out: np.ndarray
    ) -> None:
        """Decodes code blocks (see :func:`decode_blocks`) into rows of ``out``."""
        if self.bits == 8:
            lo = np.ascontiguousarray(self.values[:, 0])
            step = np.ascontiguousarray(self.values[:, 1] - self.values[:, 0])
            _decode_uniform8(data, offsets, counts, targets, self.centroids, self.scaled, lo, step, out)
        elif self.level_poly is not None:
            a, b, c, d = self.level_poly
            _decode_polynomial(
                data, offsets, counts, targets, self.centroids, self.scaled, self.bits, a, b, c, d, out
            )
        else:
            table = self._byte_table()
            decode_blocks(data, offsets, counts, targets, self.centroids, self.scaled, table, out)

    def _byte_table(self) -> np.ndarray:
        table = self.__dict__.get("_table")
        if table is None:
            table = byte_table(self.values, self.bits)
            object.__setattr__(self, "_table", table)  # a cache derived from frozen fields
        return table

    def decode_table(self) -> np.ndarray:
        """(residual_bytes, 256, dims per byte) float32: what each byte value adds to its dimensions,
        for :func:`decode_blocks` (interleaved codes; a planar codec decodes by its polynomial)."""
        if self.planar:
            raise ValueError("decode_table: a planar codec decodes by its level polynomial, not a table")
        return self._byte_table()

    # ------------------------------------------------------------------------------ persistence

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            centroids=self.centroids,
            cutoffs=self.cutoffs,
            values=self.values,
            bits=np.array(self.bits),
            scaled=np.array(self.scaled),
            distortion=np.array(np.nan if self.distortion is None else self.distortion),
            **({} if self.level_poly is None else {"level_poly": self.level_poly}),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Codec:
        with np.load(io.BytesIO(data)) as arrays:
            return cls(
                np.ascontiguousarray(arrays["centroids"], np.float32),
                np.ascontiguousarray(arrays["cutoffs"], np.float32),
                np.ascontiguousarray(arrays["values"], np.float32),
                int(arrays["bits"]),
                bool(arrays["scaled"]) if "scaled" in arrays.files else False,  # older codecs: unscaled
                _stored_distortion(arrays),
                # older codecs: none (interleaved codes, table decode)
                np.ascontiguousarray(arrays["level_poly"], np.float32)
                if "level_poly" in arrays.files
                else None,
            )

    def save(self, path: Path) -> None:
        path.write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path: Path) -> Codec:
        return cls.from_bytes(path.read_bytes())


def _stored_distortion(arrays) -> float | None:
    value = float(arrays["distortion"]) if "distortion" in arrays.files else math.nan
    return None if math.isnan(value) else value


# ---------------------------------------------------------------------------------------- training


def train(
    sample: np.ndarray,
    n_centroids: int,
    bits: int,
    *,
    iterations: int = 8,
    seed: int = 0,
    threads: int = 1,
    scaled: bool = True,
    lloyd_rounds: int = LLOYD_ROUNDS,
    uniform_clips: tuple[float, ...] = UNIFORM_CLIPS,
    held_out: np.ndarray | None = None,
    polynomial: bool = True,
) -> Codec:
    """Spherical k-means over ``sample`` (float32 (n, dim), unit rows), then per-dimension residual
    buckets fitted to the sample's residuals (each divided by its norm when ``scaled``): evenly spaced
    at 8 bits (over the range that ``uniform_clips`` offers with the least squared error), Lloyd–Max
    (``lloyd_rounds`` steps from equal-probability quantiles) below. ``held_out`` tokens, when given,
    stay out of the k-means and measure the codec's ``distortion`` (the sample's own understates what
    new tokens of the same kind show, since the centroids were fitted to it); the residual buckets are
    fitted to them too (left out, their tails fell outside the 8-bit range and were clipped).
    ``polynomial`` (below 8 bits): replace each dimension's Lloyd–Max levels by the cubic in the code
    that fits them best (:func:`_polynomial_levels`), so that codes decode by arithmetic."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    if not 1 <= n_centroids <= min(MAX_CENTROIDS, len(sample)):
        raise ValueError(f"n_centroids must be in [1, {min(MAX_CENTROIDS, len(sample))}], got {n_centroids}")
    if lloyd_rounds < 0:
        raise ValueError(f"lloyd_rounds must be >= 0, got {lloyd_rounds}")
    if not uniform_clips or not all(0.0 <= q < 0.5 for q in uniform_clips):
        raise ValueError(f"uniform_clips must be fractions in [0, 0.5), at least one, got {uniform_clips}")
    rng = np.random.default_rng(seed)
    centroids = sample[rng.choice(len(sample), n_centroids, replace=False)].copy()
    for _ in range(iterations):
        ids = nearest_centroids(sample, centroids, threads)
        sums = np.zeros_like(centroids)
        counts = np.zeros(n_centroids, dtype=np.int64)
        _accumulate(sample, ids, sums, counts)
        empty = counts == 0
        if empty.any():  # re-seed an empty cluster at a random token rather than leave it dead
            sums[empty] = sample[rng.choice(len(sample), int(empty.sum()), replace=False)]
        centroids = _normalise(sums)
    distortion_of = sample
    if held_out is not None and len(held_out):
        distortion_of = np.ascontiguousarray(held_out, dtype=np.float32)
        sample = np.concatenate([sample, distortion_of])  # the buckets' range must cover them too
    ids = nearest_centroids(sample, centroids, threads)
    residuals = sample - centroids[ids]
    norms = residual_norms(sample, centroids, ids)
    if scaled:
        residuals *= _inverse(norms)[:, None]
    if bits == 8:
        cutoffs, values = _uniform_buckets(residuals, uniform_clips)
    else:
        cutoffs, values = _lloyd_max_buckets(residuals, bits, lloyd_rounds)
    level_poly = None
    if polynomial and bits < 8:
        level_poly, values = _polynomial_levels(values)
        cutoffs = np.ascontiguousarray((values[:, :-1] + values[:, 1:]) / 2, dtype=np.float32)
    distortion = float(np.mean(np.square(norms[len(sample) - len(distortion_of) :], dtype=np.float64)))
    return Codec(centroids, cutoffs, values, bits, scaled, distortion, level_poly)


def residual_norms(tokens: np.ndarray, centroids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """‖token − its centroid‖ as stored: rounded to float16 (returned as float32), so that encoding
    divides by exactly the norm decoding multiplies by."""
    norms = np.linalg.norm(tokens - centroids[ids], axis=1)
    return norms.astype(np.float16).astype(np.float32)


def _inverse(norms: np.ndarray) -> np.ndarray:
    """1 / norm, and 0 for a token on its centroid (its residual codes then stand for nothing)."""
    return np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0).astype(np.float32)


def _uniform_buckets(residuals: np.ndarray, clips: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """8 bits: 256 evenly spaced levels per dimension over its [q, 1 − q] quantile range, q chosen
    among ``clips`` to minimise the sample's squared error: a wider range rounds every
    value more coarsely, a narrower one clips the tails. With that many levels the spacing matters
    little, and decoding becomes arithmetic (lo + code·step, one FMA a dimension) instead of a table
    lookup a dimension, which bounded the decode at ~800 ns a token. The fixed q of 0.05% used before
    clipped too much: the choice halves the squared token error (10k topic documents, bench/codec.py
    --bits 8 --clips 0.0005 engine: 7.8e-5 → 3.9e-5, recall unchanged at 0.9725) and, where margins
    are thin, recovers recall (i.i.d. generator, 20k documents, bench/recall.py --data iid: 0.991 →
    0.998 at the defaults, what keeping the float vectors gave)."""
    return _uniform_levels(*_uniform_range(residuals, clips))


def _uniform_range(residuals: np.ndarray, clips: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per dimension, the (lo, hi) of the [q, 1 − q] quantile range with the least squared error."""
    fractions = np.array(clips)
    bounds = np.quantile(residuals, np.concatenate([fractions, 1 - fractions]), axis=0)  # (2·n, dim)
    lows, highs = bounds[: len(clips)], bounds[len(clips) :]
    errors = np.stack([_uniform_error(residuals, lo, hi) for lo, hi in zip(lows, highs, strict=True)])
    best = np.argmin(errors, axis=0)  # (dim,)
    columns = np.arange(residuals.shape[1])
    return lows[best, columns], highs[best, columns]


def _uniform_error(residuals: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per dimension, the mean squared error of rounding ``residuals`` to the 256 levels over [lo, hi]
    that the codec would store (:func:`_uniform_levels`), decoded as the decoder does (first level +
    code · step, in float32); a chunk of rows at a time, so that the temporaries stay small next to
    the sample."""
    _, values = _uniform_levels(lo, hi)
    first, step = values[:, 0], values[:, 1] - values[:, 0]
    spread = step > 0  # a column whose levels coincide in float32 decodes every code to its first level
    divisor = np.where(spread, step, np.float32(1.0))
    total = np.zeros(residuals.shape[1], dtype=np.float64)
    for start in range(0, len(residuals), _ASSIGN_CHUNK):
        chunk = residuals[start : start + _ASSIGN_CHUNK]
        codes = np.clip(np.rint((chunk - first) / divisor), 0, 255) * spread
        total += np.sum(np.square(first + codes * step - chunk), axis=0, dtype=np.float64)
    return total / max(1, len(residuals))


def _uniform_levels(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    step = np.maximum(hi - lo, 1e-12) / 255
    values = (lo[:, None] + np.arange(256)[None, :] * step[:, None]).astype(np.float32)
    cutoffs = np.ascontiguousarray((values[:, :-1] + values[:, 1:]) / 2, dtype=np.float32)
    return cutoffs, np.ascontiguousarray(values)


def _lloyd_max_buckets(residuals: np.ndarray, bits: int, rounds: int) -> tuple[np.ndarray, np.ndarray]:
    """Per dimension, ``2**bits`` buckets: equal-probability quantiles of the sample, then up to
    ``rounds`` Lloyd–Max steps (each value the mean of its bucket, each cutoff the midpoint of its two
    values; they stop once no cutoff moves by more than 1e-7), which minimise the squared error instead
    of equalising the bucket counts. The residuals peak at zero with long tails, so equal-probability
    buckets spend their levels on the crowded middle and round the tails coarsely. On the 10k topic
    corpus (bench/codec.py --lloyd-rounds 0 1000, 4,096 centroids) the steps cut the squared token
    error by 56% at 4 bits (ceiling recall@10 0.9705 → 0.980) and by 15% at 2 bits (0.9255 → 0.938),
    at no cost in bytes or decoding: only the cutoffs and values change. A step costs a binary search
    per cutoff over the sorted column and a prefix-sum difference per bucket: sorting the sample's
    columns dominates."""
    levels = 1 << bits
    dim = residuals.shape[1]
    cutoffs = np.empty((dim, levels - 1), dtype=np.float64)
    values = np.empty((dim, levels), dtype=np.float64)
    for j in range(dim):
        ordered = np.sort(residuals[:, j]).astype(np.float64)
        prefix = np.zeros(len(ordered) + 1)
        np.cumsum(ordered, out=prefix[1:])
        cutoffs[j] = ordered[(np.arange(1, levels) * len(ordered)) // levels]
        _lloyd_max_column(ordered, prefix, cutoffs[j], values[j], rounds)
    return np.ascontiguousarray(cutoffs, dtype=np.float32), np.ascontiguousarray(values, dtype=np.float32)


@numba.njit(cache=True)
def _lloyd_max_column(ordered, prefix, cutoffs, values, rounds):
    """Lloyd–Max steps on one sorted column from the given cutoffs; leaves ``values`` the bucket means
    of the final ``cutoffs``."""
    _bucket_means(ordered, prefix, cutoffs, values)
    for _ in range(rounds):
        moved = 0.0
        for k in range(cutoffs.shape[0]):
            midpoint = (values[k] + values[k + 1]) / 2
            moved = max(moved, abs(midpoint - cutoffs[k]))
            cutoffs[k] = midpoint
        _bucket_means(ordered, prefix, cutoffs, values)
        if moved <= 1e-7:
            break


@numba.njit(cache=True)
def _bucket_means(ordered, prefix, cutoffs, values):
    """The mean of each bucket of a sorted column (the encoder puts x in the bucket of the number of
    cutoffs ≤ x, so a value equal to a cutoff belongs to the bucket above it); an empty bucket (ties
    at a quantile) takes the midpoint of its bounds."""
    n, n_cut = ordered.shape[0], cutoffs.shape[0]
    low, lower_edge = 0, ordered[0]
    for k in range(n_cut + 1):
        high = np.searchsorted(ordered, cutoffs[k], side="left") if k < n_cut else n
        upper_edge = cutoffs[k] if k < n_cut else ordered[n - 1]
        if high > low:
            values[k] = (prefix[high] - prefix[low]) / (high - low)
        else:
            values[k] = (lower_edge + upper_edge) / 2
        low, lower_edge = high, upper_edge


def _polynomial_levels(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per dimension, the cubic in the code that fits its Lloyd–Max levels best (least squares over
    the levels): (coefficients float32 (4, dim), the levels it gives float32 (dim, 2**bits)).

    Decoding a level by a table is a gather per dimension, which kept the 4-bit decode scalar (1.65×
    the 8-bit one's time at 100k documents, bench/profile_search.py); three FMAs per dimension
    vectorise instead. The Lloyd–Max levels of these residuals are close to odd and smooth in the code,
    and the cubic costs ~2% in squared error (10k topic documents, 4 bits). A fit that is not
    ascending over the codes (a degenerate column: ties, a constant) is replaced by the straight line
    through the levels, or by their mean when that too does not ascend; ascending levels keep the
    encoder's cutoffs (their midpoints) ordered."""
    dim, levels = values.shape
    u = np.arange(levels, dtype=np.float64) - (levels - 1) / 2
    powers = np.stack([u**p for p in range(4)], axis=1)  # (levels, 4)
    target = values.astype(np.float64).T  # (levels, dim)
    coefficients = np.zeros((4, dim))
    fitted_yet = np.zeros(dim, dtype=bool)
    for degree in (min(3, levels - 1), 1):  # the cubic, then the line for the columns it failed
        solved, *_ = np.linalg.lstsq(powers[:, : degree + 1], target, rcond=None)
        candidate = np.zeros((4, dim))
        candidate[: degree + 1] = solved
        take = np.all(np.diff(powers @ candidate, axis=0) > 0, axis=0) & ~fitted_yet
        coefficients[:, take] = candidate[:, take]
        fitted_yet |= take
    coefficients[0, ~fitted_yet] = target[:, ~fitted_yet].mean(axis=0)
    coefficients = coefficients.astype(np.float32)
    fitted_values = np.ascontiguousarray(_evaluate_levels(coefficients, levels).T)
    return np.ascontiguousarray(coefficients), fitted_values


def _evaluate_levels(coefficients: np.ndarray, levels: int) -> np.ndarray:
    """(levels, dim) float32: the cubic at every code, in the decoder's float32 order of operations."""
    a, b, c, d = coefficients
    u = (np.arange(levels, dtype=np.float32) - np.float32((levels - 1) / 2))[:, None]
    return a + u * (b + u * (c + u * d))


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def nearest_centroids(tokens: np.ndarray, centroids: np.ndarray, threads: int = 1) -> np.ndarray:
    """argmax over centroids of ⟨token, centroid⟩ by chunked float32 GEMMs: uint16 (n,).

    ``threads`` > 1 shares the chunks among that many threads (each GEMM single-threaded, as BLAS is
    limited in the server): the cost of coding and training is this GEMM, n × K × dim."""
    out = np.empty(len(tokens), dtype=np.uint16)
    starts = range(0, len(tokens), _ASSIGN_CHUNK)

    def assign(start: int) -> None:
        chunk = tokens[start : start + _ASSIGN_CHUNK]
        out[start : start + len(chunk)] = (chunk @ centroids.T).argmax(axis=1)

    if threads <= 1 or len(starts) == 1:
        for start in starts:
            assign(start)
    else:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mvr-codec") as pool:
            list(pool.map(assign, starts))
    return out


@numba.njit(cache=True)
def _accumulate(sample, ids, sums, counts):
    for i in range(sample.shape[0]):
        c = ids[i]
        counts[c] += 1
        for j in range(sample.shape[1]):
            sums[c, j] += sample[i, j]


# ---------------------------------------------------------------------------------------- kernels


@numba.njit(cache=True, inline="always")
def code_slot(j: int, n_bytes: int, bits: int, planar: bool) -> tuple[int, int]:
    """(byte, bit shift) of dimension ``j``'s code in a payload of ``n_bytes`` below 8 bits. Planar:
    byte j mod n_bytes, the (j div n_bytes)-th ``bits`` of it; dimensions that share a byte lie a
    byte-run apart, so that decoding one bit position of every byte fills a contiguous run of the row
    (a loop that vectorises: :func:`_decode_polynomial` walks this layout in that order).
    Interleaved (codecs without ``level_poly``): neighbouring dimensions share a byte."""
    if planar:
        return j % n_bytes, (j // n_bytes) * bits
    per_byte = 8 // bits
    return j // per_byte, (j % per_byte) * bits


@numba.njit(cache=True)
def _encode_residuals(tokens, centroids, ids, inverse_norms, cutoffs, bits, planar, packed):
    n_bytes = packed.shape[1]
    n_cut = cutoffs.shape[1]
    packed[:] = 0
    for i in range(tokens.shape[0]):
        c = ids[i]
        for j in range(tokens.shape[1]):
            r = (tokens[i, j] - centroids[c, j]) * inverse_norms[i]
            code = 0
            while code < n_cut and r >= cutoffs[j, code]:
                code += 1
            byte, shift = code_slot(j, n_bytes, bits, planar)
            packed[i, byte] |= np.uint8(code << shift)


@numba.njit(cache=True)
def _encode_uniform8(tokens, centroids, ids, inverse_norms, cutoffs, packed):
    """8-bit codes of evenly spaced levels: the bucket by arithmetic instead of a search (cutoffs are
    the midpoints between levels, so this equals counting the cutoffs at or below the residual)."""
    for i in range(tokens.shape[0]):
        c = ids[i]
        for j in range(tokens.shape[1]):
            r = (tokens[i, j] - centroids[c, j]) * inverse_norms[i]
            code = 0
            if r >= cutoffs[j, 0]:
                step = cutoffs[j, 1] - cutoffs[j, 0]
                code = min(255, int((r - cutoffs[j, 0]) / step) + 1)
                # guard the float division at a boundary: settle on the cutoffs themselves
                while code > 0 and r < cutoffs[j, code - 1]:
                    code -= 1
                while code < 255 and r >= cutoffs[j, code]:
                    code += 1
            packed[i, j] = code


@numba.njit(cache=True, fastmath=True, inline="always")
def _renormalise(row, squared_norm):
    """Scales a decoded token to unit length, as the encoder's tokens are (a zero row stays zero)."""
    scale = np.float32(1.0) / np.sqrt(squared_norm) if squared_norm > 0 else np.float32(0.0)
    for j in range(row.shape[0]):
        row[j] *= scale


@numba.njit(cache=True, fastmath=True)
def _decode_uniform8(data, offsets, counts, targets, centroids, scaled, lo, step, out):
    dim = centroids.shape[1]
    first = SCALE_BYTES if scaled else 0
    for r in range(offsets.shape[0]):
        ids, payloads = _block_views(data, offsets[r], counts[r], first + dim)
        rows = out[targets[r] : targets[r] + counts[r]]
        for t in range(counts[r]):
            centroid, payload, row = centroids[ids[t]], payloads[t], rows[t]
            length = _half_to_float(payload[0], payload[1]) if scaled else np.float32(1.0)
            code = payload[first:]
            norm = np.float32(0.0)
            for j in range(dim):
                x = centroid[j] + length * (lo[j] + np.float32(code[j]) * step[j])
                row[j] = x
                norm += x * x
            _renormalise(row, norm)


@numba.njit(cache=True, fastmath=True)
def _decode_polynomial(data, offsets, counts, targets, centroids, scaled, bits, a, b, c, d, out):
    """Planar codes below 8 bits (see :func:`code_slot`): each dimension's level is its cubic in the
    code, centroid + norm · level, renormalised. One bit position of every byte at a time, so each
    inner loop runs over contiguous bytes and row entries and vectorises (a table lookup per dimension
    does not)."""
    dim = centroids.shape[1]
    n_bytes = dim * bits // 8
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    middle = np.float32(mask / 2)
    first = SCALE_BYTES if scaled else 0
    for r in range(offsets.shape[0]):
        ids, payloads = _block_views(data, offsets[r], counts[r], first + n_bytes)
        rows = out[targets[r] : targets[r] + counts[r]]
        for t in range(counts[r]):
            centroid, payload, row = centroids[ids[t]], payloads[t], rows[t]
            length = _half_to_float(payload[0], payload[1]) if scaled else np.float32(1.0)
            code = payload[first:]
            norm = np.float32(0.0)
            for s in range(per_byte):
                shift = s * bits
                base = s * n_bytes
                for k in range(n_bytes):
                    j = base + k
                    u = np.float32((code[k] >> shift) & mask) - middle
                    x = centroid[j] + length * (a[j] + u * (b[j] + u * (c[j] + u * d[j])))
                    row[j] = x
                    norm += x * x
            _renormalise(row, norm)


def byte_table(values: np.ndarray, bits: int) -> np.ndarray:
    """(dim·bits/8, 256, 8/bits) float32: the residual values a packed byte stands for."""
    dim = values.shape[0]
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    byte_values = np.arange(256)
    table = np.empty((dim // per_byte, 256, per_byte), dtype=np.float32)
    for slot in range(per_byte):
        codes = (byte_values >> (slot * bits)) & mask  # (256,)
        table[:, :, slot] = values[slot::per_byte][:, codes]
    return table


# ---------------------------------------------------------------------------------------- blocks
# A document's codes on disk: one block of n little-endian uint16 centroid ids, then n payloads of
# Codec.payload_bytes each (the residual's float16 norm if the codec is scaled, then its packed buckets).

SCALE_BYTES = 2  # a float16 residual norm


def block_size(n_tokens: int, payload_bytes: int) -> int:
    return n_tokens * (2 + payload_bytes)


def pack_block(ids: np.ndarray, payload: np.ndarray) -> bytes:
    """The block of one document's centroid ids and payloads (see :func:`block_size`)."""
    return ids.astype("<u2").tobytes() + payload.tobytes()


def encode_blocks(codec: Codec, tokens: np.ndarray, offsets: np.ndarray, threads: int = 1) -> list[bytes]:
    """The blocks of documents stacked in ``tokens`` (document i: rows ``offsets[i]:offsets[i+1]``),
    coded in one pass (one GEMM over all their tokens)."""
    ids, payload = codec.encode(tokens, threads)
    bounds = offsets.tolist()
    return [pack_block(ids[a:b], payload[a:b]) for a, b in pairwise(bounds)]


def squared_norms_of_blocks(codec: Codec, blocks: Sequence[bytes]) -> tuple[float, int]:
    """(Σ squared residual norm, tokens) over code blocks of a scaled codec, read from the norms the
    blocks store: how far their tokens lie from their centroids (the drift measure's input)."""
    if not codec.scaled:
        raise ValueError("squared_norms_of_blocks: the codec keeps no residual norms (scaled is False)")
    total, n_tokens = 0.0, 0
    for block in blocks:
        n = len(block) // codec.token_bytes
        _, payloads = _block_views(np.frombuffer(block, dtype=np.uint8), 0, n, codec.payload_bytes)
        norms = np.ascontiguousarray(payloads[:, :SCALE_BYTES]).view("<f2").astype(np.float64)
        total += float(np.sum(np.square(norms)))
        n_tokens += n
    return total, n_tokens


def encode_block(codec: Codec, tokens: np.ndarray) -> bytes:
    """One document's block."""
    return pack_block(*codec.encode(tokens))


@numba.njit(cache=True)
def _half_to_float(low, high):
    """A non-negative float16 given by its two little-endian bytes, as float32 (Numba has no float16)."""
    bits = np.int64(low) | (np.int64(high & 0x7F) << 8)
    exponent, mantissa = bits >> 10, bits & 0x3FF
    if exponent == 0:  # zero or subnormal
        return np.float32(math.ldexp(float(mantissa), -24))
    return np.float32(math.ldexp(float(mantissa | 0x400), int(exponent) - 25))


@numba.njit(cache=True)
def _block_views(data, offset, n, payload_bytes):
    """The block at ``offset`` as (ids uint16 (n,), payloads uint8 (n, payload_bytes)) views.

    Kernels index these views from 0 rather than ``data`` at computed offsets: Numba cannot prove a
    computed index non-negative, and its negative-index check kept the decode loops from vectorising."""
    start = offset + 2 * n
    ids = data[offset:start].view(np.uint16)  # little-endian on every platform Numba targets here
    return ids, data[start : start + n * payload_bytes].reshape((n, payload_bytes))


@numba.njit(cache=True, fastmath=True)
def decode_blocks(data, offsets, counts, targets, centroids, scaled, table, out):
    """Decodes block r (at byte ``offsets[r]`` of ``data``, ``counts[r]`` tokens) into rows
    ``targets[r] :`` of ``out`` (float32 (rows, dim)): centroid + norm · residual, renormalised."""
    n_bytes, _, per_byte = table.shape
    first = SCALE_BYTES if scaled else 0
    for r in range(offsets.shape[0]):
        ids, payloads = _block_views(data, offsets[r], counts[r], first + n_bytes)
        rows = out[targets[r] : targets[r] + counts[r]]
        for t in range(counts[r]):
            centroid, payload, row = centroids[ids[t]], payloads[t], rows[t]
            length = _half_to_float(payload[0], payload[1]) if scaled else np.float32(1.0)
            # two passes: the table lookups (gathers, scalar) first, then centroid + length · residual
            # over the contiguous row, which vectorises; fused, the lookups kept the arithmetic scalar
            # too (bench/codec.py, 10k topic documents, decoding 128 candidates: 4 bits 3.8 → 2.5 ms,
            # 2 bits 3.3 → 2.6 ms a query)
            if per_byte == 2:  # 4 bits, spelt out: the generic loop below compiles to slower code
                for b in range(n_bytes):
                    byte = payload[first + b]
                    row[2 * b] = table[b, byte, 0]
                    row[2 * b + 1] = table[b, byte, 1]
            else:
                for b in range(n_bytes):
                    entry = table[b, payload[first + b]]
                    for s in range(per_byte):
                        row[b * per_byte + s] = entry[s]
            norm = np.float32(0.0)
            for j in range(row.shape[0]):
                x = centroid[j] + length * row[j]
                row[j] = x
                norm += x * x
            _renormalise(row, norm)


@numba.njit(cache=True)
def distinct_centroids(data, offsets, counts, n_centroids):
    """Each block's distinct centroid ids, ascending, back to back: (ids uint16, per-block offsets)."""
    total = 0
    for r in range(counts.shape[0]):
        total += counts[r]
    ids = np.empty(total, dtype=np.uint16)
    block_offsets = np.zeros(counts.shape[0] + 1, dtype=np.int64)
    mark = np.full(n_centroids, -1, dtype=np.int64)
    n = 0
    for r in range(offsets.shape[0]):
        first = n
        block_ids, _ = _block_views(data, offsets[r], counts[r], 0)
        for t in range(counts[r]):
            c = block_ids[t]
            if mark[c] != r:
                mark[c] = r
                ids[n] = c
                n += 1
        ids[first:n].sort()
        block_offsets[r + 1] = n
    return ids[:n].copy(), block_offsets
