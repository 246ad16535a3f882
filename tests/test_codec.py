"""Token codec and the cascade's cheap kernels: against slow NumPy references and their invariants."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mvr.server import candidates, codec


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(rng: np.random.Generator, n: int, dim: int, n_topics: int = 40) -> np.ndarray:
    centres = unit(rng, n_topics, dim)
    x = centres[rng.integers(0, n_topics, n)] + 0.25 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    return clustered(np.random.default_rng(0), 6000, 32)


@pytest.mark.parametrize("polynomial", [True, False])
@pytest.mark.parametrize("scaled", [True, False])
@pytest.mark.parametrize("bits", codec.SUPPORTED_BITS)
def test_encode_decode_roundtrip_matches_reference(
    sample: np.ndarray, bits: int, scaled: bool, polynomial: bool
) -> None:
    """Below 8 bits both level shapes: the cubic (planar codes, arithmetic decode) and the Lloyd–Max
    levels themselves (interleaved codes, table decode, what older codecs hold)."""
    if bits == 8 and not polynomial:
        pytest.skip("8 bits have evenly spaced levels, no polynomial")
    trained = codec.train(sample, 64, bits, iterations=4, scaled=scaled, polynomial=polynomial)
    assert trained.planar == (polynomial and bits < 8)
    tokens = sample[:500]
    ids, payload = trained.encode(tokens)
    assert ids.dtype == np.uint16 and payload.shape == (500, 2 * scaled + 32 * bits // 8)
    assert trained.token_bytes == 2 + payload.shape[1]
    # reference: nearest centroid, then each residual dimension's bucket value (the residual divided
    # by its float16 norm first when scaled, multiplied back after), renormalised
    expected_ids = np.argmax(tokens @ trained.centroids.T, axis=1)
    np.testing.assert_array_equal(ids, expected_ids)
    residual = tokens - trained.centroids[expected_ids]
    norms = np.ones(len(tokens), np.float32)
    if scaled:
        norms = np.linalg.norm(residual, axis=1).astype(np.float16)
        np.testing.assert_array_equal(payload[:, :2].copy().view("<f2")[:, 0], norms)
        norms = norms.astype(np.float32)
        residual = residual / norms[:, None]
    buckets = np.stack(
        [np.searchsorted(trained.cutoffs[j], residual[:, j], side="right") for j in range(32)], axis=1
    )
    if bits < 8:  # each dimension's code where the layout puts it
        codes = payload[:, 2 * scaled :]
        n_bytes = 32 * bits // 8
        for j in range(32):
            # planar: dimensions sharing a byte lie a byte-run apart; interleaved: neighbours share one
            planar = (j % n_bytes, j // n_bytes * bits)
            byte, shift = planar if trained.planar else (j * bits // 8, j * bits % 8)
            np.testing.assert_array_equal((codes[:, byte] >> shift) & ((1 << bits) - 1), buckets[:, j])
    rebuilt = trained.centroids[expected_ids] + norms[:, None] * trained.values[np.arange(32), buckets]
    rebuilt /= np.linalg.norm(rebuilt, axis=1, keepdims=True)
    # 8 bits decode by arithmetic (lo + code·step, fused) instead of the table: float32 rounding apart
    np.testing.assert_allclose(trained.decode(ids, payload), rebuilt, atol=5e-5 if bits == 8 else 1e-5)


@pytest.mark.parametrize("bits", [2, 4])
def test_scaled_residuals_reconstruct_better(sample: np.ndarray, bits: int) -> None:
    """Residual norms vary from token to token; quantising the direction only spends the levels better."""
    errors = {}
    for scaled in (False, True):
        trained = codec.train(sample, 64, bits, iterations=4, scaled=scaled)
        decoded = trained.decode(*trained.encode(sample[:2000]))
        errors[scaled] = float(np.mean(np.linalg.norm(decoded - sample[:2000], axis=1)))
    assert errors[True] < errors[False], errors


def bucket_squared_error(residuals: np.ndarray, cutoffs: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per dimension, the mean squared error of coding ``residuals`` as the encoder does: each value
    to the bucket of the number of cutoffs at or below it, decoded as that bucket's value."""
    columns = range(residuals.shape[1])
    buckets = np.stack([np.searchsorted(cutoffs[j], residuals[:, j], side="right") for j in columns], 1)
    return np.mean((values[np.arange(residuals.shape[1]), buckets] - residuals) ** 2, axis=0)


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_lloyd_max_buckets_lower_the_error_of_quantile_buckets(bits: int) -> None:
    """On peaked, long-tailed residuals (Laplace, as residuals of clustered tokens are), the Lloyd–Max
    steps lower the squared quantisation error below that of equal-probability buckets, and what they
    return is a fixed point of the steps: ascending cutoffs, each the midpoint of its two values, each
    value the mean of the sample in its bucket."""
    residuals = np.random.default_rng(1).laplace(0.0, 0.05, (20_000, 3)).astype(np.float32)

    def squared_error(cutoffs: np.ndarray, values: np.ndarray) -> float:
        return float(np.mean(bucket_squared_error(residuals, cutoffs, values)))

    quantile = codec._lloyd_max_buckets(residuals, bits, rounds=0)
    lloyd = codec._lloyd_max_buckets(residuals, bits, rounds=codec.LLOYD_ROUNDS)
    assert lloyd[0].shape == (3, (1 << bits) - 1) and lloyd[1].shape == (3, 1 << bits)
    assert squared_error(*lloyd) <= squared_error(*quantile)
    if bits > 1:  # 2 levels of a symmetric sample start at the fixed point already
        assert squared_error(*lloyd) < 0.95 * squared_error(*quantile)
    cutoffs, values = lloyd
    assert np.all(np.diff(cutoffs, axis=1) > 0) and np.all(np.diff(values, axis=1) > 0)
    np.testing.assert_allclose(cutoffs, (values[:, :-1] + values[:, 1:]) / 2, atol=1e-4)
    for j in range(3):
        buckets = np.searchsorted(cutoffs[j], residuals[:, j], side="right")
        means = [residuals[buckets == b, j].mean() for b in range(1 << bits)]
        np.testing.assert_allclose(values[j], means, atol=1e-4)


def test_uniform_buckets_choose_the_range_of_least_squared_error() -> None:
    """8 bits: per dimension, the clipped range with the least squared error among those offered: no
    single offered fraction does better on any dimension, and the levels are evenly spaced."""
    rng = np.random.default_rng(2)
    residuals = np.concatenate(
        [rng.laplace(0.0, 0.05, (20_000, 2)), rng.normal(0.0, 0.05, (20_000, 2))], axis=1
    ).astype(np.float32)

    def squared_error(cutoffs: np.ndarray, values: np.ndarray) -> np.ndarray:
        return bucket_squared_error(residuals, cutoffs, values)

    chosen = squared_error(*codec._uniform_buckets(residuals, codec.UNIFORM_CLIPS))
    for clip in codec.UNIFORM_CLIPS:
        assert np.all(chosen <= squared_error(*codec._uniform_buckets(residuals, (clip,))) * (1 + 1e-4))
    _, values = codec._uniform_buckets(residuals, codec.UNIFORM_CLIPS)
    steps = np.diff(values, axis=1)
    np.testing.assert_allclose(steps, np.broadcast_to(steps[:, :1], steps.shape), rtol=1e-3)
    # the fixed 0.05% clip the codec used before loses to the choice on these long tails
    assert np.all(chosen < squared_error(*codec._uniform_buckets(residuals, (0.0005,))))


def test_uniform_error_is_the_error_of_the_levels_the_codec_stores() -> None:
    """The squared error that picks the 8-bit range is the one the stored levels give, column by
    column (codes by the cutoffs, values from the table), a constant column included."""
    rng = np.random.default_rng(3)
    residuals = np.concatenate(
        [rng.laplace(0.0, 0.05, (5_000, 3)), np.full((5_000, 1), 0.125)], axis=1
    ).astype(np.float32)
    lo = np.quantile(residuals, 1e-3, axis=0)
    hi = np.quantile(residuals, 1 - 1e-3, axis=0)
    assert lo[3] == hi[3]  # the constant column
    stored = bucket_squared_error(residuals, *codec._uniform_levels(lo, hi))
    np.testing.assert_allclose(codec._uniform_error(residuals, lo, hi), stored, rtol=1e-4, atol=1e-12)


def test_held_out_tokens_measure_the_distortion_and_stay_inside_the_buckets(sample: np.ndarray) -> None:
    """Held-out tokens do not move the centroids but give the distortion, and the residual buckets
    cover them: a held-out token far out on one dimension decodes as closely as the sample's do."""
    rng = np.random.default_rng(5)
    held_out = clustered(rng, 600, 32)
    held_out[:60, 0] += 3.0  # a tenth far beyond any residual of the sample on dimension 0
    held_out /= np.linalg.norm(held_out, axis=1, keepdims=True)
    alone = codec.train(sample, 16, 8, iterations=2)
    trained = codec.train(sample, 16, 8, iterations=2, held_out=held_out)
    np.testing.assert_array_equal(trained.centroids, alone.centroids)
    ids = trained.assign(held_out)
    expected = np.mean(np.square(codec.residual_norms(held_out, trained.centroids, ids), dtype=np.float64))
    assert trained.distortion == pytest.approx(expected, rel=1e-9)

    def cosines(fitted: codec.Codec) -> np.ndarray:
        return np.einsum("ij,ij->i", fitted.decode(*fitted.encode(held_out)), held_out)

    assert cosines(trained).min() > 0.999 > cosines(alone).min()  # alone: clipped on dimension 0


def test_lloyd_max_buckets_survive_ties() -> None:
    """A column with few distinct values (ties at every quantile) leaves some buckets empty: they take
    the midpoint of their bounds, and every value stays finite."""
    residuals = np.repeat(np.array([[-0.1], [0.0], [0.0], [0.2]], np.float32), 50, axis=0)
    cutoffs, values = codec._lloyd_max_buckets(residuals, 4, rounds=codec.LLOYD_ROUNDS)
    assert np.all(np.isfinite(values)) and np.all(np.isfinite(cutoffs))
    buckets = np.searchsorted(cutoffs[0], residuals[:, 0], side="right")
    np.testing.assert_allclose(values[0, buckets], residuals[:, 0], atol=1e-6)  # 3 values, 16 levels


@settings(max_examples=200, deadline=None)
@given(value=st.floats(0.0, 65504.0, width=16))
def test_half_to_float_reads_every_non_negative_float16(value: float) -> None:
    low, high = np.array([value], "<f2").view(np.uint8)
    assert codec._half_to_float(low, high) == np.float32(value)


def test_codec_round_trips_bytes_and_reads_unscaled_codecs(sample: np.ndarray) -> None:
    trained = codec.train(sample, 16, 4, iterations=2)
    assert trained.scaled  # the default since the norm is kept
    again = codec.Codec.from_bytes(trained.to_bytes())
    assert again.scaled and again.bits == 4
    np.testing.assert_array_equal(again.centroids, trained.centroids)
    # a codec saved before ``scaled`` existed has no such array: it decodes as unscaled
    old = io.BytesIO()
    arrays = {"centroids": trained.centroids, "cutoffs": trained.cutoffs, "values": trained.values}
    np.savez(old, **arrays, bits=np.array(4))
    assert not codec.Codec.from_bytes(old.getvalue()).scaled
    assert codec.Codec.from_bytes(old.getvalue()).distortion is None  # nor a distortion: no drift measure


def test_distortion_is_the_training_samples_mean_squared_residual_norm(sample: np.ndarray) -> None:
    """What drift is measured against: the training sample's squared distance to its nearest centroid
    (norms rounded as stored), kept across persistence; code blocks give the same figure back."""
    trained = codec.train(sample, 16, 8, iterations=2)
    ids = trained.assign(sample)
    expected = np.mean(np.square(codec.residual_norms(sample, trained.centroids, ids), dtype=np.float64))
    assert trained.distortion == pytest.approx(expected, rel=1e-9) and 0 < trained.distortion < 2
    assert codec.Codec.from_bytes(trained.to_bytes()).distortion == trained.distortion
    offsets = np.array([0, 100, 250, len(sample)])
    squared, n_tokens = codec.squared_norms_of_blocks(trained, codec.encode_blocks(trained, sample, offsets))
    assert n_tokens == len(sample)
    assert squared / n_tokens == pytest.approx(trained.distortion, rel=1e-6)
    unscaled = codec.train(sample, 16, 8, iterations=2, scaled=False)
    with pytest.raises(ValueError, match="scaled"):
        codec.squared_norms_of_blocks(unscaled, [codec.encode_block(unscaled, sample[:5])])


def test_more_bits_reconstruct_better(sample: np.ndarray) -> None:
    errors = []
    for bits in codec.SUPPORTED_BITS:
        trained = codec.train(sample, 64, bits, iterations=4)
        decoded = trained.decode(*trained.encode(sample[:1000]))
        errors.append(float(np.mean(np.linalg.norm(decoded - sample[:1000], axis=1))))
    assert errors == sorted(errors, reverse=True), errors
    assert errors[2] < 0.5 * errors[0]  # 4 bits vs 1 bit


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("polynomial", [True, False])
def test_blocks_decode_in_place_and_distinct_centroids(
    sample: np.ndarray, polynomial: bool, bits: int
) -> None:
    """Every kernel (8-bit arithmetic, planar cubic, interleaved table) decodes any subset of blocks, in
    any order, into any target rows."""
    if bits == 8 and not polynomial:
        pytest.skip("8 bits have evenly spaced levels, no polynomial")
    trained = codec.train(sample, 64, bits, iterations=3, polynomial=polynomial)
    docs = [sample[a:b] for a, b in [(0, 7), (7, 8), (8, 40), (40, 100)]]
    data = b"".join(codec.encode_block(trained, d) for d in docs)
    sizes = [codec.block_size(len(d), trained.payload_bytes) for d in docs]
    offsets = np.cumsum([0, *sizes[:-1]]).astype(np.int64)
    counts = np.array([len(d) for d in docs], np.int64)
    buffer = np.frombuffer(data, np.uint8)
    order = np.array([2, 0, 3], np.int64)  # any subset, any order, any target rows
    rows = np.array([0, 32, 39], np.int64)
    out = np.full((99, 32), np.nan, np.float32)
    trained.decode_into(buffer, offsets[order], counts[order], rows, out)
    if not trained.planar and bits < 8:  # the table kernel called directly, as decode_into calls it
        table_out = np.full_like(out, np.nan)
        codec.decode_blocks(
            buffer,
            offsets[order],
            counts[order],
            rows,
            trained.centroids,
            True,
            trained.decode_table(),
            table_out,
        )
        np.testing.assert_array_equal(table_out, out)
    for doc, row in zip(order.tolist(), rows.tolist(), strict=True):
        expected = trained.decode(*trained.encode(docs[doc]))
        np.testing.assert_allclose(out[row : row + len(docs[doc])], expected, atol=1e-6)
    ids, id_offsets = codec.distinct_centroids(buffer, offsets, counts, trained.n_centroids)
    for i, doc in enumerate(docs):
        np.testing.assert_array_equal(ids[id_offsets[i] : id_offsets[i + 1]], np.unique(trained.assign(doc)))


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_polynomial_levels_fit_the_lloyd_max_levels(sample: np.ndarray, bits: int) -> None:
    """The cubic reproduces 1- and 2-bit levels exactly (2 and 4 points), and costs 4-bit codes little
    squared error; the levels it stores are the polynomial's, ascending, and decode as such."""
    lloyd = codec.train(sample, 64, bits, iterations=4, polynomial=False)
    fitted = codec.train(sample, 64, bits, iterations=4)
    np.testing.assert_array_equal(fitted.centroids, lloyd.centroids)
    assert fitted.level_poly.shape == (4, 32) and fitted.level_poly.dtype == np.float32
    assert np.all(np.diff(fitted.values, axis=1) > 0)
    np.testing.assert_allclose(fitted.cutoffs, (fitted.values[:, :-1] + fitted.values[:, 1:]) / 2, rtol=1e-6)
    u = np.arange(1 << bits) - ((1 << bits) - 1) / 2
    a, b, c, d = fitted.level_poly.astype(np.float64)
    np.testing.assert_allclose(
        fitted.values, a[:, None] + np.outer(b, u) + np.outer(c, u**2) + np.outer(d, u**3), atol=1e-6
    )
    if bits < 4:
        np.testing.assert_allclose(fitted.values, lloyd.values, atol=1e-5)
    tokens = sample[:2000]
    errors = [
        float(np.mean(np.sum(np.square(t.decode(*t.encode(tokens)) - tokens), axis=1)))
        for t in (lloyd, fitted)
    ]
    assert errors[1] <= 1.05 * errors[0], errors


def test_polynomial_levels_of_degenerate_columns_stay_ordered() -> None:
    """A column whose levels the cubic cannot follow ascending falls to the line through them; a
    constant column to its value: the cutoffs stay ordered and every level finite."""
    rng = np.random.default_rng(4)
    smooth = np.sort(rng.standard_normal(16))
    steps = np.array([-1.0] * 8 + [1.0] * 8) + np.linspace(0, 1e-3, 16)  # a jump the cubic overshoots
    values = np.stack([smooth, steps, np.full(16, 0.25)]).astype(np.float32)
    coefficients, levels = codec._polynomial_levels(values)
    assert np.all(np.isfinite(levels)) and np.all(np.diff(levels[:2], axis=1) > 0)
    assert not np.any(coefficients[2:, 1]) and coefficients[1, 1] > 0  # the line, for the jump
    np.testing.assert_array_equal(levels[2], np.full(16, 0.25, np.float32))  # the constant


def test_planar_codecs_persist_and_older_codecs_decode_as_written(sample: np.ndarray) -> None:
    """The cubic persists with the codec; a codec saved before it existed (no ``level_poly``) reads
    back interleaved and decodes the codes it wrote unchanged."""
    planar = codec.train(sample, 16, 4, iterations=2)
    again = codec.Codec.from_bytes(planar.to_bytes())
    assert again.planar
    np.testing.assert_array_equal(again.level_poly, planar.level_poly)
    tokens = sample[:100]
    np.testing.assert_array_equal(again.decode(*planar.encode(tokens)), planar.decode(*planar.encode(tokens)))
    older = codec.train(sample, 16, 4, iterations=2, polynomial=False)
    with np.load(io.BytesIO(older.to_bytes())) as arrays:
        assert "level_poly" not in arrays.files
    loaded = codec.Codec.from_bytes(older.to_bytes())
    assert not loaded.planar
    written = older.encode(tokens)
    np.testing.assert_array_equal(loaded.decode(*written), older.decode(*written))
    with pytest.raises(ValueError, match="planar"):
        planar.decode_table()


def test_codec_persists(sample: np.ndarray, tmp_path) -> None:
    trained = codec.train(sample, 32, 2, iterations=2)
    trained.save(tmp_path / "codec.npz")
    loaded = codec.Codec.load(tmp_path / "codec.npz")
    tokens = sample[:50]
    np.testing.assert_array_equal(
        loaded.decode(*loaded.encode(tokens)), trained.decode(*trained.encode(tokens))
    )


def test_train_rejects_bad_arguments(sample: np.ndarray) -> None:
    with pytest.raises(ValueError, match="bits"):
        codec.train(sample, 8, 3)
    with pytest.raises(ValueError, match="n_centroids"):
        codec.train(sample[:10], 11, 2)
    with pytest.raises(ValueError, match="lloyd_rounds"):
        codec.train(sample, 8, 2, lloyd_rounds=-1)
    for clips in [(), (0.5,), (-0.1, 0.0)]:
        with pytest.raises(ValueError, match="uniform_clips"):
            codec.train(sample, 8, 8, uniform_clips=clips)


def test_default_centroids_grow_with_the_collection() -> None:
    assert codec.default_centroids(1000) == 256
    assert codec.default_centroids(40_000) == 1024
    assert codec.default_centroids(1 << 17) == 4096  # the default training point
    assert codec.default_centroids(1_150_000) == 4096  # 10k documents of 115 tokens
    assert codec.default_centroids(2_100_000) == 8192  # 4·√n from ~18k documents on
    assert codec.default_centroids(10**9) == codec.MAX_DEFAULT_CENTROIDS[8] == 8192
    # 4-bit codes: the same counts up to 8,192, then on to 16,384 once 4·√n rounds to it (100k documents)
    assert codec.default_centroids(1_150_000, 4) == 4096
    assert codec.default_centroids(2_100_000, 4) == 8192
    assert codec.default_centroids(8_388_608, 4) == 16384  # the retraining at 4^6 × 2^11 tokens
    assert codec.default_centroids(8_388_608, 8) == 8192
    assert codec.default_centroids(10**9, 4) == codec.MAX_DEFAULT_CENTROIDS[4] == 16384
    assert codec.default_centroids(10**9, 2) == 8192
    sizes = [0, 1, 100, 10**4, 10**5, 10**6, 10**7, 10**8]
    for bits in codec.SUPPORTED_BITS:
        counts = [codec.default_centroids(n, bits) for n in sizes]
        assert counts == sorted(counts) and all(c & (c - 1) == 0 for c in counts)  # powers of two, growing


# ------------------------------------------------------------------------------------ candidates


def ragged_sets(draw_sizes: list[int], n_centroids: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sets = [np.unique(rng.integers(0, n_centroids, size)) for size in draw_sizes]
    offsets = np.cumsum([0, *(len(s) for s in sets)]).astype(np.int64)
    return np.concatenate(sets).astype(np.uint16), offsets


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=40),
    n_centroids=st.integers(2, 24),
    n_query=st.integers(1, 6),
    n_probe=st.integers(1, 5),
    keep=st.integers(1, 50),
    seed=st.integers(0, 2**16),
)
def test_probe_lists_equals_reference(sizes, n_centroids, n_query, n_probe, keep, seed) -> None:
    cids, cid_offsets = ragged_sets(sizes, n_centroids, seed)
    n_docs = len(sizes)
    rng = np.random.default_rng(seed + 1)
    similarities = rng.standard_normal((n_query, n_centroids)).astype(np.float32)
    alive = (rng.random(n_docs) < 0.8).astype(np.uint8)
    list_offsets, list_slots = candidates.build_lists(cids, cid_offsets, n_docs, n_centroids)
    for c in range(n_centroids):  # the lists invert the sets
        holders = [d for d in range(n_docs) if c in cids[cid_offsets[d] : cid_offsets[d + 1]]]
        assert list_slots[list_offsets[c] : list_offsets[c + 1]].tolist() == holders
    table = centroid_major(similarities)
    probes = candidates.probe_table(table, n_query, n_probe)
    slots, scores = candidates.probe_lists(table, probes, list_offsets, list_slots, n_docs, alive, keep)
    # reference: a live document found by any probe scores, per query token, its best probed centroid
    # that it holds, else the similarity of the first centroid not probed
    width = probes.shape[1] - 1
    expected = {}
    for d in range(n_docs):
        held = set(cids[cid_offsets[d] : cid_offsets[d + 1]].tolist())
        probed_held = [[c for c in probes[i, :width].tolist() if c in held] for i in range(n_query)]
        if not alive[d] or not any(probed_held):
            continue
        expected[d] = sum(
            max(similarities[i, c] for c in found) if found else similarities[i, probes[i, width]]
            for i, found in enumerate(probed_held)
        )
    assert len(slots) == min(keep, len(expected))
    ranked = sorted(expected.values(), reverse=True)
    np.testing.assert_allclose(
        sorted(scores.tolist(), reverse=True), ranked[: len(slots)], rtol=1e-5, atol=1e-5
    )
    for slot, score in zip(slots.tolist(), scores.tolist(), strict=True):
        assert score == pytest.approx(expected[slot], abs=1e-5)


@settings(max_examples=80, deadline=None)
@given(
    values=st.lists(
        st.sampled_from([-2.0, -0.5, 0.0, 0.25, 1.0, 3.5]) | st.floats(-5, 5, width=32), max_size=300
    ),
    keep=st.integers(1, 80),
)
def test_best_positions_keeps_the_largest_ties_to_lower_positions(values, keep) -> None:
    array = np.array(values, np.float32)
    got = candidates.best_positions(array, keep)
    expected = sorted(range(len(values)), key=lambda k: (-float(array[k]), k))[:keep]
    assert sorted(got.tolist()) == sorted(expected)


def centroid_major(similarities: np.ndarray) -> np.ndarray:
    """A (query tokens, K) similarity matrix laid out as CentroidTable.scores lays it out."""
    return np.ascontiguousarray(similarities.T, dtype=np.float32)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=30),
    n_query=st.integers(1, 70),
    seed=st.integers(0, 2**16),
)
def test_centroid_interaction_is_maxsim_over_byte_scores(sizes, n_query, seed) -> None:
    n_centroids, dim = 16, 8
    rng = np.random.default_rng(seed)
    centroids, query = unit(rng, n_centroids, dim), unit(rng, n_query, dim)
    cids, cid_offsets = ragged_sets(sizes, n_centroids, seed)
    scores = centroid_major(query @ centroids.T)
    table, lo, step = candidates.byte_scores(scores)
    assert table.dtype == np.uint8 and table.shape[1] % candidates.LANES == 0
    assert table.shape[1] - n_query < candidates.LANES and not table[:, n_query:].any()
    assert np.abs(lo + step * table[:, :n_query] - scores).max() <= step / 2 + 1e-6
    slots = rng.permutation(len(sizes)).astype(np.int64)
    got = candidates.centroid_interaction(table, cids, cid_offsets, slots)
    for slot, total in zip(slots.tolist(), got.tolist(), strict=True):
        members = cids[cid_offsets[slot] : cid_offsets[slot + 1]]
        assert total == int(table[members].max(axis=0).astype(np.int64).sum())  # the kernel, exactly
        exact = float((query @ centroids[members].T).max(axis=1).sum())  # what the bytes stand for
        assert abs(n_query * lo + step * total - exact) <= n_query * step / 2 + 1e-4


@settings(max_examples=60, deadline=None)
@given(
    n_centroids=st.integers(1, 2500),
    n_query=st.integers(1, 40),
    dim=st.sampled_from([4, 16, 128]),
    seed=st.integers(0, 2**16),
)
def test_centroid_table_scores_are_within_their_bound(n_centroids, n_query, dim, seed) -> None:
    """The int8 centroids' scores (several widening blocks once K > 1,024) lie within the stated bound
    of the float32 ones, and that bound is the rounding of one coordinate grid step per dimension."""
    rng = np.random.default_rng(seed)
    centroids, query = unit(rng, n_centroids, dim), unit(rng, n_query, dim)
    centroids[:, 0] = 0.0  # a dimension no centroid uses: its scale stays finite, its codes 0
    table = candidates.CentroidTable.of(centroids)
    assert table.codes.dtype == np.int8 and np.abs(table.codes.astype(np.int16)).max() <= 127
    got = table.scores(query)
    assert got.shape == (n_centroids, n_query) and got.flags.c_contiguous and got.dtype == np.float32
    exact = centroids.astype(np.float64) @ query.astype(np.float64).T
    bound = table.error_bound(query)
    assert np.all(np.abs(got - exact) <= bound[None, :] + 1e-5)
    assert np.all(bound <= np.abs(query) @ (np.abs(centroids).max(axis=0) / 254) + 1e-6)


def test_centroid_table_rounds_to_the_nearest_step() -> None:
    centroids = np.array([[1.0, 0.0], [0.6, -0.25], [-1.0, 0.0]], np.float32)
    table = candidates.CentroidTable.of(centroids)
    np.testing.assert_allclose(table.scale, [1 / 127, 0.25 / 127], rtol=1e-6)
    assert table.codes.tolist() == [[127, 0], [76, -127], [-127, 0]]  # 0.6 · 127 = 76.2
    np.testing.assert_allclose(table.scores(np.array([[1.0, 0.0]], np.float32))[:, 0], [1, 76 / 127, -1])


def test_centroid_interaction_of_constant_scores_and_empty_documents() -> None:
    table, lo, step = candidates.byte_scores(np.full((5, 3), 0.25, np.float32))
    assert (lo, step) == (np.float32(0.25), 0.0) and not table.any()
    cids = np.array([1, 2, 4], np.uint16)
    offsets = np.array([0, 3, 3], np.int64)  # the second document holds no centroid
    got = candidates.centroid_interaction(table, cids, offsets, np.array([1, 0], np.int64))
    assert got.tolist() == [0, 0]
    with pytest.raises(ValueError, match="multiple of LANES"):
        candidates.centroid_interaction(np.zeros((5, 3), np.uint8), cids, offsets, np.array([0], np.int64))


@settings(max_examples=60, deadline=None)
@given(
    n_query=st.integers(1, 12),
    n_centroids=st.integers(1, 40),
    n_probe=st.integers(1, 6),
    levels=st.integers(2, 50),
    seed=st.integers(0, 2**16),
)
def test_probe_table_equals_stable_descending_sort(n_query, n_centroids, n_probe, levels, seed) -> None:
    """Few distinct values, so ties are common: they go to the lower centroid id, as a stable sort."""
    rng = np.random.default_rng(seed)
    similarities = rng.integers(0, levels, (n_query, n_centroids)).astype(np.float32)
    got = candidates.probe_table(centroid_major(similarities), n_query, n_probe)
    width = min(n_probe + 1, n_centroids)
    expected = np.argsort(-similarities, axis=1, kind="stable")[:, :width]
    if n_probe >= n_centroids:  # all probed: the worst repeated as the imputed one
        expected = np.concatenate([expected, expected[:, -1:]], axis=1)
    np.testing.assert_array_equal(got, expected)


def test_probe_table_orders_and_imputes() -> None:
    table = centroid_major(np.array([[0.1, 0.9, 0.5, 0.7]], np.float32))
    np.testing.assert_array_equal(candidates.probe_table(table, 1, 2), [[1, 3, 2]])
    # more probes than centroids: all probed, the worst imputed
    np.testing.assert_array_equal(candidates.probe_table(table, 1, 9), [[1, 3, 2, 0, 0]])
