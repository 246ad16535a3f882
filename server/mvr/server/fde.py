"""MUVERA fixed-dimensional encodings (FDE): a set of token vectors → one vector whose inner products
approximate Chamfer / MaxSim similarity (Dhulipala et al., NeurIPS 2024, arXiv 2405.19504).

Owns the construction, its random matrices and their persistence:

* R repetitions. In each, k_sim Gaussian hyperplanes put every token in one of B = 2^k_sim buckets by
  its sign bits (plain binary code: bit j set when the token is on the positive side of hyperplane j).
* A query block is the SUM of the query's tokens in the bucket; a document block is the AVERAGE of the
  document's tokens in it. Empty document buckets are (optionally) filled with the token whose code is
  nearest in Hamming distance; ties go to the token with the smallest total |margin| over the differing
  bits (the one closest to crossing into the bucket), then to the lexicographically smallest projected
  vector, so which token fills a bucket never depends on the order of the tokens. Queries are never
  filled (a query token would count twice).
* Each block is projected to d_proj dims by a dense ±1/√d_proj matrix (AMS sketch), one per
  repetition; d_proj equal to the token dim means the identity. d_proj larger than the dim is
  rejected: a random projection up only adds bytes and noise.
* Output: the R·B blocks concatenated, R·2^k_sim·d_proj dims; optionally count-sketched to final_dim.

All random matrices derive from one seed through independent numpy SeedSequence streams, and are
saved with the collection (:meth:`FDE.save`); :meth:`FDE.load` never regenerates them, so an index
stays valid whatever numpy's generators do in later versions.

Speed: the projection is linear, so tokens are projected first and summed per bucket after. All R·k_sim
hyperplane margins and all R·d_proj projected coordinates of a chunk of documents come from one BLAS
sgemm; bucketing, scatter, averaging and filling run in one Numba ``prange`` kernel over the chunk's
documents (each document writes only its own row: no locks). Chunks of a few thousand tokens keep the
sgemm result in cache for the kernel and avoid batch-sized temporaries.

Reproducibility: results are bit-identical whatever the batching and the thread count. OpenBLAS
rounds a row of a small product differently from the same row of a large one (gemv for one row, "direct"
and small-matrix kernels for small products), so every sgemm is padded with zero rows to at least
:data:`MIN_GEMM_WORK` multiply-adds: all calls then take the blocked path, whose rows depend neither on
the other rows nor on BLAS's thread count (checked by ``tests/test_fde.py`` at realistic sizes). The
Numba kernels use no fastmath, so they never reassociate. The caller sets the kernel's thread count
(``numba.set_num_threads``); nothing here changes it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numba
import numpy as np
from mvr.server.errors import InvalidArgument

MAX_K_SIM = 10
MAX_OUTPUT_DIM = 1 << 24
_FORMAT_VERSION = 1

# Every sgemm does at least this many multiply-adds (see the module docstring). Measured with numpy's
# OpenBLAS 0.3.31 on 84 shapes (dim 8–768 × 2–680 columns, 1 and 2 BLAS threads): rows are identical
# from 2^20 up, not at 2^18; twice the measured bound for margin. A 32-token query at dim 128 and 240
# columns pads to 69 rows (≈0.1 ms); batches are far above it.
MIN_GEMM_WORK = 1 << 21
# Tokens per chunk: the chunk's sgemm output stays in cache for the kernel, and each chunk costs one
# hand-over between BLAS's and Numba's threads (measured best between 4k and 16k tokens).
CHUNK_TOKENS = 8192
# Below this many tokens a chunk runs the serial kernel: waking the thread pool costs more than a
# query's whole encoding (measured ~5 ms vs ~0.1 ms with torch's OpenMP threads around).
PARALLEL_MIN_TOKENS = 1024


@dataclass(frozen=True)
class FDEConfig:
    """Parameters of an FDE. Immutable; persisted with each collection as JSON (:meth:`to_dict`)."""

    repetitions: int
    k_sim: int
    d_proj: int
    fill_empty: bool = True
    final_dim: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int("repetitions", self.repetitions, 1, 1024)
        _check_int("k_sim", self.k_sim, 0, MAX_K_SIM)
        _check_int("d_proj", self.d_proj, 1, 4096)
        if self.final_dim is not None:
            _check_int("final_dim", self.final_dim, 1, MAX_OUTPUT_DIM)
        _check_int("seed", self.seed, 0, 2**64 - 1)
        if not isinstance(self.fill_empty, bool):
            raise InvalidArgument("fill_empty", f"must be a boolean, got {self.fill_empty!r}")
        if self.inner_dim > MAX_OUTPUT_DIM:
            raise InvalidArgument(
                "d_proj",
                f"repetitions·2^k_sim·d_proj = {self.repetitions}·{1 << self.k_sim}·{self.d_proj} = "
                f"{self.inner_dim} exceeds {MAX_OUTPUT_DIM} dims",
            )

    @property
    def blocks(self) -> int:
        """Number of blocks, R · 2^k_sim."""
        return self.repetitions * (1 << self.k_sim)

    @property
    def inner_dim(self) -> int:
        """Dimension before the optional final projection: R · 2^k_sim · d_proj."""
        return self.blocks * self.d_proj

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FDEConfig:
        """Inverse of :meth:`to_dict`; unknown or missing keys raise InvalidArgument naming them."""
        if not isinstance(data, dict):
            raise InvalidArgument("fde", f"must be a mapping of parameters, got {type(data).__name__}")
        known = {field.name for field in fields(cls)}
        for key in data:
            if key not in known:
                raise InvalidArgument(str(key), f"is not an FDE parameter (known: {sorted(known)})")
        for key in ("repetitions", "k_sim", "d_proj"):
            if key not in data:
                raise InvalidArgument(key, "is required")
        return cls(**data)


def _check_int(field: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not low <= value <= high:
        raise InvalidArgument(field, f"must be an integer in [{low}, {high}], got {value!r}")


class FDE:
    """An FDE for token vectors of dimension ``dim``: its config, random matrices and encoders.

    Thread-safe: encoding reads the matrices only.
    """

    def __init__(
        self, config: FDEConfig, dim: int, *, _matrices: dict[str, np.ndarray] | None = None
    ) -> None:
        if not isinstance(config, FDEConfig):
            raise InvalidArgument("config", f"must be an FDEConfig, got {type(config).__name__}")
        _check_int("dim", dim, 1, 1 << 16)
        if config.d_proj > dim:
            raise InvalidArgument(
                "d_proj",
                f"{config.d_proj} is larger than the token dim {dim}; use at most {dim} (= no projection)",
            )
        self.config = config
        self.dim = int(dim)
        matrices = _matrices if _matrices is not None else _generate(config, self.dim)
        self._hyperplanes = np.ascontiguousarray(matrices["hyperplanes"], dtype=np.float32)
        projection = matrices.get("projection")
        self._projection = None if projection is None else np.ascontiguousarray(projection, np.float32)
        self._sketch_index = matrices.get("sketch_index")
        self._sketch_sign = matrices.get("sketch_sign")
        self._check_matrices()
        # One sgemm gives the margins (first R·k_sim columns) and, unless the projection is the
        # identity, the R projected copies (next R·d_proj columns). A lone column would make numpy
        # call gemv, which rounds differently: pad with a zero column.
        parts = [self._hyperplanes] if self._projection is None else [self._hyperplanes, self._projection]
        gemm = np.hstack(parts)
        if gemm.shape[1] == 1:
            gemm = np.hstack([gemm, np.zeros((self.dim, 1), np.float32)])
        self._gemm = np.ascontiguousarray(gemm, dtype=np.float32)
        self._gemm_min_rows = max(2, math.ceil(MIN_GEMM_WORK / max(1, self.dim * self._gemm.shape[1])))

    def _check_matrices(self) -> None:
        """Shapes of stored matrices against the config: a mismatch means a corrupt or foreign file."""
        c, r = self.config, self.config.repetitions
        expected = {"hyperplanes": (self.dim, r * c.k_sim)}
        if c.d_proj != self.dim:
            expected["projection"] = (self.dim, r * c.d_proj)
        if c.final_dim is not None:
            expected["sketch_index"] = (c.inner_dim,)
            expected["sketch_sign"] = (c.inner_dim,)
        present = {
            "hyperplanes": self._hyperplanes,
            "projection": self._projection,
            "sketch_index": self._sketch_index,
            "sketch_sign": self._sketch_sign,
        }
        for name, array in present.items():
            shape = None if array is None else array.shape
            if shape != expected.get(name):
                raise ValueError(
                    f"FDE matrix {name!r} has shape {shape}, the config needs {expected.get(name)}"
                )
        if self._sketch_index is not None:
            self._sketch_index = np.ascontiguousarray(self._sketch_index, dtype=np.int64)
            self._sketch_sign = np.ascontiguousarray(self._sketch_sign, dtype=np.float32)
            if self._sketch_index.min() < 0 or self._sketch_index.max() >= c.final_dim:
                raise ValueError(f"FDE sketch indices fall outside [0, {c.final_dim})")

    # ------------------------------------------------------------------------------ properties

    @property
    def inner_dim(self) -> int:
        """Dimension before the optional final projection: R · 2^k_sim · d_proj."""
        return self.config.inner_dim

    @property
    def output_dim(self) -> int:
        """Length of every encoding: final_dim if set, else R · 2^k_sim · d_proj."""
        return self.config.final_dim or self.inner_dim

    # ------------------------------------------------------------------------------ encoding

    def encode_queries(self, tokens: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Query FDEs (block = SUM of tokens, no filling) of a ragged batch.

        ``tokens``: float32 (n, dim), the sets one after another; ``offsets``: int64 (m + 1,), set i is
        ``tokens[offsets[i]:offsets[i + 1]]``. Returns float32 (m, output_dim).
        """
        return self._encode(tokens, offsets, is_query=True)

    def encode_documents(self, tokens: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Document FDEs (block = AVERAGE of tokens, empty blocks filled if configured); as
        :meth:`encode_queries`."""
        return self._encode(tokens, offsets, is_query=False)

    def encode_query(self, tokens: np.ndarray) -> np.ndarray:
        """The FDE of one query, tokens (n, dim) → (output_dim,) float32."""
        return self.encode_queries(tokens, _single_offsets(tokens))[0]

    def encode_document(self, tokens: np.ndarray) -> np.ndarray:
        """The FDE of one document, tokens (n, dim) → (output_dim,) float32."""
        return self.encode_documents(tokens, _single_offsets(tokens))[0]

    def _encode(self, tokens: np.ndarray, offsets: np.ndarray, *, is_query: bool) -> np.ndarray:
        tokens, offsets = self._validate(tokens, offsets)
        c = self.config
        n_sets = len(offsets) - 1
        out = np.empty((n_sets, self.output_dim), dtype=np.float32)
        fill = c.fill_empty and not is_query
        shared = self._projection is None  # identity: every repetition reads the token itself
        margin_cols = c.repetitions * c.k_sim
        buffer = np.empty(0, np.float32)  # sgemm output, reused across chunks
        start = 0
        while start < n_sets:
            stop = _chunk_end(offsets, start)
            first, last = int(offsets[start]), int(offsets[stop])
            chunk_tokens = tokens[first:last]
            products, buffer = self._products(chunk_tokens, buffer)
            projected, proj_col = (chunk_tokens, 0) if shared else (products, margin_cols)
            local = offsets[start : stop + 1] - first
            inner = (
                out[start:stop]
                if c.final_dim is None
                else np.empty((stop - start, self.inner_dim), np.float32)
            )
            parallel = last - first >= PARALLEL_MIN_TOKENS and stop - start > 1
            scatter = _scatter_parallel if parallel else _scatter_serial
            scatter(
                products, projected, proj_col, local, inner, c.repetitions, c.k_sim, c.d_proj, shared,
                not is_query, fill,
            )  # fmt: skip
            if c.final_dim is not None:
                sketch = _count_sketch_parallel if parallel else _count_sketch_serial
                sketch(inner, self._sketch_index, self._sketch_sign, out[start:stop])
            start = stop
        return out

    def _products(self, tokens: np.ndarray, buffer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """tokens @ [hyperplanes | projections] into ``buffer`` (grown when too small), every call
        padded with zero rows to MIN_GEMM_WORK multiply-adds (bit-reproducible, see module docstring).
        Returns the products of ``tokens`` and the buffer."""
        n, cols = len(tokens), self._gemm.shape[1]
        if cols == 0:  # identity projection and k_sim = 0: nothing to multiply
            return np.empty((n, 0), np.float32), buffer
        rows = max(n, self._gemm_min_rows)
        if buffer.size < rows * cols:
            buffer = np.empty(rows * cols, np.float32)
        result = buffer[: rows * cols].reshape(rows, cols)
        if n < rows:
            padded = np.zeros((rows, self.dim), np.float32)
            padded[:n] = tokens
            tokens = padded
        np.matmul(tokens, self._gemm, out=result)
        return result[:n], buffer

    def _validate(self, tokens: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[1] != self.dim:
            raise InvalidArgument("tokens", f"must have shape (n, {self.dim}), got {tokens.shape}")
        if not np.issubdtype(tokens.dtype, np.floating):
            raise InvalidArgument("tokens", f"must be floating point (float32), got {tokens.dtype}")
        tokens = np.ascontiguousarray(tokens, dtype=np.float32)
        offsets = np.asarray(offsets)
        if offsets.ndim != 1 or len(offsets) < 2 or not np.issubdtype(offsets.dtype, np.integer):
            raise InvalidArgument(
                "offsets",
                f"must be a 1-d integer array of m + 1 ≥ 2 entries, got {offsets.dtype} {offsets.shape}",
            )
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        if offsets[0] != 0 or offsets[-1] != len(tokens):
            raise InvalidArgument(
                "offsets",
                f"must run from 0 to the token count {len(tokens)}, "
                f"got {int(offsets[0])} … {int(offsets[-1])}",
            )
        sizes = np.diff(offsets)
        if (sizes <= 0).any():
            bad = int(np.argmax(sizes <= 0))
            problem = (
                "is empty" if sizes[bad] == 0 else f"has negative size {int(sizes[bad])} (offsets decrease)"
            )
            raise InvalidArgument("offsets", f"set {bad} {problem}; every set needs at least one token")
        finite = np.isfinite(tokens).all(axis=1)
        if not finite.all():
            row = int(np.argmin(finite))
            raise InvalidArgument("tokens", f"token {row} has a NaN or infinite value")
        return tokens, offsets

    # ------------------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> None:
        """Writes config, dim and every random matrix to one .npz file (atomically, fsynced)."""
        path = Path(path)
        arrays = {"hyperplanes": self._hyperplanes}
        if self._projection is not None:
            arrays["projection"] = self._projection
        if self._sketch_index is not None:
            arrays["sketch_index"] = self._sketch_index
            arrays["sketch_sign"] = self._sketch_sign
        meta = np.array([_FORMAT_VERSION, self.dim], dtype=np.int64)
        config = np.frombuffer(json.dumps(self.config.to_dict()).encode(), dtype=np.uint8)
        temporary = path.with_name(path.name + ".tmp.npz")
        np.savez(temporary, meta=meta, config=config, **arrays)
        with temporary.open("rb+") as handle:
            os.fsync(handle.fileno())
        temporary.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> FDE:
        """Reads what :meth:`save` wrote; the matrices are used as stored, never regenerated."""
        with np.load(Path(path), allow_pickle=False) as data:
            version, dim = (int(x) for x in data["meta"])
            if version != _FORMAT_VERSION:
                raise ValueError(f"{path}: FDE file format {version}, this build reads {_FORMAT_VERSION}")
            config = FDEConfig.from_dict(json.loads(bytes(data["config"]).decode()))
            matrices = {name: data[name] for name in data.files if name not in ("meta", "config")}
        return cls(config, dim, _matrices=matrices)


def _single_offsets(tokens: np.ndarray) -> np.ndarray:
    return np.array([0, len(tokens)], dtype=np.int64)


def _chunk_end(offsets: np.ndarray, start: int) -> int:
    """End (exclusive set index) of the chunk starting at set ``start``: about CHUNK_TOKENS tokens,
    at least one set."""
    limit = offsets[start] + CHUNK_TOKENS
    stop = int(np.searchsorted(offsets, limit, side="right")) - 1
    return min(max(stop, start + 1), len(offsets) - 1)


def _generate(config: FDEConfig, dim: int) -> dict[str, np.ndarray]:
    """All random matrices from one seed, each from its own SeedSequence child stream."""
    hyper_seq, proj_seq, sketch_seq = np.random.SeedSequence(config.seed).spawn(3)
    r = config.repetitions
    hyperplanes = np.random.default_rng(hyper_seq).standard_normal((dim, r * config.k_sim)).astype(np.float32)
    matrices = {"hyperplanes": hyperplanes}
    if config.d_proj != dim:
        signs = np.random.default_rng(proj_seq).integers(0, 2, size=(dim, r * config.d_proj), dtype=np.int8)
        matrices["projection"] = ((signs * 2 - 1) / math.sqrt(config.d_proj)).astype(np.float32)
    if config.final_dim is not None:
        rng = np.random.default_rng(sketch_seq)
        inner = config.inner_dim
        matrices["sketch_index"] = rng.integers(0, config.final_dim, size=inner, dtype=np.int64)
        matrices["sketch_sign"] = (rng.integers(0, 2, size=inner, dtype=np.int8) * 2 - 1).astype(np.float32)
    return matrices


# ---------------------------------------------------------------------------------------- kernels


def _scatter_kernel(products, projected, proj_col, offsets, out, reps, k_sim, d_proj, shared, average, fill):
    """One FDE row per set. ``products[t, r·k_sim + j]`` is token t's margin on hyperplane j of
    repetition r; its projected copy for repetition r starts at ``projected[t, proj_col + r·d_proj]``
    (at ``proj_col`` for every r when ``shared``). Writes every element of ``out``.

    Inner loops index short slices from 0: Numba then can prove the indices non-negative and drops
    its negative-index wraparound branch, which otherwise blocks vectorisation (2.5x on the scatter).
    """
    n_buckets = 1 << k_sim
    for doc in numba.prange(len(offsets) - 1):
        start, stop = offsets[doc], offsets[doc + 1]
        n = stop - start
        row = out[doc]
        row[:] = 0.0
        counts = np.zeros(reps * n_buckets, dtype=np.int32)
        codes = np.empty(reps * n if fill else 0, dtype=np.int32)  # [r·n + i]: repetition r, token i
        for i in range(n):
            margins = products[start + i]
            values = projected[start + i]
            for r in range(reps):
                code = _bucket_code(margins[r * k_sim : (r + 1) * k_sim])
                if fill:
                    codes[r * n + i] = code
                block = r * n_buckets + code
                counts[block] += 1
                src = proj_col if shared else proj_col + r * d_proj
                target = row[block * d_proj : (block + 1) * d_proj]
                source = values[src : src + d_proj]
                for c in range(d_proj):
                    target[c] += source[c]
        if not average:
            continue
        for r in range(reps):
            src = proj_col if shared else proj_col + r * d_proj
            for b in range(n_buckets):
                block = r * n_buckets + b
                target = row[block * d_proj : (block + 1) * d_proj]
                if counts[block] > 1:
                    divisor = np.float32(counts[block])
                    for c in range(d_proj):
                        target[c] /= divisor
                elif counts[block] == 0 and fill:
                    best = start + _nearest_token(
                        products[start:stop],
                        projected[start:stop],
                        codes[r * n : (r + 1) * n],
                        r,
                        k_sim,
                        b,
                        src,
                        d_proj,
                    )
                    source = projected[best, src : src + d_proj]
                    for c in range(d_proj):
                        target[c] = source[c]


_scatter_parallel = numba.njit(parallel=True, cache=True)(_scatter_kernel)
_scatter_serial = numba.njit(parallel=False, cache=True)(_scatter_kernel)


@numba.njit(cache=True, inline="always")
def _bucket_code(margins):
    """Plain binary code of the sign bits: bit j set when margin j is positive (branch-free)."""
    code = 0
    for j in range(len(margins)):
        code |= np.int32(margins[j] > 0.0) << j
    return code


@numba.njit(cache=True, inline="always")
def _popcount(x):
    """Set bits of a non-negative int32 (codes have at most MAX_K_SIM bits)."""
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return (x * 0x01010101 & 0xFFFFFFFF) >> 24


@numba.njit(cache=True)
def _nearest_token(products, projected, codes, r, k_sim, bucket, src, d_proj):
    """Index (in the set) of the token whose repetition-r code is nearest to ``bucket`` in Hamming
    distance; ties: smallest total |margin| over the differing bits, then the lexicographically
    smallest projected vector (identical vectors fill identically, so any of them is the answer)."""
    nearest = k_sim + 1
    for i in range(len(codes)):  # pass 1, branch-free: the smallest distance
        nearest = min(nearest, _popcount(codes[i] ^ bucket))
    best = -1
    best_margin = np.inf
    for i in range(len(codes)):  # pass 2: tie-breaks among the tokens at that distance
        differing = codes[i] ^ bucket
        if _popcount(differing) != nearest:
            continue
        margins = products[i, r * k_sim : (r + 1) * k_sim]
        margin = 0.0
        for j in range(k_sim):
            if (differing >> j) & 1:
                margin += abs(margins[j])
        better = best < 0 or margin < best_margin
        if not better and margin == best_margin:
            mine, theirs = projected[i, src : src + d_proj], projected[best, src : src + d_proj]
            for c in range(d_proj):
                if mine[c] != theirs[c]:
                    better = mine[c] < theirs[c]
                    break
        if better:
            best, best_margin = i, margin
    return best


def _count_sketch_kernel(inner, index, sign, final):
    """final[doc, index[j]] += sign[j] · inner[doc, j], j in order (deterministic)."""
    for doc in numba.prange(inner.shape[0]):
        row = final[doc]
        row[:] = 0.0
        for j in range(inner.shape[1]):
            row[index[j]] += sign[j] * inner[doc, j]


_count_sketch_parallel = numba.njit(parallel=True, cache=True)(_count_sketch_kernel)
_count_sketch_serial = numba.njit(parallel=False, cache=True)(_count_sketch_kernel)
