"""MUVERA fixed-dimensional encodings (FDE): a set of token vectors → one vector whose inner products
approximate Chamfer / MaxSim similarity (Dhulipala et al., NeurIPS 2024, arXiv 2405.19504).

Owns the construction, its random matrices and their persistence:

* R repetitions. In each, k_sim Gaussian hyperplanes put every token in one of B = 2^k_sim buckets by
  its sign bits (plain binary code: bit j set when the token is on the positive side of hyperplane j).
* A query block is the SUM of the query's tokens in the bucket; a document block is the AVERAGE of the
  document's tokens in it. Empty document buckets are (optionally) filled with the token whose code is
  nearest in Hamming distance; ties go to the token with the smallest total |margin| over the differing
  bits (the one closest to crossing into the bucket), then to the lexicographically smallest projected
  vector, so a document's FDE never depends on the order of its tokens. Queries are never filled.
* Each block is projected to d_proj dims by a dense ±1/√d_proj matrix (AMS sketch), one per
  repetition; d_proj equal to the token dim means the identity. d_proj larger than the dim is
  rejected: it only adds bytes.
* Output: the R·B blocks concatenated, R·2^k_sim·d_proj dims; optionally count-sketched to final_dim.

All random matrices derive from one seed through independent numpy SeedSequence streams, and are
saved with the collection (:meth:`FDE.save`); :meth:`FDE.load` never regenerates them, so an index
stays valid whatever numpy's generators do in later versions.

Speed: the hyperplane and projection products run as two BLAS matmuls over every token of a batch;
bucketing, scatter, averaging and filling run in one Numba ``prange`` kernel over documents (each
document writes only its own row: no locks, bit-reproducible, a batch equals its documents one by one).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np
from mvr.server.errors import InvalidArgument

MAX_K_SIM = 10
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class FDEConfig:
    """Parameters of an FDE. Immutable; persisted with each collection as JSON (:meth:`to_dict`)."""

    repetitions: int = 20
    k_sim: int = 4
    d_proj: int = 8
    fill_empty: bool = True
    final_dim: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int("repetitions", self.repetitions, 1, 1024)
        _check_int("k_sim", self.k_sim, 0, MAX_K_SIM)
        _check_int("d_proj", self.d_proj, 1, 4096)
        if self.final_dim is not None:
            _check_int("final_dim", self.final_dim, 1, 1 << 24)
        _check_int("seed", self.seed, 0, 2**64 - 1)
        if not isinstance(self.fill_empty, bool):
            raise InvalidArgument("fill_empty", f"must be a boolean, got {self.fill_empty!r}")

    @property
    def blocks(self) -> int:
        return self.repetitions * (1 << self.k_sim)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FDEConfig:
        return cls(**data)


def _check_int(field: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not low <= value <= high:
        raise InvalidArgument(field, f"must be an integer in [{low}, {high}], got {value!r}")


class FDE:
    """An FDE for token vectors of dimension ``dim``: its config, random matrices and encoders."""

    def __init__(
        self, config: FDEConfig, dim: int, *, _matrices: dict[str, np.ndarray] | None = None
    ) -> None:
        _check_int("dim", dim, 1, 1 << 16)
        if config.d_proj > dim:
            raise InvalidArgument(
                "d_proj",
                f"{config.d_proj} is larger than the token dim {dim}; use at most {dim} (= no projection)",
            )
        self.config = config
        self.dim = dim
        matrices = _matrices if _matrices is not None else _generate(config, dim)
        self._hyperplanes = np.ascontiguousarray(matrices["hyperplanes"], dtype=np.float32)
        self._projection = matrices.get("projection")
        if self._projection is not None:
            self._projection = np.ascontiguousarray(self._projection, dtype=np.float32)
        self._sketch_index = matrices.get("sketch_index")
        self._sketch_sign = matrices.get("sketch_sign")
        self._check_shapes()
        identity = np.eye(self.dim, dtype=np.float32)
        self._combined = np.ascontiguousarray(
            np.hstack([self._hyperplanes, identity if self._projection is None else self._projection])
        )

    def _check_shapes(self) -> None:
        c, r = self.config, self.config.repetitions
        if self._hyperplanes.shape != (self.dim, r * c.k_sim):
            raise ValueError(
                f"hyperplanes have shape {self._hyperplanes.shape}, expected {(self.dim, r * c.k_sim)}"
            )
        identity = c.d_proj == self.dim
        if identity != (self._projection is None):
            raise ValueError("projection matrix present/absent inconsistently with d_proj")
        if self._projection is not None and self._projection.shape != (self.dim, r * c.d_proj):
            raise ValueError(
                f"projection has shape {self._projection.shape}, expected {(self.dim, r * c.d_proj)}"
            )

    # ------------------------------------------------------------------------------ properties

    @property
    def inner_dim(self) -> int:
        """Dimension before the optional final projection: R · 2^k_sim · d_proj."""
        return self.config.blocks * self.config.d_proj

    @property
    def output_dim(self) -> int:
        return self.config.final_dim or self.inner_dim

    # ------------------------------------------------------------------------------ encoding

    def encode_queries(self, tokens: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Query FDEs (block = SUM of tokens, no filling) of a ragged batch: (m, output_dim) float32."""
        return self._encode(tokens, offsets, is_query=True)

    def encode_documents(self, tokens: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Document FDEs (block = AVERAGE of tokens, empty blocks filled) of a ragged batch."""
        return self._encode(tokens, offsets, is_query=False)

    def encode_query(self, tokens: np.ndarray) -> np.ndarray:
        return self.encode_queries(tokens, np.array([0, len(tokens)], dtype=np.int64))[0]

    def encode_document(self, tokens: np.ndarray) -> np.ndarray:
        return self.encode_documents(tokens, np.array([0, len(tokens)], dtype=np.int64))[0]

    def _encode(self, tokens: np.ndarray, offsets: np.ndarray, *, is_query: bool) -> np.ndarray:
        tokens, offsets = self._validate(tokens, offsets)
        c = self.config
        # One GEMM for all R·k_sim hyperplane margins and all R projections of every token.
        products = tokens @ self._combined
        shared = self._projection is None  # identity: every repetition reads the token itself
        out = np.zeros((len(offsets) - 1, self.inner_dim), dtype=np.float32)
        kernel = _scatter_parallel if len(offsets) - 1 >= PARALLEL_MIN_SETS else _scatter_serial
        kernel(
            products,
            offsets,
            out,
            c.repetitions,
            c.k_sim,
            c.d_proj,
            c.repetitions * c.k_sim,
            shared,
            is_query,
            c.fill_empty and not is_query,
        )
        if c.final_dim is None:
            return out
        final = np.zeros((out.shape[0], c.final_dim), dtype=np.float32)
        _count_sketch(out, self._sketch_index, self._sketch_sign, final)
        return final

    def _validate(self, tokens: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[1] != self.dim:
            raise InvalidArgument("tokens", f"must have shape (n, {self.dim}), got {tokens.shape}")
        tokens = np.ascontiguousarray(tokens, dtype=np.float32)
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        if offsets.ndim != 1 or len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != len(tokens):
            raise InvalidArgument(
                "offsets",
                f"must run from 0 to the token count {len(tokens)}, one set or more; got {offsets[:8]}",
            )
        sizes = np.diff(offsets)
        if (sizes <= 0).any():
            empty = int(np.argmax(sizes <= 0))
            raise InvalidArgument(
                "offsets", f"set {empty} has {int(sizes[empty])} tokens; every set needs at least one"
            )
        if not np.isfinite(tokens).all():
            row = int(np.argwhere(~np.isfinite(tokens))[0, 0])
            raise InvalidArgument("tokens", f"token {row} has a NaN or infinite value")
        return tokens, offsets

    # ------------------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> None:
        """Writes config, dim and every random matrix to one .npz file (atomically)."""
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
        with np.load(Path(path)) as data:
            version, dim = (int(x) for x in data["meta"])
            if version != _FORMAT_VERSION:
                raise ValueError(f"{path}: FDE file format {version}, this build reads {_FORMAT_VERSION}")
            config = FDEConfig.from_dict(json.loads(bytes(data["config"]).decode()))
            matrices = {name: data[name] for name in data.files if name not in ("meta", "config")}
        return cls(config, dim, _matrices=matrices)


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
        inner = config.blocks * config.d_proj
        matrices["sketch_index"] = rng.integers(0, config.final_dim, size=inner, dtype=np.int64)
        matrices["sketch_sign"] = (rng.integers(0, 2, size=inner, dtype=np.int8) * 2 - 1).astype(np.float32)
    return matrices


# ---------------------------------------------------------------------------------------- kernels


def _scatter_kernel(products, offsets, out, reps, k_sim, d_proj, proj_col, shared, is_query, fill):
    """``products`` holds, per token, the R·k_sim hyperplane margins in columns [0, R·k_sim) and the
    projected token from column ``proj_col`` (R blocks of d_proj, or one shared block)."""
    n_buckets = 1 << k_sim
    for doc in numba.prange(len(offsets) - 1):
        start, stop = offsets[doc], offsets[doc + 1]
        n = stop - start
        codes = np.empty((reps, n), dtype=np.int64)
        counts = np.zeros((reps, n_buckets), dtype=np.int64)
        row = out[doc]
        for t in range(start, stop):
            token = products[t]
            for r in range(reps):
                code = 0
                for j in range(k_sim):
                    if token[r * k_sim + j] > 0.0:
                        code |= 1 << j
                codes[r, t - start] = code
                counts[r, code] += 1
                src = proj_col if shared else proj_col + r * d_proj
                dst = (r * n_buckets + code) * d_proj
                for c in range(d_proj):
                    row[dst + c] += token[src + c]
        if is_query:
            continue
        for r in range(reps):
            src = proj_col if shared else proj_col + r * d_proj
            for b in range(n_buckets):
                dst = (r * n_buckets + b) * d_proj
                if counts[r, b] > 0:
                    inv = np.float32(1.0) / np.float32(counts[r, b])
                    for c in range(d_proj):
                        row[dst + c] *= inv
                elif fill:
                    best = _nearest_token(products, codes[r], start, r, k_sim, b, src, d_proj)
                    for c in range(d_proj):
                        row[dst + c] = products[best, src + c]


# A parallel kernel for batches, a serial one for a single set: waking the thread pool costs more
# than one query's whole encoding (measured ~5 ms vs ~0.1 ms with torch's OpenMP threads around).
_scatter_parallel = numba.njit(parallel=True, cache=True)(_scatter_kernel)
_scatter_serial = numba.njit(parallel=False, cache=True)(_scatter_kernel)
PARALLEL_MIN_SETS = 16


@numba.njit(cache=True)
def _nearest_token(products, codes, start, r, k_sim, bucket, src, d_proj):
    """The token whose code is nearest to ``bucket`` in Hamming distance; ties: smallest total
    |margin| over the differing bits, then the lexicographically smallest projected vector."""
    best = -1
    best_distance = k_sim + 1
    best_margin = np.inf
    for i in range(len(codes)):
        differing = codes[i] ^ bucket
        distance = 0
        bits = differing
        while bits:
            bits &= bits - 1
            distance += 1
        if distance > best_distance:
            continue
        t = start + i
        margin = 0.0
        for j in range(k_sim):
            if (differing >> j) & 1:
                margin += abs(products[t, r * k_sim + j])
        better = distance < best_distance or margin < best_margin
        if not better and margin == best_margin:
            for c in range(d_proj):
                a, b = products[t, src + c], products[best, src + c]
                if a != b:
                    better = a < b
                    break
        if better:
            best, best_distance, best_margin = t, distance, margin
    return best


@numba.njit(parallel=True, cache=True)
def _count_sketch(inner, index, sign, final):
    for doc in numba.prange(inner.shape[0]):
        for j in range(inner.shape[1]):
            final[doc, index[j]] += sign[j] * inner[doc, j]
