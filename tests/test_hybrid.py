"""Keyword (BM25) and hybrid search: the text index follows every write in the same transaction,
filters hold, the fusion is the documented weighted reciprocal rank fusion, bad requests name the
field; and the modes through gRPC, the Python client and the CLI."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from mvr.client import Client, Document, InvalidArgumentError, cli
from mvr.server.errors import InvalidArgument
from mvr.server.hybrid import RRF_K
from mvr.server.manager import CollectionManager
from mvr.server.store import CATALOG
from mvr.server.values import DocumentInput

from tests.test_collection import DIM, unit

TEXTS = {
    "delete": "Deleting documents removes them from the collection and from every later search.",
    "snapshot": "A snapshot copies a collection while it keeps serving searches and taking writes.",
    "limits": "Limits bound every request: the server answers RESOURCE_EXHAUSTED when overloaded.",
    "fde": "The fixed dimensional encoding turns token vectors into one vector for the graph.",
    "maxsim": "MaxSim sums, over query tokens, the best inner product with any document token.",
}


@pytest.fixture
def manager(tmp_path: Path):
    manager = CollectionManager(tmp_path / "data", save_interval_s=3600)
    yield manager
    manager.close()


@pytest.fixture
def docs(manager: CollectionManager):
    """A collection without a model whose documents carry both vectors and text."""
    manager.create("kw", model=None, dim=DIM)
    collection = manager.get("kw")
    rng = np.random.default_rng(3)
    vectors = {doc_id: unit(rng, 6) for doc_id in TEXTS}
    collection.upsert(
        [DocumentInput(d, vectors=vectors[d], text=t, metadata={"kind": d[0]}) for d, t in TEXTS.items()]
    )
    return collection, vectors


def test_keyword_search_ranks_by_bm25_with_stemming(docs) -> None:
    collection, _ = docs
    hits = collection.search("delete document", 3, mode="keyword")
    assert hits[0].id == "delete"  # "delete" matches "Deleting" (Porter stemming), "document" too
    assert [h.keyword_rank for h in hits] == list(range(1, len(hits) + 1))
    assert all(h.score == h.keyword_score > 0 and h.semantic_rank == 0 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert collection.search("overloaded", 5, mode="keyword")[0].id == "limits"
    assert collection.search("zebra", 5, mode="keyword") == []
    assert collection.search('"NEAR(x y)" * OR -', 5, mode="keyword") == []  # no FTS5 syntax leaks


def test_the_text_index_follows_replacements_deletes_and_restarts(manager: CollectionManager, docs) -> None:
    collection, vectors = docs
    collection.upsert([DocumentInput("fde", vectors=vectors["fde"], text="Hashing with random hyperplanes.")])
    assert [h.id for h in collection.search("hyperplanes", 5, mode="keyword")] == ["fde"]
    assert collection.search("graph encoding", 5, mode="keyword") == []  # the replaced text is gone
    collection.delete(["snapshot"])
    assert collection.search("snapshot", 5, mode="keyword") == []
    manager.close()
    reopened = CollectionManager(manager.root.parent, save_interval_s=3600)
    try:
        again = reopened.get("kw")
        assert [h.id for h in again.search("hyperplanes", 5, mode="keyword")] == ["fde"]
        assert again.search("snapshot", 5, mode="keyword") == []
    finally:
        reopened.close()


def test_a_collection_from_before_the_text_index_is_indexed_at_open(manager: CollectionManager, docs) -> None:
    collection, _ = docs
    path = collection.directory / CATALOG
    manager.close()
    with sqlite3.connect(path) as db:  # as a collection written before the index existed
        db.execute("DELETE FROM text_index")
        db.execute("DELETE FROM state WHERE key = 'text_indexed'")
    reopened = CollectionManager(manager.root.parent, save_interval_s=3600)
    try:
        assert reopened.get("kw").search("overloaded", 1, mode="keyword")[0].id == "limits"
    finally:
        reopened.close()


def test_keyword_filters_return_top_k_whenever_top_k_match(manager: CollectionManager) -> None:
    manager.create("many", model=None, dim=DIM)
    collection = manager.get("many")
    rng = np.random.default_rng(1)
    collection.upsert(
        [
            DocumentInput(
                f"d{i:03d}",
                vectors=unit(rng, 3),
                text=f"common word {i}",
                metadata={"rare": str(i % 50 == 0)},
            )
            for i in range(300)
        ]
    )
    # all 300 documents hold the word; the 6 that pass the filter lie anywhere in the BM25 order
    hits = collection.search("common", 5, mode="keyword", filter={"rare": "True"})
    assert len(hits) == 5 and all(collection.get(h.id).metadata["rare"] == "True" for h in hits)
    every = collection.search("common", 10, mode="keyword", filter={"rare": "True"})
    assert sorted(h.id for h in every) == [f"d{i:03d}" for i in range(0, 300, 50)]


def test_hybrid_is_weighted_reciprocal_rank_fusion(docs) -> None:
    collection, vectors = docs
    query = vectors["maxsim"][:3]
    text = "snapshot of a collection"
    semantic = collection.search(query, 5)
    keyword = collection.search(text, 5, mode="keyword")
    fused = collection.search(query, 5, mode="hybrid", keyword_query=text)
    semantic_rank = {h.id: i for i, h in enumerate(semantic, 1)}
    keyword_rank = {h.id: i for i, h in enumerate(keyword, 1)}
    for hit in fused:
        assert hit.semantic_rank == semantic_rank.get(hit.id, 0)
        assert hit.keyword_rank == keyword_rank.get(hit.id, 0)
        expected = (0.5 / (RRF_K + hit.semantic_rank) if hit.semantic_rank else 0) + (
            0.5 / (RRF_K + hit.keyword_rank) if hit.keyword_rank else 0
        )
        assert hit.score == pytest.approx(expected)
    assert fused[0].id == "snapshot"  # second semantically is not enough: in both lists, it leads
    only_semantic = collection.search(query, 5, mode="hybrid", keyword_query=text, semantic_weight=1.0)
    assert [h.id for h in only_semantic][: len(semantic)] == [h.id for h in semantic]
    only_keyword = collection.search(query, 5, mode="hybrid", keyword_query=text, semantic_weight=0.0)
    assert [h.id for h in only_keyword][: len(keyword)] == [h.id for h in keyword]


def test_mode_errors_name_the_field(docs) -> None:
    collection, vectors = docs
    cases = [
        ({"mode": "keyword"}, "query.text"),
        ({"mode": "hybrid"}, "query.text"),
        ({"mode": "fuzzy"}, "mode"),
        ({"semantic_weight": 0.3}, "semantic_weight"),
        ({"mode": "hybrid", "keyword_query": "x", "semantic_weight": 1.5}, "semantic_weight"),
    ]
    for kwargs, field in cases:
        with pytest.raises(InvalidArgument) as raised:
            collection.search(vectors["fde"], 3, **kwargs)
        assert raised.value.field == field, kwargs


# ------------------------------------------------------------------------------------------ over gRPC


def test_modes_through_the_client_and_the_cli(mvr_server, unique_name: str, capsys) -> None:
    with Client(mvr_server.target) as mvr:
        mvr.create_collection(unique_name, model=str(mvr_server.model_dir))
        mvr.upsert(unique_name, [Document(d, text=t) for d, t in TEXTS.items()])
        keyword = mvr.search(unique_name, "deleting documents", top_k=3, mode="keyword")
        assert keyword[0].id == "delete" and keyword[0].keyword_rank == 1 and keyword[0].semantic_rank == 0
        hybrid = mvr.search(unique_name, "deleting documents", top_k=5, mode="hybrid", semantic_weight=0.3)
        assert hybrid[0].id == "delete" and hybrid[0].keyword_rank == 1 and hybrid[0].semantic_rank > 0
        semantic = mvr.search(unique_name, "deleting documents", top_k=5)
        assert [h.semantic_rank for h in semantic] == [1, 2, 3, 4, 5] and semantic[0].keyword_rank == 0
        with pytest.raises(InvalidArgumentError) as raised:
            mvr.search(unique_name, np.ones((2, 32), np.float32), mode="keyword")
        assert raised.value.field_violations[0].field == "query.text"
    assert (
        cli.main(["search", unique_name, "overloaded", "--mode", "keyword", "--target", mvr_server.target])
        == 0
    )
    assert "limits" in capsys.readouterr().out
