"""MUVERA FDE: the paper's invariants as property tests, equality with a slow reference written here
from the definition, bit-exact batching, persistence, validation, and first-stage quality on planted
neighbours."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mvr.server import fde as fde_module
from mvr.server.errors import InvalidArgument
from mvr.server.fde import FDE, FDEConfig
from threadpoolctl import ThreadpoolController


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def chamfer(q: np.ndarray, d: np.ndarray) -> float:
    return float((q.astype(np.float64) @ d.T.astype(np.float64)).max(axis=1).sum())


def offsets_of(sets: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum([len(s) for s in sets])]).astype(np.int64)


def reference(fde: FDE, tokens: np.ndarray, is_query: bool) -> np.ndarray:
    """The paper's definition, one token and one bucket at a time, in float64, from the FDE's
    persisted matrices."""
    c = fde.config
    buckets = 1 << c.k_sim
    x = tokens.astype(np.float64)
    hyper = fde._hyperplanes.astype(np.float64)
    proj = None if fde._projection is None else fde._projection.astype(np.float64)
    blocks = []
    for r in range(c.repetitions):
        margins = x @ hyper[:, r * c.k_sim : (r + 1) * c.k_sim]
        codes = [sum(1 << j for j in range(c.k_sim) if m[j] > 0) for m in margins]
        projected = x if proj is None else x @ proj[:, r * c.d_proj : (r + 1) * c.d_proj]
        for b in range(buckets):
            members = [i for i, code in enumerate(codes) if code == b]
            if members:
                block = projected[members].sum(axis=0)
                if not is_query:
                    block = block / len(members)
            elif is_query or not c.fill_empty:
                block = np.zeros(c.d_proj)
            else:

                def key(i: int, margins=margins, b=b, codes=codes, projected=projected) -> tuple:
                    differing = [j for j in range(c.k_sim) if ((codes[i] >> j) & 1) != ((b >> j) & 1)]
                    return (len(differing), sum(abs(margins[i][j]) for j in differing), tuple(projected[i]))

                block = projected[min(range(len(tokens)), key=key)]
            blocks.append(block)
    inner = np.concatenate(blocks)
    if c.final_dim is None:
        return inner
    final = np.zeros(c.final_dim)
    np.add.at(final, fde._sketch_index, fde._sketch_sign * inner)
    return final


configs = st.builds(
    FDEConfig,
    repetitions=st.integers(1, 4),
    k_sim=st.integers(0, 4),
    d_proj=st.sampled_from([2, 4, 8]),  # 8 = the token dim: identity
    fill_empty=st.booleans(),
    final_dim=st.sampled_from([None, 16]),
    seed=st.integers(0, 1000),
)


@settings(max_examples=40, deadline=None)
@given(config=configs, n=st.integers(1, 30), seed=st.integers(0, 2**16))
def test_matches_the_slow_reference(config: FDEConfig, n: int, seed: int) -> None:
    fde = FDE(config, 8)
    tokens = unit(np.random.default_rng(seed), n, 8)
    np.testing.assert_allclose(fde.encode_query(tokens), reference(fde, tokens, True), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        fde.encode_document(tokens), reference(fde, tokens, False), rtol=1e-4, atol=1e-5
    )


@settings(max_examples=25, deadline=None)
@given(
    k_sim=st.integers(5, 6),
    d_proj=st.sampled_from([4, 16]),  # 16 = the token dim: identity
    n=st.integers(20, 120),
    duplicates=st.integers(0, 10),
    seed=st.integers(0, 2**16),
)
def test_matches_the_slow_reference_with_many_buckets_and_ties(
    k_sim: int, d_proj: int, n: int, duplicates: int, seed: int
) -> None:
    """Realistic bucket counts (32–64 per repetition, many empty, many filled from the same few
    occupied buckets) and repeated tokens (exact fill ties), through the threaded batch path."""
    fde = FDE(FDEConfig(3, k_sim, d_proj, seed=seed % 7), 16, threads=2)
    rng = np.random.default_rng(seed)
    tokens = unit(rng, n, 16)
    tokens[:duplicates] = tokens[n - 1]  # identical tokens tie on margin and on vector
    sets = [tokens, tokens[: max(1, n // 3)], tokens[n // 2 :]]
    batch = fde.encode_documents(np.vstack(sets), offsets_of(sets))
    for row, one in zip(batch, sets, strict=True):
        np.testing.assert_allclose(row, reference(fde, one, False), rtol=1e-4, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(
    reps=st.integers(1, 6),
    k_sim=st.integers(0, 5),
    nq=st.integers(1, 12),
    nd=st.integers(1, 40),
    seed=st.integers(0, 2**16),
)
def test_inner_product_bounded_by_r_times_chamfer_with_identity_and_fill(
    reps: int, k_sim: int, nq: int, nd: int, seed: int
) -> None:
    dim = 8
    fde = FDE(FDEConfig(reps, k_sim, dim, fill_empty=True, seed=seed), dim)
    rng = np.random.default_rng(seed)
    q, d = unit(rng, nq, dim), unit(rng, nd, dim)
    estimate = float(fde.encode_query(q).astype(np.float64) @ fde.encode_document(d))
    bound = reps * chamfer(q, d)
    assert estimate <= bound + 1e-4 * max(1.0, abs(bound))


@settings(max_examples=30, deadline=None)
@given(reps=st.integers(1, 6), k_sim=st.integers(0, 5), nq=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_single_token_document_is_exact(reps: int, k_sim: int, nq: int, seed: int) -> None:
    fde = FDE(FDEConfig(reps, k_sim, 8, seed=seed), 8)
    rng = np.random.default_rng(seed)
    q, d = unit(rng, nq, 8), unit(rng, 1, 8)
    estimate = float(fde.encode_query(q).astype(np.float64) @ fde.encode_document(d))
    assert estimate == pytest.approx(reps * chamfer(q, d), rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("d_proj", [4, 8])  # 8 = the dim: identity
def test_k_sim_zero_is_projected_mean_and_sum(d_proj: int) -> None:
    fde = FDE(FDEConfig(3, 0, d_proj, seed=1), 8)
    tokens = unit(np.random.default_rng(0), 7, 8)
    if d_proj == 8:
        assert fde._projection is None
        projected = [tokens] * 3
    else:
        projected = [tokens @ fde._projection[:, r * d_proj : (r + 1) * d_proj] for r in range(3)]
    np.testing.assert_allclose(
        fde.encode_document(tokens), np.concatenate([p.mean(0) for p in projected]), rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(
        fde.encode_query(tokens), np.concatenate([p.sum(0) for p in projected]), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("final_dim", [None, 64])
@settings(max_examples=25, deadline=None)
@given(n1=st.integers(1, 15), n2=st.integers(1, 15), seed=st.integers(0, 2**16))
def test_query_encoding_is_linear(final_dim: int | None, n1: int, n2: int, seed: int) -> None:
    fde = FDE(FDEConfig(4, 3, 4, final_dim=final_dim, seed=3), 16)
    rng = np.random.default_rng(seed)
    q1, q2 = unit(rng, n1, 16), unit(rng, n2, 16)
    np.testing.assert_allclose(
        fde.encode_query(np.vstack([q1, q2])),
        fde.encode_query(q1) + fde.encode_query(q2),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("fill", [True, False])
@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_token_order_does_not_matter(fill: bool, n: int, seed: int) -> None:
    fde = FDE(FDEConfig(5, 4, 4, fill_empty=fill, seed=7), 16)
    rng = np.random.default_rng(seed)
    tokens = unit(rng, n, 16)
    shuffled = tokens[rng.permutation(n)]
    # equal up to float summation order; a different fill token or bucket would differ by O(0.1)
    np.testing.assert_allclose(
        fde.encode_document(shuffled), fde.encode_document(tokens), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(fde.encode_query(shuffled), fde.encode_query(tokens), rtol=1e-5, atol=1e-6)


def test_token_order_does_not_matter_at_realistic_size() -> None:
    """128-d tokens, 2^5 buckets and short documents: many fills, every one order-independent."""
    fde = FDE(FDEConfig(20, 5, 16, seed=4), 128)
    rng = np.random.default_rng(8)
    for n in (1, 3, 12, 60):
        tokens = unit(rng, n, 128)
        expected = fde.encode_document(tokens)
        for _ in range(3):
            shuffled = fde.encode_document(tokens[rng.permutation(n)])
            np.testing.assert_allclose(shuffled, expected, rtol=1e-5, atol=1e-6)


def test_fill_ties_are_order_independent_with_duplicate_tokens() -> None:
    fde = FDE(FDEConfig(8, 4, 4, seed=2), 16)
    rng = np.random.default_rng(5)
    base = unit(rng, 3, 16)
    tokens = np.vstack([base, base[::-1]])  # exact duplicates: equal distance and margin
    for _ in range(5):
        perm = rng.permutation(len(tokens))
        np.testing.assert_allclose(fde.encode_document(tokens[perm]), fde.encode_document(tokens), atol=1e-6)


def test_output_shape_dtype_determinism_and_seed() -> None:
    config = FDEConfig(6, 3, 4, seed=9)
    a, b = FDE(config, 16), FDE(config, 16)
    assert a.output_dim == 6 * 2**3 * 4 and a.dim == 16 and a.config == config
    assert FDE(FDEConfig(6, 3, 4, final_dim=100), 16).output_dim == 100
    rng = np.random.default_rng(1)
    sets = [unit(rng, int(n), 16) for n in rng.integers(1, 50, size=25)]
    tokens, offsets = np.vstack(sets), offsets_of(sets)
    for encode in ("encode_documents", "encode_queries"):
        out = getattr(a, encode)(tokens, offsets)
        assert out.dtype == np.float32 and out.shape == (25, a.output_dim)
        assert np.isfinite(out).all()
        np.testing.assert_array_equal(out, getattr(b, encode)(tokens, offsets))
        other_seed = getattr(FDE(FDEConfig(6, 3, 4, seed=10), 16), encode)(tokens, offsets)
        assert not np.array_equal(out, other_seed)


@pytest.mark.parametrize(
    ("config", "dim"),
    [
        (FDEConfig(20, 4, 8), 128),  # the paper's smallest setting
        (FDEConfig(20, 5, 16, final_dim=2048, seed=3), 128),
        (FDEConfig(4, 3, 32), 32),  # identity projection
        (FDEConfig(2, 0, 8, fill_empty=False), 64),
    ],
)
def test_batch_equals_one_by_one_exactly(
    config: FDEConfig, dim: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bit-identical whatever the batching: across chunk boundaries, a set's position in its chunk's
    product (OpenBLAS's Haswell sgemm rounded a row by its position: why the FDE has its own product)
    and thread counts (chunks on pool threads vs all on the caller; BLAS's thread setting, which the
    FDE no longer uses, varied too)."""
    chunk = 2048  # several chunks in a small test
    monkeypatch.setattr(fde_module, "CHUNK_TOKENS", chunk)
    fde = FDE(config, dim, threads=2)
    rng = np.random.default_rng(11)
    sizes = [1, 2, 1, 300, 5, *rng.integers(1, 120, size=80).tolist(), chunk + 7, 1]
    sets = [unit(rng, int(n), dim) for n in sizes]
    tokens, offsets = np.vstack(sets), offsets_of(sets)
    assert len(tokens) > 3 * chunk  # several chunks, one with a lone set larger than a chunk
    blas = ThreadpoolController()
    for batch_encode, one_encode in (
        (fde.encode_documents, fde.encode_document),
        (fde.encode_queries, fde.encode_query),
    ):
        with blas.limit(limits=1, user_api="blas"):  # chunks on pool threads
            batch = batch_encode(tokens, offsets)
        np.testing.assert_array_equal(batch, np.stack([one_encode(s) for s in sets]))
        np.testing.assert_array_equal(
            batch[40:45], batch_encode(np.vstack(sets[40:45]), offsets_of(sets[40:45]))
        )
        with blas.limit(limits=2, user_api="blas"):  # chunks on the caller, each sgemm on 2 threads
            np.testing.assert_array_equal(batch_encode(tokens, offsets), batch)
        fde.threads = 1
        try:
            np.testing.assert_array_equal(batch_encode(tokens, offsets), batch)
        finally:
            fde.threads = 2


def fma_chain(tokens: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The arithmetic the FDE promises for every product element: acc = fma(x[k], w[k], acc) over k in
    order from acc = 0, each step the exact x·w + acc rounded once to float32 (nearest, ties to even),
    in exact rationals."""

    def to_float32(exact: Fraction) -> np.float32:
        near = np.float32(float(exact))  # within an ulp (float64 then float32 may round twice)
        candidates = [np.nextafter(near, np.float32(-np.inf)), near, np.nextafter(near, np.float32(np.inf))]
        return min(candidates, key=lambda c: (abs(Fraction(float(c)) - exact), int(c.view(np.uint32)) & 1))

    out = np.empty((len(tokens), matrix.shape[1]), np.float32)
    for i, x in enumerate(tokens):
        for c in range(matrix.shape[1]):
            acc = np.float32(0.0)
            for k in range(len(x)):
                acc = to_float32(Fraction(float(x[k])) * Fraction(float(matrix[k, c])) + Fraction(float(acc)))
            out[i, c] = acc
    return out


@pytest.mark.parametrize("cols", [1, 7, 8, 9, 23, 24, 25, 49])
def test_products_are_the_in_order_fma_chain_wherever_the_row_sits(cols: int) -> None:
    """The product behind every FDE: each element exactly the in-order fma chain, for every tile
    shape (1–4 rows × 1–3 vectors, by the row count and the width of the last panel) and every row
    position, so nothing about a token's row depends on the other rows of the call or the machine."""
    rng = np.random.default_rng(cols)
    dim = 16
    matrix = rng.standard_normal((dim, cols)).astype(np.float32)
    panels, last_vectors = fde_module._pack_panels(matrix)
    width = (len(panels) - 1) * fde_module.PANEL_COLUMNS + last_vectors * fde_module._LANES
    tokens = rng.standard_normal((5, dim)).astype(np.float32)
    expected = fma_chain(tokens, matrix)
    for n_rows in (1, 5):
        for offset in range(13):
            x = rng.standard_normal((offset + n_rows + offset % 4, dim)).astype(np.float32)
            x[offset : offset + n_rows] = tokens[:n_rows]
            out = np.empty((len(x), width), np.float32)
            fde_module._matmul_fma(x, panels, last_vectors, out)
            np.testing.assert_array_equal(out[offset : offset + n_rows, :cols], expected[:n_rows])
            assert (out[:, cols:] == 0).all()


def test_empty_buckets_without_fill_are_zero_not_nan() -> None:
    fde = FDE(FDEConfig(2, 5, 4, fill_empty=False), 8)
    out = fde.encode_document(unit(np.random.default_rng(0), 2, 8))
    assert np.isfinite(out).all()
    assert (out == 0).sum() >= (32 - 2) * 2 * 4


def test_filled_document_has_no_zero_block() -> None:
    fde = FDE(FDEConfig(3, 6, 4, fill_empty=True), 8)
    blocks = fde.encode_document(unit(np.random.default_rng(0), 2, 8)).reshape(-1, 4)
    assert np.isfinite(blocks).all() and (np.abs(blocks).sum(axis=1) > 0).all()


def test_save_and_load_reproduce_output_without_regenerating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fde = FDE(FDEConfig(4, 3, 4, final_dim=32, seed=5), 16)
    tokens = unit(np.random.default_rng(2), 20, 16)
    fde.save(tmp_path / "fde.npz")

    def no_generation(*args, **kwargs):
        raise AssertionError("load must not regenerate matrices")

    monkeypatch.setattr(fde_module, "_generate", no_generation)
    loaded = FDE.load(tmp_path / "fde.npz")
    assert loaded.config == fde.config and loaded.dim == 16
    np.testing.assert_array_equal(loaded.encode_document(tokens), fde.encode_document(tokens))
    np.testing.assert_array_equal(loaded.encode_query(tokens), fde.encode_query(tokens))


def test_load_uses_the_stored_matrices_not_the_seed(tmp_path: Path) -> None:
    """A file whose matrices differ from what the seed would give (as after an RNG change in a later
    numpy) loads those matrices."""
    fde = FDE(FDEConfig(2, 2, 4, seed=1), 8)
    fde.save(tmp_path / "fde.npz")
    with np.load(tmp_path / "fde.npz") as data:
        arrays = {name: data[name] for name in data.files}
    arrays["hyperplanes"] = -arrays["hyperplanes"]
    np.savez(tmp_path / "changed.npz", **arrays)
    loaded = FDE.load(tmp_path / "changed.npz")
    np.testing.assert_array_equal(loaded._hyperplanes, -fde._hyperplanes)
    arrays["projection"] = arrays["projection"][:, :3]
    np.savez(tmp_path / "corrupt.npz", **arrays)
    with pytest.raises(ValueError, match="projection"):
        FDE.load(tmp_path / "corrupt.npz")


def test_config_round_trips_through_json() -> None:
    config = FDEConfig(7, 2, 3, fill_empty=False, final_dim=50, seed=4)
    assert FDEConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"repetitions": 0}, "repetitions"),
        ({"repetitions": 2.0}, "repetitions"),
        ({"k_sim": 11}, "k_sim"),
        ({"k_sim": -1}, "k_sim"),
        ({"d_proj": 0}, "d_proj"),
        ({"final_dim": 0}, "final_dim"),
        ({"seed": -3}, "seed"),
        ({"fill_empty": "yes"}, "fill_empty"),
        ({"repetitions": 1024, "k_sim": 10, "d_proj": 64}, "d_proj"),  # 2^26 dims
    ],
)
def test_bad_parameters_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        FDEConfig(**{"repetitions": 2, "k_sim": 2, "d_proj": 4, **kwargs})
    assert caught.value.field == field


def test_bad_config_dicts_name_the_field() -> None:
    with pytest.raises(InvalidArgument) as caught:
        FDEConfig.from_dict({"repetitions": 2, "k_sim": 2, "d_proj": 4, "bits": 3})
    assert caught.value.field == "bits"
    with pytest.raises(InvalidArgument) as caught:
        FDEConfig.from_dict({"repetitions": 2, "k_sim": 2})
    assert caught.value.field == "d_proj"


def test_bad_dims_are_rejected() -> None:
    with pytest.raises(InvalidArgument) as caught:
        FDE(FDEConfig(2, 2, 16), 8)  # projection up is rejected, not silently allowed
    assert caught.value.field == "d_proj"
    with pytest.raises(InvalidArgument) as caught:
        FDE(FDEConfig(2, 2, 4), 0)
    assert caught.value.field == "dim"
    with pytest.raises(InvalidArgument) as caught:
        FDE(FDEConfig(2, 2, 4), 8, threads=0)
    assert caught.value.field == "threads"


def test_pool_threads_take_chunks_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """threads=1 (the default, safe under a multi-threaded BLAS) never touches the pool; threads=2
    asks for one helper; the result is the same either way."""
    monkeypatch.setattr(fde_module, "CHUNK_TOKENS", 256)
    tokens = unit(np.random.default_rng(5), 4000, 32)
    offsets = np.arange(0, 4001, 40, dtype=np.int64)
    submitted: list[object] = []
    pool = fde_module._pool()

    class SpyingPool:
        def submit(self, work: Any) -> Any:
            submitted.append(work)
            return pool.submit(work)

    monkeypatch.setattr(fde_module, "_pool", SpyingPool)
    assert FDE(FDEConfig(4, 3, 8), 32).threads == 1
    results = {}
    for threads in (1, 2):
        submitted.clear()
        fde = FDE(FDEConfig(4, 3, 8), 32, threads=threads)
        results[threads] = fde.encode_documents(tokens, offsets)
        assert len(submitted) == threads - 1
    np.testing.assert_array_equal(results[1], results[2])


@pytest.mark.parametrize(
    ("tokens", "offsets", "match"),
    [
        (np.ones((3, 9), np.float32), [0, 3], "shape"),
        (np.ones(8, np.float32), [0, 1], "shape"),
        (np.ones((3, 8), np.int32), [0, 3], "floating"),
        (np.ones((3, 8), np.float32), [0, 3, 3], "set 1 is empty"),
        (np.ones((3, 8), np.float32), [0, 2, 1, 3], "set 1 has negative size"),
        (np.ones((3, 8), np.float32), [0, 2], "token count 3"),
        (np.ones((3, 8), np.float32), [1, 3], "from 0"),
        (np.ones((3, 8), np.float32), [0], "m \\+ 1"),
        (np.ones((3, 8), np.float32), [0.0, 3.0], "integer"),
    ],
)
def test_bad_inputs_name_the_problem(tokens: np.ndarray, offsets: list, match: str) -> None:
    fde = FDE(FDEConfig(2, 2, 4), 8)
    for encode in (fde.encode_documents, fde.encode_queries):
        with pytest.raises(InvalidArgument, match=match):
            encode(tokens, np.array(offsets))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_tokens_are_rejected(bad: float) -> None:
    fde = FDE(FDEConfig(2, 2, 4), 8)
    tokens = np.ones((3, 8), np.float32)
    tokens[1, 5] = bad
    with pytest.raises(InvalidArgument, match="token 1") as caught:
        fde.encode_document(tokens)
    assert caught.value.field == "tokens"


def test_non_finite_token_in_a_late_chunk_is_named_and_extremes_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check runs per chunk on the workers: a bad token deep in a threaded batch is still found
    and named; huge finite values, subnormals and -0.0 are not flagged."""
    monkeypatch.setattr(fde_module, "CHUNK_TOKENS", 256)
    fde = FDE(FDEConfig(2, 2, 4), 8, threads=2)
    tokens = unit(np.random.default_rng(1), 5000, 8)
    offsets = np.arange(0, 5001, 50, dtype=np.int64)
    tokens[17, :3] = [1e30, -1e30, -0.0]
    tokens[18, :2] = [np.finfo(np.float32).smallest_subnormal, 1e-45]
    fde.encode_documents(tokens, offsets)  # no error
    tokens[4321, 7] = np.inf
    with (
        ThreadpoolController().limit(limits=1, user_api="blas"),  # chunks on the pool threads
        pytest.raises(InvalidArgument, match="token 4321 has a NaN or infinite value"),
    ):
        fde.encode_documents(tokens, offsets)


def planted_recall(reps: int, seed: int = 0) -> float:
    """Share of queries whose exact-Chamfer best document is in the top 10 of 300 by FDE score."""
    rng = np.random.default_rng(seed)
    dim, n_docs, n_queries = 32, 300, 40
    docs = [unit(rng, int(rng.integers(20, 60)), dim) for _ in range(n_docs)]
    targets = rng.integers(0, n_docs, size=n_queries)
    queries = []
    for t in targets:  # a query: noisy copies of some of its target's tokens
        picked = docs[t][rng.choice(len(docs[t]), size=8, replace=False)]
        noisy = picked + 0.06 * rng.standard_normal(picked.shape).astype(np.float32)
        queries.append(noisy / np.linalg.norm(noisy, axis=1, keepdims=True))
    fde = FDE(FDEConfig(reps, 3, 8, seed=seed), dim)
    doc_fdes = fde.encode_documents(np.vstack(docs), offsets_of(docs))
    query_fdes = fde.encode_queries(np.vstack(queries), offsets_of(queries))
    hits = 0
    for q, q_fde in zip(queries, query_fdes, strict=True):
        best = max(range(n_docs), key=lambda i: chamfer(q, docs[i]))
        top = np.argsort(-(doc_fdes @ q_fde))[:10]
        hits += int(best in top)
    return hits / n_queries


def test_planted_neighbours_are_found_and_recall_does_not_fall_with_repetitions() -> None:
    recalls = [planted_recall(reps) for reps in (2, 5, 20)]
    assert recalls[-1] >= 0.95, recalls
    assert recalls == sorted(recalls), recalls


def test_out_receives_the_result_and_is_checked() -> None:
    fde = FDE(FDEConfig(3, 2, 4), 8, threads=2)
    tokens = unit(np.random.default_rng(2), 50, 8)
    offsets = np.array([0, 20, 21, 50], dtype=np.int64)
    out = np.full((3, fde.output_dim), np.nan, np.float32)
    assert fde.encode_documents(tokens, offsets, out=out) is out
    np.testing.assert_array_equal(out, fde.encode_documents(tokens, offsets))
    assert fde.encode_queries(tokens, offsets, out=out) is out
    np.testing.assert_array_equal(out, fde.encode_queries(tokens, offsets))
    for bad in (
        np.empty((2, fde.output_dim), np.float32),
        np.empty((3, fde.output_dim), np.float64),
        np.empty((fde.output_dim, 3), np.float32).T,
        [[0.0] * fde.output_dim] * 3,
    ):
        with pytest.raises(InvalidArgument, match="C-contiguous float32 array") as caught:
            fde.encode_documents(tokens, offsets, out=bad)
        assert caught.value.field == "out"


def test_encode_finishes_on_the_caller_while_the_pool_is_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller takes chunks too, and a helper still queued when the chunks are gone is cancelled:
    a batch never waits for other calls' work occupying the pool."""
    import threading

    monkeypatch.setattr(fde_module, "CHUNK_TOKENS", 256)
    pool = fde_module._pool()
    release = threading.Event()
    blockers = [pool.submit(release.wait, 30) for _ in range(fde_module.available_cpus())]  # all of them
    try:
        fde = FDE(FDEConfig(4, 3, 8), 32, threads=2)
        tokens = unit(np.random.default_rng(6), 3000, 32)
        offsets = np.arange(0, 3001, 30, dtype=np.int64)
        done = threading.Event()
        results = []
        caller = threading.Thread(
            target=lambda: (results.append(fde.encode_documents(tokens, offsets)), done.set())
        )
        caller.start()
        assert done.wait(20), "the encode waited for the busy pool"
        fde.threads = 1
        np.testing.assert_array_equal(results[0], fde.encode_documents(tokens, offsets))
    finally:
        release.set()
        for blocker in blockers:
            blocker.result()
