"""The HNSW wrapper (server/mvr/server/index.py): a search that cannot fill k returns everything it
found, not a halved k."""

from __future__ import annotations

import numpy as np
from mvr.server.index import HnswIndex, IndexParams


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_a_filter_with_fewer_matches_than_k_returns_every_match_best_first() -> None:
    rng = np.random.default_rng(0)
    vectors = unit_rows(rng, 400, 16)
    index = HnswIndex(IndexParams(dim=16, m=16, ef_construction=200), capacity=400)
    index.add(np.arange(400, dtype=np.int64), vectors)
    query = unit_rows(rng, 1, 16)[0]
    for matches in (1, 37, 60, 99):  # k = 100 cannot be filled: hnswlib raises for it
        allowed = set(rng.choice(400, matches, replace=False).tolist())
        labels, scores = index.search(query, 100, ef=400, allowed=allowed.__contains__)
        assert set(labels.tolist()) == allowed  # ef 400 reaches all 400: every match (halving kept 50)
        expected = sorted(allowed, key=lambda label: -float(vectors[label] @ query))
        assert labels.tolist() == expected
        np.testing.assert_allclose(scores, vectors[labels] @ query, atol=1e-5)


def test_deleted_labels_are_never_returned_and_the_rest_all_are() -> None:
    rng = np.random.default_rng(1)
    vectors = unit_rows(rng, 300, 8)
    index = HnswIndex(IndexParams(dim=8, m=16, ef_construction=200), capacity=300)
    index.add(np.arange(300, dtype=np.int64), vectors)
    index.mark_deleted(list(range(0, 300, 3)))
    labels, _ = index.search(unit_rows(rng, 1, 8)[0], 300, ef=300)
    assert sorted(labels.tolist()) == [label for label in range(300) if label % 3]
