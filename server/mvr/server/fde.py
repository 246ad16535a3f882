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
hyperplane margins and all R·d_proj projected coordinates of a chunk of about a thousand tokens come
from one matrix product (margin columns ordered bit-major, so one bit of all R codes is one vector
compare); bucketing, scatter, averaging and filling then run over the chunk in one Numba kernel while
the product is still in cache. The product is this module's own register-tiled kernel
(:func:`_matmul_fma`: 4 tokens × 24 columns a tile in 12 vector registers, the matrix packed once into
24-column panels), not BLAS: it took 0.65–1.05× the CPU time of OpenBLAS 0.3.31's single-threaded
sgemm on the chunk shapes (dim 128–768 × 240–420 columns, AVX2, Zen 3), which also packs the tokens on
every call; AVX-512 hosts run it on 256-bit vectors (not measured there). A batch's chunks are shared
out to ``threads`` workers (the calling thread and pool threads), each running product and kernel on
its chunk while it is in cache (BLAS's threads on each chunk's product, then Numba's on the kernel,
left the cores waiting on each other: 45% of the sgemm roofline at (20, 5, 16) against 74%). BLAS is
not called, so its thread setting neither matters nor is touched; the default, one thread, encodes on
the caller's thread only.

Reproducibility: results are bit-identical whatever the batching and the thread count. Every product
element is one chain of fused multiply-adds over the token's coordinates in order,
``acc = fma(x[k], w[k], acc)`` from ``acc = 0`` (``llvm.fma``: one rounding a step, on every target),
whichever tile shape, row position, chunk or thread computes it (``tests/test_fde.py`` checks the
chain exactly). BLAS promises no such thing, and OpenBLAS's Haswell sgemm kernel (the one it picks on
AVX2 CPUs without AVX-512, e.g. AMD Zen 3) breaks it: some of its micro-tiles keep two partial sums
(even and odd k, added at the end) — the first 8 columns of the left half of each 12-token tile, the
last full 8 columns of one half, the 4-token tails — and the others one, so a token's row rounded
differently with its position in the call (index mod 12, the tails) and with BLAS's thread partition,
which no padding of the call avoids (the SkylakeX kernel, on the AVX-512 host this was first measured
on, showed it only for small products). Each set is encoded by one thread in token order, and the
Numba kernels use no fastmath, so they never reassociate or contract; every step being IEEE
arithmetic in a fixed order, the output should also be the same on any machine (subnormals not
flushed, the default), though that is not tested.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from mvr.server.errors import InvalidArgument
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

MAX_K_SIM = 10
MAX_OUTPUT_DIM = 1 << 24
_FORMAT_VERSION = 1
FDE_FILE = "fde.npz"  # a collection's FDE matrices, in its directory (see FDE.save)

# Tokens per chunk: the chunk's product (tokens × R·(k_sim + d_proj) floats, 1.7 MB at (20, 5, 16)) is
# still in cache (L2/L3) for the kernel, and the Python work per chunk (~30 µs) is under 1% of the
# chunk's product. At dim 384, (20, 5, 16), 256 to 2048 tokens measured within this machine's
# run-to-run noise (±10%).
CHUNK_TOKENS = 1024
# The product's register tile (:func:`_matmul_fma`): _TILE_ROWS tokens × _PANEL_VECTORS vectors of
# _LANES float32 columns, 12 vector accumulators, which with the 3 panel vectors and a broadcast fills
# AVX2's 16 registers (6 × 16 measured as fast; 3 × 32 spills, 2.5× slower). The matrix is packed once
# into PANEL_COLUMNS-wide panels; the last may be 1–3 vectors wide, so at most 7 padding columns.
_LANES = 8
_TILE_ROWS = 4
_PANEL_VECTORS = 3
PANEL_COLUMNS = _LANES * _PANEL_VECTORS
# Tokens are multiplied in blocks of about this many bytes (kept in L2 while every panel passes over
# them); 64 KiB–512 KiB measured alike at dim 128–768.
_BLOCK_BYTES = 1 << 17


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

    ``threads``: how many threads one batch call may use, the caller's included (default 1: the
    caller's only; see the module docstring). Thread-safe: encoding reads the matrices only.
    """

    def __init__(
        self,
        config: FDEConfig,
        dim: int,
        *,
        threads: int = 1,
        _matrices: dict[str, np.ndarray] | None = None,
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
        self.threads = threads
        matrices = _matrices if _matrices is not None else _generate(config, self.dim)
        self._hyperplanes = np.ascontiguousarray(matrices["hyperplanes"], dtype=np.float32)
        projection = matrices.get("projection")
        self._projection = None if projection is None else np.ascontiguousarray(projection, np.float32)
        self._sketch_index = matrices.get("sketch_index")
        self._sketch_sign = matrices.get("sketch_sign")
        self._check_matrices()
        # One product gives the margins (first R·k_sim columns, bit-major: column j·R + r is bit j of
        # repetition r) and, unless the projection is the identity, the R projected copies (next
        # R·d_proj columns, repetition-major); its matrix is packed once into panels (_pack_panels).
        r, k = config.repetitions, config.k_sim
        bit_major = self._hyperplanes.reshape(self.dim, r, k).transpose(0, 2, 1).reshape(self.dim, r * k)
        parts = [bit_major] if self._projection is None else [bit_major, self._projection]
        self._panels, self._last_vectors = _pack_panels(np.hstack(parts))

    @property
    def threads(self) -> int:
        """Threads one batch call may use (the calling thread included)."""
        return self._threads

    @threads.setter
    def threads(self, value: int) -> None:
        _check_int("threads", value, 1, 1024)
        self._threads = int(value)

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

    def encode_queries(
        self, tokens: np.ndarray, offsets: np.ndarray, *, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Query FDEs (block = SUM of tokens, no filling) of a ragged batch.

        ``tokens``: float32 (n, dim), the sets one after another; ``offsets``: int64 (m + 1,), set i is
        ``tokens[offsets[i]:offsets[i + 1]]``. Returns float32 (m, output_dim): ``out`` if given (a
        C-contiguous float32 array of that shape, reused by callers that encode batch after batch:
        a fresh result costs a page fault per 4 KiB on first touch), else a new array.
        """
        return self._encode(tokens, offsets, out, is_query=True)

    def encode_documents(
        self, tokens: np.ndarray, offsets: np.ndarray, *, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Document FDEs (block = AVERAGE of tokens, empty blocks filled if configured); as
        :meth:`encode_queries`."""
        return self._encode(tokens, offsets, out, is_query=False)

    def encode_query(self, tokens: np.ndarray) -> np.ndarray:
        """The FDE of one query, tokens (n, dim) → (output_dim,) float32."""
        return self.encode_queries(tokens, _single_offsets(tokens))[0]

    def encode_document(self, tokens: np.ndarray) -> np.ndarray:
        """The FDE of one document, tokens (n, dim) → (output_dim,) float32."""
        return self.encode_documents(tokens, _single_offsets(tokens))[0]

    def _encode(
        self, tokens: np.ndarray, offsets: np.ndarray, out: np.ndarray | None, *, is_query: bool
    ) -> np.ndarray:
        tokens, offsets = self._validate(tokens, offsets)
        shape = (len(offsets) - 1, self.output_dim)
        if out is None:
            out = np.empty(shape, dtype=np.float32)
        elif not (
            isinstance(out, np.ndarray)
            and out.shape == shape
            and out.dtype == np.float32
            and out.flags.c_contiguous
            and out.flags.writeable
        ):
            got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
            raise InvalidArgument("out", f"must be a writeable C-contiguous float32 array {shape}, got {got}")
        chunks = _chunk_bounds(offsets, CHUNK_TOKENS)
        workers = min(self.threads, len(chunks))
        next_chunk = itertools.count()  # next() on it is atomic under the GIL
        non_finite: list[int] = []  # tokens found NaN or infinite; every worker stops at the first

        def work() -> None:
            while not non_finite and (index := next(next_chunk)) < len(chunks):
                bad = self._encode_chunk(tokens, offsets, *chunks[index], out, is_query)
                if bad >= 0:
                    non_finite.append(bad)

        if workers == 1:
            work()
        else:
            helpers: list[Future[None]] = [_pool().submit(work) for _ in range(workers - 1)]
            try:
                work()  # the caller works too: progress even when the pool is busy with other calls
            finally:
                # Every chunk is taken once the caller's loop ends: a helper still queued behind other
                # calls' work is cancelled rather than waited for; a running one may be mid-chunk,
                # and every writer into ``out`` is done before it is returned.
                for helper in helpers:
                    if not helper.cancel():
                        helper.result()
        if non_finite:
            raise InvalidArgument("tokens", f"token {min(non_finite)} has a NaN or infinite value")
        return out

    def _encode_chunk(
        self, tokens: np.ndarray, offsets: np.ndarray, start: int, stop: int, out: np.ndarray, is_query: bool
    ) -> int:
        """Encodes sets ``start:stop`` into ``out[start:stop]``: one product, one kernel call. Returns
        -1, or the index of a NaN or infinite token (then nothing is encoded)."""
        c = self.config
        first, last = int(offsets[start]), int(offsets[stop])
        chunk_tokens = tokens[first:last]
        bad = _first_non_finite(chunk_tokens)
        if bad >= 0:
            return first + bad
        products = self._products(chunk_tokens)
        shared = self._projection is None  # identity: every repetition reads the token itself
        projected, proj_col = (chunk_tokens, 0) if shared else (products, c.repetitions * c.k_sim)
        inner = (
            out[start:stop] if c.final_dim is None else np.empty((stop - start, self.inner_dim), np.float32)
        )
        average = not is_query
        _encode_sets(
            products, projected, proj_col, offsets[start : stop + 1] - first, inner, c.repetitions,
            c.k_sim, c.d_proj, shared, average, average and c.fill_empty,
        )  # fmt: skip
        if c.final_dim is not None:
            _count_sketch(inner, self._sketch_index, self._sketch_sign, out[start:stop])
        return -1

    def _products(self, tokens: np.ndarray) -> np.ndarray:
        """tokens @ [hyperplanes | projections], every element one in-order fused multiply-add chain
        (bit-reproducible, see the module docstring). Returns (n, columns rounded up to
        :data:`_LANES`); the columns past R·(k_sim + d_proj) are zero and never read."""
        n, n_panels = len(tokens), self._panels.shape[0]
        if n_panels == 0:  # identity projection and k_sim = 0: nothing to multiply
            return np.empty((n, 0), np.float32)
        out = np.empty((n, (n_panels - 1) * PANEL_COLUMNS + self._last_vectors * _LANES), np.float32)
        _matmul_fma(tokens, self._panels, self._last_vectors, out)
        return out

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
        # Finiteness is checked per chunk by the workers (one pass over data in cache, in parallel).
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
    def load(cls, path: str | Path, *, threads: int = 1) -> FDE:
        """Reads what :meth:`save` wrote; the matrices are used as stored, never regenerated."""
        with np.load(Path(path), allow_pickle=False) as data:
            version, dim = (int(x) for x in data["meta"])
            if version != _FORMAT_VERSION:
                raise ValueError(f"{path}: FDE file format {version}, this build reads {_FORMAT_VERSION}")
            config = FDEConfig.from_dict(json.loads(bytes(data["config"]).decode()))
            matrices = {name: data[name] for name in data.files if name not in ("meta", "config")}
        return cls(config, dim, threads=threads, _matrices=matrices)


def _single_offsets(tokens: np.ndarray) -> np.ndarray:
    return np.array([0, len(tokens)], dtype=np.int64)


def _chunk_bounds(offsets: np.ndarray, chunk_tokens: int) -> list[tuple[int, int]]:
    """Consecutive (start, stop) set ranges of about ``chunk_tokens`` tokens each, at least one set."""
    bounds = []
    start, n_sets = 0, len(offsets) - 1
    while start < n_sets:
        stop = int(np.searchsorted(offsets, offsets[start] + chunk_tokens, side="right")) - 1
        stop = min(max(stop, start + 1), n_sets)
        bounds.append((start, stop))
        start = stop
    return bounds


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """The process's FDE worker threads, made on first use (one per CPU; callers bring their own
    thread on top)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=available_cpus(), thread_name_prefix="mvr-fde")
        return _POOL


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


# ---------------------------------------------------------------------------------------- product


def _pack_panels(matrix: np.ndarray) -> tuple[np.ndarray, int]:
    """(dim, cols) → float32 (ceil(cols / PANEL_COLUMNS), dim, PANEL_COLUMNS), C-contiguous: panel p row
    k is ``matrix[k, p·PANEL_COLUMNS : (p + 1)·PANEL_COLUMNS]``, zero-padded. Also returns how many
    vectors of the last panel hold columns (1 to _PANEL_VECTORS)."""
    dim, cols = matrix.shape
    n_panels = -(-cols // PANEL_COLUMNS)
    padded = np.zeros((dim, n_panels * PANEL_COLUMNS), np.float32)
    padded[:, :cols] = matrix
    panels = np.ascontiguousarray(padded.reshape(dim, n_panels, PANEL_COLUMNS).transpose(1, 0, 2))
    last_vectors = -(-(cols - (n_panels - 1) * PANEL_COLUMNS) // _LANES) if n_panels else 0
    return panels, last_vectors


def _is_array(ty: types.Type, ndim: int) -> bool:
    return isinstance(ty, types.Array) and ty.dtype == types.float32 and ty.ndim == ndim and ty.layout == "C"


def _make_tile(rows: int, vectors: int):
    """A Numba intrinsic ``tile(x, i0, panels, p, out, c0)``: ``out[i0 + r, c0 + c]`` for r < rows, c <
    vectors·_LANES, each element the chain ``acc = fma(x[i0 + r, k], panels[p, k, c], acc)`` over k =
    0 … dim − 1 from acc = +0.0. The rows·vectors accumulators are SSA vectors (registers) and the
    multiply-adds ``llvm.fma`` (one rounding, never split into a multiply and an add, no fast-math
    flags): the same chain, so the same bits, for any tile shape, row position or target."""
    vector = ir.VectorType(ir.FloatType(), _LANES)
    i64 = ir.IntType(64)
    splat = ir.Constant(ir.VectorType(ir.IntType(32), _LANES), [0] * _LANES)

    @intrinsic
    def tile(typingctx, x, i0, panels, p, out, c0):
        if not (_is_array(x, 2) and _is_array(panels, 3) and _is_array(out, 2)):
            return None
        if not all(isinstance(ty, types.Integer) for ty in (i0, p, c0)):
            return None

        def codegen(context, builder, signature, args):
            x_ty, i0_ty, panels_ty, p_ty, out_ty, c0_ty = signature.args
            xs = context.make_array(x_ty)(context, builder, args[0])
            ps = context.make_array(panels_ty)(context, builder, args[2])
            os_ = context.make_array(out_ty)(context, builder, args[4])
            first = context.cast(builder, args[1], i0_ty, types.int64)
            panel = context.cast(builder, args[3], p_ty, types.int64)
            column = context.cast(builder, args[5], c0_ty, types.int64)
            dim = builder.extract_value(xs.shape, 1)
            width = builder.extract_value(os_.shape, 1)
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vector, [vector] * 3), f"llvm.fma.v{_LANES}f32"
            )
            x_rows, out_rows = [], []
            for r in range(rows):
                row = builder.add(first, i64(r))
                x_rows.append(builder.gep(xs.data, [builder.mul(row, dim)]))
                out_rows.append(builder.gep(os_.data, [builder.add(builder.mul(row, width), column)]))
            panel_data = builder.gep(ps.data, [builder.mul(builder.mul(panel, dim), i64(PANEL_COLUMNS))])
            entry = builder.block
            loop = builder.append_basic_block("fma_tile_loop")
            done = builder.append_basic_block("fma_tile_done")
            builder.branch(loop)  # dim ≥ 1: the loop body runs at least once
            builder.position_at_end(loop)
            k = builder.phi(i64)
            k.add_incoming(i64(0), entry)
            accumulators = [[builder.phi(vector) for _ in range(vectors)] for _ in range(rows)]
            for phi in itertools.chain.from_iterable(accumulators):
                phi.add_incoming(ir.Constant(vector, [0.0] * _LANES), entry)
            weights_row = builder.gep(panel_data, [builder.mul(k, i64(PANEL_COLUMNS))])
            weights = [
                builder.load(
                    builder.bitcast(builder.gep(weights_row, [i64(v * _LANES)]), vector.as_pointer()), align=4
                )
                for v in range(vectors)
            ]
            updated = []
            for r in range(rows):
                value = builder.load(builder.gep(x_rows[r], [k]), align=4)
                broadcast = builder.shuffle_vector(
                    builder.insert_element(ir.Constant(vector, ir.Undefined), value, ir.IntType(32)(0)),
                    ir.Constant(vector, ir.Undefined),
                    splat,
                )
                updated.append(
                    [builder.call(fma, [broadcast, weights[v], accumulators[r][v]]) for v in range(vectors)]
                )
            following = builder.add(k, i64(1))
            k.add_incoming(following, builder.block)
            for r in range(rows):
                for v in range(vectors):
                    accumulators[r][v].add_incoming(updated[r][v], builder.block)
            builder.cbranch(builder.icmp_signed("<", following, dim), loop, done)
            builder.position_at_end(done)
            for r in range(rows):
                for v in range(vectors):
                    target = builder.gep(out_rows[r], [i64(v * _LANES)])
                    builder.store(updated[r][v], builder.bitcast(target, vector.as_pointer()), align=4)
            return context.get_dummy_value()

        return types.void(x, i0, panels, p, out, c0), codegen

    return tile


_tile_4_3, _tile_4_2, _tile_4_1 = _make_tile(4, 3), _make_tile(4, 2), _make_tile(4, 1)
_tile_3_3, _tile_3_2, _tile_3_1 = _make_tile(3, 3), _make_tile(3, 2), _make_tile(3, 1)
_tile_2_3, _tile_2_2, _tile_2_1 = _make_tile(2, 3), _make_tile(2, 2), _make_tile(2, 1)
_tile_1_3, _tile_1_2, _tile_1_1 = _make_tile(1, 3), _make_tile(1, 2), _make_tile(1, 1)
assert (_TILE_ROWS, _PANEL_VECTORS) == (4, 3), "the tiles above and in _tile cover 1–4 rows × 1–3 vectors"


@numba.njit(nogil=True, cache=True, inline="always")
def _tile(x, i0, rows, panels, p, vectors, out, c0):
    """The tile of ``rows`` (1–4) tokens × ``vectors`` (1–3) vectors: an intrinsic needs its shape at
    compile time."""
    if rows == 4:
        if vectors == 3:
            _tile_4_3(x, i0, panels, p, out, c0)
        elif vectors == 2:
            _tile_4_2(x, i0, panels, p, out, c0)
        else:
            _tile_4_1(x, i0, panels, p, out, c0)
    elif rows == 3:
        if vectors == 3:
            _tile_3_3(x, i0, panels, p, out, c0)
        elif vectors == 2:
            _tile_3_2(x, i0, panels, p, out, c0)
        else:
            _tile_3_1(x, i0, panels, p, out, c0)
    elif rows == 2:
        if vectors == 3:
            _tile_2_3(x, i0, panels, p, out, c0)
        elif vectors == 2:
            _tile_2_2(x, i0, panels, p, out, c0)
        else:
            _tile_2_1(x, i0, panels, p, out, c0)
    elif vectors == 3:
        _tile_1_3(x, i0, panels, p, out, c0)
    elif vectors == 2:
        _tile_1_2(x, i0, panels, p, out, c0)
    else:
        _tile_1_1(x, i0, panels, p, out, c0)


@numba.njit(nogil=True, cache=True)
def _matmul_fma(x, panels, last_vectors, out):
    """``out = x @ W`` for W packed by :func:`_pack_panels` (``last_vectors`` from it too): x float32
    (n, dim), out float32 (n, (panels − 1)·PANEL_COLUMNS + last_vectors·_LANES), both C-contiguous.
    Every element is the in-order fma chain of :func:`_make_tile`, whatever n and the row's position.
    Blocks of tokens stay in L2 while every panel passes over them."""
    n, dim, n_panels = x.shape[0], x.shape[1], panels.shape[0]
    if (
        panels.shape[1] != dim
        or not 1 <= last_vectors <= _PANEL_VECTORS
        or out.shape[0] != n
        or out.shape[1] != (n_panels - 1) * PANEL_COLUMNS + last_vectors * _LANES
    ):
        raise ValueError("_matmul_fma: shapes of x, panels and out do not match")
    block = max(_TILE_ROWS, _BLOCK_BYTES // (4 * dim) // _TILE_ROWS * _TILE_ROWS)
    for start in range(0, n, block):
        stop = min(start + block, n)
        for p in range(n_panels):
            vectors = _PANEL_VECTORS if p < n_panels - 1 else last_vectors
            first = start
            while first < stop:
                rows = min(_TILE_ROWS, stop - first)
                _tile(x, first, rows, panels, p, vectors, out, p * PANEL_COLUMNS)
                first += rows


# ---------------------------------------------------------------------------------------- kernels


@numba.njit(nogil=True, cache=True)
def _encode_sets(products, projected, proj_col, offsets, out, reps, k_sim, d_proj, shared, average, fill):
    """One FDE row per set, the sets one after another on this thread. ``products[t, j·reps + r]`` is
    token t's margin on hyperplane j of repetition r; its projected copy for repetition r starts at
    ``projected[t, proj_col + r·d_proj]`` (at ``proj_col`` for every r when ``shared``). Writes every
    element of ``out``."""
    longest = 0
    for s in range(len(offsets) - 1):
        longest = max(longest, offsets[s + 1] - offsets[s])
    codes = np.empty(longest * reps, dtype=np.int32)  # [i·reps + r]: token i's code in repetition r
    counts = np.empty(reps << k_sim, dtype=np.int32)  # tokens per block
    scratch = np.empty(2 * (1 << k_sim) + 1 + longest, dtype=np.int32)  # of _fill_empty_blocks
    for s in range(len(offsets) - 1):
        start, stop = offsets[s], offsets[s + 1]
        row = out[s]
        row[:] = 0.0
        counts[:] = 0
        _bucket_codes(products[start:stop], codes, reps, k_sim)
        _scatter(projected[start:stop], proj_col, codes, counts, row, reps, k_sim, d_proj, shared)
        if average:
            _average(counts, row, d_proj)
        if fill:
            _fill_empty_blocks(
                products[start:stop], projected[start:stop], proj_col, codes, counts, scratch, row, reps,
                k_sim, d_proj, shared,
            )  # fmt: skip


@numba.njit(nogil=True, cache=True, inline="always")
def _bucket_codes(margins, codes, reps, k_sim):
    """codes[i·reps + r] = plain binary code of token i's sign bits in repetition r (bit j set when
    margin j is positive). Bit-major margins make each bit one compare over all repetitions."""
    for i in range(len(margins)):
        token_codes = codes[i * reps : (i + 1) * reps]
        token_codes[:] = 0
        for j in range(k_sim):
            bit = margins[i, j * reps : (j + 1) * reps]
            for r in range(reps):
                token_codes[r] |= np.int32(bit[r] > 0.0) << j


@numba.njit(nogil=True, cache=True, inline="always")
def _scatter(projected, proj_col, codes, counts, row, reps, k_sim, d_proj, shared):
    """Adds every token's projected copy to its block, in token order, and counts the tokens.

    Inner loops index short slices from 0: Numba then can prove the indices non-negative and drops
    its negative-index wraparound branch, which otherwise blocks vectorisation (2.5x on the scatter).
    """
    n_buckets = 1 << k_sim
    for i in range(len(projected)):
        values = projected[i]
        token_codes = codes[i * reps : (i + 1) * reps]
        for r in range(reps):
            block = r * n_buckets + token_codes[r]
            counts[block] += 1
            src = proj_col if shared else proj_col + r * d_proj
            target = row[block * d_proj : (block + 1) * d_proj]
            source = values[src : src + d_proj]
            for c in range(d_proj):
                target[c] += source[c]


@numba.njit(nogil=True, cache=True, inline="always")
def _average(counts, row, d_proj):
    """Divides each block with more than one token by its count (IEEE division, as the definition)."""
    for block in range(len(counts)):
        if counts[block] > 1:
            divisor = np.float32(counts[block])
            target = row[block * d_proj : (block + 1) * d_proj]
            for c in range(d_proj):
                target[c] /= divisor


@numba.njit(nogil=True, cache=True)
def _fill_empty_blocks(
    margins, projected, proj_col, codes, counts, scratch, row, reps, k_sim, d_proj, shared
):
    """Every empty block gets the projected copy of the token whose code is nearest to the bucket in
    Hamming distance; ties go to the smallest total |margin| over the differing bits (the token
    closest to crossing into the bucket), then to the lexicographically smallest projected vector —
    nothing depends on the order of the tokens (identical vectors fill identically).

    Per repetition with an empty bucket, the tokens are grouped by bucket (a counting sort on the
    block counts), so each empty bucket visits the occupied buckets, then only the tokens of those
    at the nearest distance (one pass over every token for all empty buckets at once measured
    slower at k_sim = 5).
    ``scratch``: int32, at least 2·2^k_sim + 1 + (tokens in the set).
    """
    n_buckets = 1 << k_sim
    n = len(margins)
    occupied = scratch[:n_buckets]  # the distinct codes of this repetition
    begin = scratch[n_buckets : 2 * n_buckets + 1]  # tokens of bucket b: members[begin[b]:begin[b + 1]]
    members = scratch[2 * n_buckets + 1 : 2 * n_buckets + 1 + n]
    for r in range(reps):
        block_counts = counts[r * n_buckets : (r + 1) * n_buckets]
        n_occupied = 0
        begin[0] = 0
        for b in range(n_buckets):
            if block_counts[b] > 0:
                occupied[n_occupied] = b
                n_occupied += 1
            begin[b + 1] = begin[b] + block_counts[b]
        if n_occupied == n_buckets:
            continue
        for i in range(n):  # counting sort, begin[b] advancing to the end of bucket b ...
            code = codes[i * reps + r]
            members[begin[code]] = i
            begin[code] += 1
        for b in range(n_buckets - 1, -1, -1):  # ... and back to its start
            begin[b + 1] = begin[b]
        begin[0] = 0
        src = proj_col if shared else proj_col + r * d_proj
        for bucket in range(n_buckets):
            if block_counts[bucket] > 0:
                continue
            nearest = k_sim + 1
            for o in range(n_occupied):
                nearest = min(nearest, _popcount(occupied[o] ^ bucket))
            best = -1
            best_margin = np.inf
            for o in range(n_occupied):
                code = occupied[o]
                differing = code ^ bucket
                if _popcount(differing) != nearest:
                    continue
                for q in range(begin[code], begin[code + 1]):
                    i = members[q]
                    margin = _crossing_margin(margins, i, differing, r, reps, k_sim)
                    if (
                        best < 0
                        or margin < best_margin
                        or (margin == best_margin and _smaller_vector(projected, i, best, src, d_proj))
                    ):
                        best, best_margin = i, margin
            block = r * n_buckets + bucket
            target = row[block * d_proj : (block + 1) * d_proj]
            source = projected[best, src : src + d_proj]
            for c in range(d_proj):
                target[c] = source[c]


@numba.njit(nogil=True, cache=True, inline="always")
def _crossing_margin(margins, i, differing, r, reps, k_sim):
    """Σ |margin| of token i over the bits in ``differing`` (repetition r), in bit order."""
    margin = 0.0
    for j in range(k_sim):
        if (differing >> j) & 1:
            margin += abs(margins[i, j * reps + r])
    return margin


@numba.njit(nogil=True, cache=True, inline="always")
def _smaller_vector(projected, i, j, src, d_proj):
    """Whether token i's projected copy is lexicographically smaller than token j's."""
    mine, theirs = projected[i, src : src + d_proj], projected[j, src : src + d_proj]
    for c in range(d_proj):
        if mine[c] != theirs[c]:
            return mine[c] < theirs[c]
    return False


@numba.njit(nogil=True, cache=True, inline="always")
def _popcount(x):
    """Set bits of a non-negative int32 (codes have at most MAX_K_SIM bits)."""
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return (x * 0x01010101 & 0xFFFFFFFF) >> 24


@numba.njit(nogil=True, cache=True)
def _first_non_finite(tokens):
    """Row of the first token with a NaN or infinite value, or -1: exponent bits all set, tested on
    the integer view so the loop vectorises (a float test would need fastmath)."""
    bits = tokens.view(np.uint32)
    exponent = np.uint32(0x7F800000)
    for i in range(bits.shape[0]):
        row = bits[i]
        bad = False
        for c in range(len(row)):
            bad |= (row[c] & exponent) == exponent
        if bad:
            return i
    return -1


@numba.njit(nogil=True, cache=True)
def _count_sketch(inner, index, sign, final):
    """final[s, index[j]] += sign[j] · inner[s, j], j in order (deterministic)."""
    for s in range(inner.shape[0]):
        row = final[s]
        row[:] = 0.0
        for j in range(inner.shape[1]):
            row[index[j]] += sign[j] * inner[s, j]
