"""Exact MaxSim: equals brute force, stays within its bounds, never lets padding win."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mvr.server import errors, rerank
from mvr.server.rerank import maxsim


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@settings(max_examples=60, deadline=None)
@given(
    nq=st.integers(1, 10),
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=12),
    dim=st.sampled_from([3, 8, 32]),
    seed=st.integers(0, 2**16),
)
def test_equals_brute_force_and_respects_bounds(nq: int, sizes: list[int], dim: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    query = unit(rng, nq, dim)
    docs = [unit(rng, n, dim) for n in sizes]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    result = maxsim(query, np.vstack(docs), offsets, explain=True)
    for i, doc in enumerate(docs):
        sims = query.astype(np.float64) @ doc.T.astype(np.float64)
        assert abs(result.scores[i] - sims.max(axis=1).sum()) <= 1e-4
        assert -nq - 1e-4 <= result.scores[i] <= nq + 1e-4  # |<q, d>| <= 1 for unit vectors
        for q in range(nq):
            t = result.best_tokens[q, i]
            assert 0 <= t < len(doc)
            assert abs(result.token_scores[q, i] - sims[q, t]) <= 1e-5
            assert sims[q, t] >= sims[q].max() - 1e-5
        assert abs(result.token_scores[:, i].sum() - result.scores[i]) <= 1e-4


def test_all_negative_similarities_are_not_beaten_by_padding() -> None:
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    short = np.array([[-1.0, 0.0]], dtype=np.float32)  # similarity -1: a padded zero would win
    long = np.array([[0.0, 1.0], [-0.6, 0.8], [0.6, 0.8]], dtype=np.float32)
    result = maxsim(query, np.vstack([short, long]), np.array([0, 1, 4]))
    np.testing.assert_allclose(result.scores, [-1.0, 0.6], atol=1e-6)


def test_empty_candidate_list() -> None:
    assert maxsim(np.ones((2, 4), np.float32), np.zeros((0, 4), np.float32), np.array([0])).scores.shape == (
        0,
    )


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=20),
    tile=st.integers(1, 64),
    seed=st.integers(0, 2**16),
)
def test_tiles_of_any_size_score_like_one_matrix(sizes: list[int], tile: int, seed: int) -> None:
    """Documents split over many tiles, and documents longer than a tile, score as brute force."""
    rng = np.random.default_rng(seed)
    query, tokens = unit(rng, 5, 16), unit(rng, sum(sizes), 16)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    bounds = rerank.tile_bounds(offsets, tile)
    assert bounds[-1] == len(sizes) and bounds == sorted(set(bounds))
    reads = []

    def read(start: int, stop: int, buffer: np.ndarray) -> np.ndarray:
        reads.append((start, stop))
        assert len(buffer) == offsets[stop] - offsets[start]
        buffer[:] = tokens[offsets[start] : offsets[stop]]
        return buffer

    original = rerank.TILE_TOKENS
    rerank.TILE_TOKENS = tile
    try:
        result = rerank.maxsim_tiled(query, np.array(sizes), read, explain=True)
    finally:
        rerank.TILE_TOKENS = original
    assert [stop for _, stop in reads] == bounds  # every document read once, in order
    for i, (a, b) in enumerate(pairwise(offsets)):
        sims = query @ tokens[a:b].T
        np.testing.assert_allclose(result.token_scores[:, i], sims.max(axis=1), atol=1e-6)
        np.testing.assert_array_equal(result.best_tokens[:, i], sims.argmax(axis=1))
    plain = rerank.maxsim_tiled(query, np.array(sizes), read)
    np.testing.assert_allclose(plain.scores, result.scores, atol=1e-5)


def test_the_exact_stage_stops_at_the_first_tile_after_the_deadline(monkeypatch) -> None:
    """A deadline that passes while a tile is read: that tile is scored, no further tile is read."""
    rng = np.random.default_rng(3)
    sizes = [30] * 10
    query, tokens = unit(rng, 4, 16), unit(rng, sum(sizes), 16)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    monkeypatch.setattr(rerank, "TILE_TOKENS", 60)  # 5 tiles of 2 documents
    clock = {"now": 0.0}
    monkeypatch.setattr(errors.time, "monotonic", lambda: clock["now"])
    reads = []

    def read(start: int, stop: int, buffer: np.ndarray) -> np.ndarray:
        reads.append(start)
        clock["now"] += 1.0  # each tile takes "a second"
        buffer[:] = tokens[offsets[start] : offsets[stop]]
        return buffer

    with pytest.raises(errors.DeadlineExceeded, match="before the exact scoring's next tile"):
        rerank.maxsim_tiled(query, np.array(sizes), read, deadline=2.0)
    assert reads == [0, 2]  # tiles started at t=0 and t=1; at t=2 the deadline had passed
    reads.clear()
    clock["now"] = 0.0
    rerank.maxsim_tiled(query, np.array(sizes), read, deadline=None)
    assert len(reads) == 5
