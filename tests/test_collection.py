"""Collection engine: write/read/search semantics, recall against brute force, index recovery,
compaction, concurrency, and the store's durability rules."""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from mvr.server import rerank
from mvr.server import search as search_module
from mvr.server.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from mvr.server.index import INDEX_FILE
from mvr.server.limits import Limits
from mvr.server.manager import CollectionManager
from mvr.server.store import NO_OFFSET, VECTORS
from mvr.server.values import DocumentInput

DIM = 16


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def chamfer(q: np.ndarray, d: np.ndarray) -> float:
    return float((q @ d.T).max(axis=1).sum())


def clustered_corpus(n_docs: int, seed: int = 0, dim: int = DIM, noise: float = 0.3) -> dict[str, np.ndarray]:
    """Documents whose tokens come from a few topic centroids: realistic neighbour structure."""
    rng = np.random.default_rng(seed)
    centroids = unit(rng, 64, dim)
    docs = {}
    for i in range(n_docs):
        topics = rng.choice(64, size=3, replace=False)
        n = int(rng.integers(10, 40))
        jitter = noise * rng.standard_normal((n, dim)).astype(np.float32)
        tokens = centroids[rng.choice(topics, size=n)] + jitter
        docs[f"d{i:04d}"] = tokens / np.linalg.norm(tokens, axis=1, keepdims=True)
    return docs


@pytest.fixture
def manager(tmp_path: Path):
    manager = CollectionManager(tmp_path, save_interval_s=3600)
    yield manager
    manager.close()


def test_upsert_get_replace_delete_search(manager: CollectionManager) -> None:
    manager.create("c", model=None, dim=DIM, vector_dtype="float32")
    c = manager.get("c")
    rng = np.random.default_rng(0)
    a, b = unit(rng, 5), unit(rng, 7)
    results = c.upsert([DocumentInput("a", vectors=a, metadata={"k": "1"}), DocumentInput("b", vectors=b)])
    assert [(r.id, r.created, r.n_tokens) for r in results] == [("a", True, 5), ("b", True, 7)]
    np.testing.assert_array_equal(c.get("a").vectors, a)
    assert [h.id for h in c.search(a, 2)] == ["a", "b"]
    assert c.search(a, 1)[0].score == pytest.approx(5.0, abs=1e-4)

    replacement = unit(rng, 3)
    assert c.upsert([DocumentInput("a", vectors=replacement)])[0].created is False
    assert c.get("a").metadata == {}
    assert c.search(replacement, 1)[0].score == pytest.approx(3.0, abs=1e-4)
    assert c.delete(["b", "missing"]) == [True, False]
    assert [h.id for h in c.search(b, 5)] == ["a"]
    with pytest.raises(NotFound, match="'b'"):
        c.get("b")
    c.flush()
    assert c.stats().documents == 1 and c.stats().indexed == 1 and c.stats().tokens == 3


def test_validation_errors(manager: CollectionManager) -> None:
    manager.create("v", model=None, dim=DIM)
    c = manager.get("v")
    with pytest.raises(AlreadyExists):
        manager.create("v", model=None, dim=DIM)
    with pytest.raises(InvalidArgument, match="collection_id"):
        manager.create("Bad!", model=None, dim=DIM)
    with pytest.raises(InvalidArgument, match=r"collection\.fde\.k_sim"):
        manager.create("w", model=None, dim=DIM, fde={"k_sim": 99})
    with pytest.raises(InvalidArgument, match=r"collection\.hnsw\.bogus"):
        manager.create("w", model=None, dim=DIM, hnsw={"bogus": 1})
    ok = np.ones((2, DIM), np.float32)
    with pytest.raises(InvalidArgument, match=r"documents\[1\].id"):
        c.upsert([DocumentInput("x", vectors=ok), DocumentInput("x", vectors=ok)])
    with pytest.raises(FailedPrecondition, match="dim 5"):
        c.upsert([DocumentInput("x", vectors=np.ones((2, 5), np.float32))])
    with pytest.raises(FailedPrecondition, match="encoder"):
        c.upsert([DocumentInput("x", text="hello")])
    with pytest.raises(InvalidArgument, match="top_k"):
        c.search(ok, 0)
    with pytest.raises(InvalidArgument, match="candidates"):
        c.search(ok, 10, candidates=5)
    longest = np.ones((c.limits.max_document_tokens, DIM), np.float32)
    with pytest.raises(InvalidArgument, match=r"documents\[0\]\.vectors: has 8193 tokens; the limit is 8192"):
        c.upsert([DocumentInput("long", vectors=np.vstack([longest, ok[:1]]))])
    with pytest.raises(InvalidArgument, match=r"query\.vectors: has 1025 tokens; the limit is 1024"):
        c.search(longest[: c.limits.max_query_tokens + 1], 10)
    c.search(longest[: c.limits.max_query_tokens], 10)  # at the limit: accepted
    with pytest.raises(NotFound):
        manager.get("nope")
    assert c.stats().documents == 0


def test_ids_and_metadata_are_bounded_by_name(manager: CollectionManager) -> None:
    manager.create("m", model=None, dim=DIM)
    c = manager.get("m")
    ok = np.ones((2, DIM), np.float32)

    def upsert(id: str = "x", metadata: dict | None = None) -> None:
        c.upsert([DocumentInput("fine", vectors=ok), DocumentInput(id, vectors=ok, metadata=metadata or {})])

    for bad, position in (("a\x00b", "U+0000 at position 1"), ("line\n", "U+000A at position 4")):
        with pytest.raises(
            InvalidArgument,
            match=r"documents\[1\]\.id: contains the control character " + re.escape(position),
        ):
            upsert(bad)
    with pytest.raises(InvalidArgument, match=r"documents\[1\]\.metadata: has 65 keys; the limit is 64"):
        upsert(metadata={f"k{j}": "v" for j in range(65)})
    with pytest.raises(InvalidArgument, match=r"documents\[1\]\.metadata\['big'\]: is 16385 bytes"):
        upsert(metadata={"big": "x" * (16 * 1024 + 1)})
    with pytest.raises(InvalidArgument, match=r"documents\[1\]\.metadata: key '' is 0 bytes"):
        upsert(metadata={"": "v"})
    with pytest.raises(InvalidArgument, match=r"metadata: key 'kkkk.* is 257 bytes"):
        upsert(metadata={"k" * 257: "v"})
    with pytest.raises(InvalidArgument, match=r"documents\[1\]\.metadata: is 81930 bytes .* limit is 65536"):
        upsert(metadata={f"k{j}": "x" * 16 * 1024 for j in range(5)})
    assert c.stats().documents == 0  # a refused document refuses its whole batch
    upsert("ünïcode/ok id", {f"k{j}": "x" * 16 * 1024 for j in range(3)})  # within every limit
    assert c.stats().documents == 2


def test_texts_that_encode_past_the_token_limits_name_the_text(tmp_path: Path, monkeypatch) -> None:
    from mvr.server.encoder import Encoder

    from tests.models import make_tiny_colbert

    model = make_tiny_colbert(tmp_path / "model")
    limits = Limits(max_document_tokens=4, max_query_tokens=4)  # what a long doc_maxlen would reach
    manager = CollectionManager(
        tmp_path / "data", lambda name, q=None, d=None: Encoder.load(name), limits=limits
    )
    manager.create("txt", model=str(model), dim=None)
    c = manager.get("txt")
    with pytest.raises(InvalidArgument, match=r"documents\[1\]\.text: encodes to \d+ tokens; the limit is 4"):
        c.upsert([DocumentInput("short", text="cat"), DocumentInput("long", text="the cat sat on the mat")])
    with pytest.raises(InvalidArgument, match=r"query\.text: has \d+ tokens; the limit is 4"):
        c.search("the cat sat on the mat", 1)
    assert c.stats().documents == 0  # the batch is refused whole
    manager.close()


def test_filter_returns_top_k_when_enough_documents_match(manager: CollectionManager) -> None:
    manager.create("f", model=None, dim=DIM)
    c = manager.get("f")
    docs = clustered_corpus(300, seed=1)
    c.upsert(
        [
            DocumentInput(i, vectors=v, metadata={"bucket": str(n % 10)})
            for n, (i, v) in enumerate(docs.items())
        ]
    )
    c.flush()
    query = docs["d0007"][:4]
    hits = c.search(query, 10, candidates=20, filter={"bucket": "3"})
    assert len(hits) == 10 and all(h.metadata["bucket"] == "3" for h in hits)
    selective = c.search(query, 10, filter={"bucket": "7"})
    expected = sorted((i for n, i in enumerate(docs) if n % 10 == 7), key=lambda i: -chamfer(query, docs[i]))[
        :10
    ]
    assert [h.id for h in selective] == expected
    assert c.search(query, 10, filter={"bucket": "none"}) == []


def test_recall_at_10_against_brute_force_chamfer(manager: CollectionManager) -> None:
    manager.create("r", model=None, dim=64)  # server defaults otherwise
    c = manager.get("r")
    docs = clustered_corpus(1500, seed=2, dim=64, noise=0.08)
    items = list(docs.items())
    for start in range(0, len(items), 250):
        c.upsert([DocumentInput(i, vectors=v) for i, v in items[start : start + 250]])
    c.flush()
    rng = np.random.default_rng(3)
    recalls = []
    for _ in range(20):
        source = docs[items[int(rng.integers(len(items)))][0]]
        query = source[rng.choice(len(source), size=6, replace=False)]
        truth = sorted(docs, key=lambda i: -chamfer(query, docs[i]))[:10]
        found = [h.id for h in c.search(query, 10)]
        recalls.append(len(set(found) & set(truth)) / 10)
    assert np.mean(recalls) >= 0.95, recalls


def test_the_graph_projection_defaults_by_whether_the_collection_is_coded(manager: CollectionManager) -> None:
    manager.create("coded", model=None, dim=DIM)
    manager.create("floats", model=None, dim=DIM, tokens={"residual_bits": 0})
    manager.create("asked", model=None, dim=DIM, tokens={"residual_bits": 0}, fde={"final_dim": 64})
    # the graph is most of the resident bytes; without codes it is the only first stage
    assert manager.get("coded").fde.output_dim == 256
    assert manager.get("floats").fde.output_dim == 512
    assert manager.get("asked").fde.output_dim == 64
    assert [manager.get(n).config.fde.final_dim for n in ("coded", "floats", "asked")] == [256, 512, 64]


def test_searches_see_acknowledged_documents_before_indexing(manager: CollectionManager) -> None:
    manager.create("p", model=None, dim=DIM)
    c = manager.get("p")
    docs = clustered_corpus(400, seed=4)
    c.upsert([DocumentInput(i, vectors=v) for i, v in docs.items()])
    # no flush: most are still pending; each must be findable right away
    for doc_id in ["d0000", "d0199", "d0399"]:
        assert c.search(docs[doc_id], 1)[0].id == doc_id


def test_concurrent_searches_during_writes_never_see_partial_documents(manager: CollectionManager) -> None:
    manager.create("cc", model=None, dim=DIM)
    c = manager.get("cc")
    rng = np.random.default_rng(5)
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer() -> None:
        for i in range(60):
            c.upsert([DocumentInput(f"w{i}", vectors=unit(rng, 8), metadata={"n": "8"})])
            if i % 3 == 0:
                c.delete([f"w{i - 1}"])
        stop.set()

    def reader() -> None:
        query = unit(np.random.default_rng(6), 4)
        try:
            while not stop.is_set():
                for hit in c.search(query, 5, explain=True):
                    assert len(hit.explanation) == 4
                    assert all(0 <= m.doc_token < 8 for m in hit.explanation)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=reader) for _ in range(3)] + [threading.Thread(target=writer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors


def test_missing_or_corrupt_index_is_rebuilt_on_open(tmp_path: Path) -> None:
    docs = clustered_corpus(200, seed=7)
    manager = CollectionManager(tmp_path)
    manager.create("x", model=None, dim=DIM)
    manager.get("x").upsert([DocumentInput(i, vectors=v) for i, v in docs.items()])
    manager.close()
    index_file = tmp_path / "collections" / "x" / INDEX_FILE
    for damage in ("corrupt", "missing"):
        if damage == "corrupt":
            index_file.write_bytes(b"\0garbage" * 100)
        else:
            index_file.unlink()
        manager = CollectionManager(tmp_path)
        c = manager.get("x")
        assert c.search(docs["d0042"], 1)[0].id == "d0042"
        c.flush()
        assert c.stats().indexed == 200
        manager.close()
        assert index_file.stat().st_size > 10_000


def test_reopen_replays_writes_made_after_the_last_index_save(tmp_path: Path) -> None:
    docs = clustered_corpus(120, seed=8)
    ids = list(docs)
    manager = CollectionManager(tmp_path)
    manager.create("y", model=None, dim=DIM)
    c = manager.get("y")
    c.upsert([DocumentInput(i, vectors=docs[i]) for i in ids[:60]])
    c.flush()  # index saved with 60 documents
    c.upsert([DocumentInput(i, vectors=docs[i]) for i in ids[60:]])
    c.delete(ids[:10])
    # simulate a crash: the index file on disk is the one saved above, the store has everything
    c._closed = True  # stop the indexer without saving
    c.store.close()
    manager2 = CollectionManager(tmp_path)
    c2 = manager2.get("y")
    assert c2.stats().documents == 110
    assert [h.id for h in c2.search(docs[ids[5]], 3)] != [ids[5]]
    assert c2.search(docs[ids[100]], 1)[0].id == ids[100]
    c2.flush()
    assert c2.index.count == 110
    manager2.close()


def test_compaction_reclaims_space_and_keeps_documents(manager: CollectionManager) -> None:
    manager.create("k", model=None, dim=DIM, vector_dtype="float32")
    c = manager.get("k")
    docs = clustered_corpus(100, seed=9)
    c.upsert([DocumentInput(i, vectors=v) for i, v in docs.items()])
    c.upsert([DocumentInput(i, vectors=v) for i, v in list(docs.items())[:50]])  # 50 replaced versions
    c.delete(list(docs)[50:80])
    before = c.store.vectors_end
    reclaimed = c.compact()
    assert reclaimed > 0 and c.store.vectors_end == before - reclaimed
    for doc_id in list(docs)[:50] + list(docs)[80:]:
        np.testing.assert_array_equal(c.get(doc_id).vectors, docs[doc_id])
    assert c.search(docs["d0090"], 1)[0].id == "d0090"


def test_torn_tail_of_the_vector_file_is_ignored(tmp_path: Path) -> None:
    manager = CollectionManager(tmp_path)
    manager.create("t", model=None, dim=DIM, vector_dtype="float32")
    doc = unit(np.random.default_rng(0), 4)
    manager.get("t").upsert([DocumentInput("kept", vectors=doc)])
    manager.close()
    # a crash after appending vectors but before the catalog commit: bytes past vectors_end
    path = tmp_path / "collections" / "t" / VECTORS
    with path.open("r+b") as handle:
        handle.seek(4 * DIM * 4)
        handle.write(os.urandom(1000))
    manager = CollectionManager(tmp_path)
    c = manager.get("t")
    np.testing.assert_array_equal(c.get("kept").vectors, doc)
    c.upsert([DocumentInput("next", vectors=doc[:2])])
    np.testing.assert_array_equal(c.get("next").vectors, doc[:2])
    assert c.stats().documents == 2
    manager.close()


def test_text_collection_with_a_tiny_model_and_a_changed_model(tmp_path: Path) -> None:
    from mvr.server.encoder import Encoder

    from tests.models import make_tiny_colbert

    model = make_tiny_colbert(tmp_path / "model")
    cache: dict = {}

    def load(name: str, query_maxlen: int | None = None, doc_maxlen: int | None = None) -> Encoder:
        key = (name, query_maxlen, doc_maxlen)
        cache.setdefault(key, Encoder.load(name, query_maxlen=query_maxlen, doc_maxlen=doc_maxlen))
        return cache[key]

    manager = CollectionManager(tmp_path / "data", load)
    config = manager.create("txt", model=str(model), dim=None)
    assert config.encoder.format == "colbert" and config.dim == 16
    c = manager.get("txt")
    c.upsert(
        [
            DocumentInput("cats", text="the cat sat on the mat"),
            DocumentInput("rain", text="heavy rain and wind"),
        ]
    )
    assert c.search(c.encode_query("heavy rain"), 1)[0].id == "rain"
    # ColBERT keeps [CLS], [D] and [SEP] and drops punctuation: a punctuation-only text has 3 vectors
    assert c.upsert([DocumentInput("p", text=", . ;")])[0].n_tokens == 3
    manager.close()

    make_tiny_colbert(model, seed=3)  # the model directory now holds other weights
    cache.clear()
    manager = CollectionManager(tmp_path / "data", load)
    c = manager.get("txt")
    with pytest.raises(FailedPrecondition, match="weights_sha256"):
        c.encode_query("rain")
    assert c.search(c.get("rain").vectors, 1)[0].id == "rain"  # the vectors path still works
    manager.close()


# ------------------------------------------------------------------------------------ coded collections

CODED = {"train_after_tokens": 1024, "centroids": 64}


def exact_top(query: np.ndarray, docs: dict[str, np.ndarray], k: int) -> list[str]:
    return sorted(docs, key=lambda d: (-chamfer(query, docs[d]), d))[:k]


def paraphrases(docs: dict[str, np.ndarray], n: int, seed: int) -> list[np.ndarray]:
    """Queries made of a few perturbed tokens of one document each."""
    rng = np.random.default_rng(seed)
    names = sorted(docs)
    queries = []
    for _ in range(n):
        source = docs[names[int(rng.integers(len(names)))]]
        picked = source[rng.choice(len(source), size=min(6, len(source)), replace=False)]
        noisy = picked + 0.1 * rng.standard_normal(picked.shape).astype(np.float32)
        queries.append(noisy / np.linalg.norm(noisy, axis=1, keepdims=True))
    return queries


def build_coded(manager: CollectionManager, docs: dict[str, np.ndarray], **tokens) -> object:
    manager.create("coded", model=None, dim=DIM, tokens={**CODED, **tokens})
    c = manager.get("coded")
    items = list(docs.items())
    for start in range(0, len(items), 50):
        c.upsert(
            [
                DocumentInput(i, vectors=v, metadata={"half": str(n % 2)})
                for n, (i, v) in enumerate(items[start : start + 50], start)
            ]
        )
    c.flush(timeout_s=120)
    return c


def test_coded_collection_trains_codes_and_searches_decoded_tokens(manager: CollectionManager) -> None:
    docs = clustered_corpus(300, seed=3)
    c = build_coded(manager, docs)
    stats = c.stats()
    assert (stats.coded, stats.centroids) == (300, 64)
    assert stats.bytes_on_disk["codes"] == stats.tokens * (2 + 2 + DIM * 8 // 8)  # id, norm, residual
    queries = paraphrases(docs, 20, seed=5)
    # with every document a candidate, the result is exact MaxSim over the decoded tokens
    for query in queries[:5]:
        hits = c.search(query, 10, candidates=300)
        assert {h.precision for h in hits} == {"residual8"}
        decoded = {h.id: c.searcher.token_matrix([c.store.records[h.id]]) for h in hits}
        for hit in hits:
            assert hit.score == pytest.approx(chamfer(query, decoded[hit.id]), abs=1e-4)
    # at the defaults the cascade finds what exact MaxSim over every decoded document finds ...
    ceiling = [{h.id for h in c.search(q, 10, candidates=300)} for q in queries]
    found = [len({h.id for h in c.search(q, 10)} & best) for q, best in zip(queries, ceiling, strict=True)]
    # counted in integers (a float mean put 0.95 at 0.9499999...). The ceiling is exact MaxSim over every
    # decoded document since a search with more candidates than documents scores them all (before, the
    # cascade at 300 candidates, which missed some: the bar was 190 of 200 against it); the defaults
    # find 189 of 200 of the exact ceiling on this 300-document, 16-d corpus. The 0.95 target of the
    # engine is measured at 10k and 100k in bench/vs_peers.py.
    assert sum(found) >= 188, found
    # ... which is close to exact Chamfer over the original vectors
    kept = [len(best & set(exact_top(q, docs, 10))) / 10 for q, best in zip(queries, ceiling, strict=True)]
    assert np.mean(kept) >= 0.8
    assert {h.id for h in c.search(queries[0], 10, filter={"half": "1"})} <= {
        d for n, d in enumerate(docs) if n % 2 == 1
    }


def test_compaction_drops_vectors_of_coded_documents_and_reopen_rebuilds(tmp_path: Path) -> None:
    docs = clustered_corpus(200, seed=4)
    manager = CollectionManager(tmp_path, save_interval_s=3600)
    c = build_coded(manager, docs)
    query = unit(np.random.default_rng(6), 6)
    before = [(h.id, h.score) for h in c.search(query, 10)]
    assert c.get("d0007").vectors.dtype == np.float32  # still the stored vectors before compaction
    c.compact()
    assert c.store.bytes_on_disk()["vectors"] == 0
    decoded = c.get("d0007").vectors
    cosine = (decoded * docs["d0007"]).sum(axis=1)
    assert decoded.shape == docs["d0007"].shape and cosine.min() > 0.9
    assert [(h.id, h.score) for h in c.search(query, 10)] == before
    manager.close()
    reopened = CollectionManager(tmp_path, save_interval_s=3600)
    c = reopened.get("coded")
    assert c.stats().coded == 200
    assert [(h.id, h.score) for h in c.search(query, 10)] == before
    # writes after the codec: coded at once by the indexer, then deletes and replacements
    new = unit(np.random.default_rng(7), 12)
    c.upsert([DocumentInput("fresh", vectors=new), DocumentInput("d0001", vectors=new)])
    c.delete(["d0002"])
    c.flush(timeout_s=60)
    assert c.stats().coded == 200
    hits = c.search(new, 3)
    assert {hits[0].id, hits[1].id} == {"fresh", "d0001"}
    assert "d0002" not in {h.id for h in c.search(docs["d0002"], 50, candidates=200)}
    reopened.close()


def test_keep_vectors_scores_over_the_stored_vectors(manager: CollectionManager) -> None:
    docs = clustered_corpus(150, seed=8)
    c = build_coded(manager, docs, keep_vectors=True)
    c.compact()
    assert c.store.bytes_on_disk()["vectors"] > 0 and c.stats().coded == 150
    query = unit(np.random.default_rng(9), 5)
    hits = c.search(query, 5, candidates=150)
    assert {h.precision for h in hits} == {"float16"}
    assert [h.id for h in hits] == exact_top(query, docs, 5)


def test_candidate_tokens_mix_sources_across_tiles(manager: CollectionManager, monkeypatch) -> None:
    """The exact stage's reader regroups records by source (decoded codes, stored float16 vectors) and
    reads any tile of them; tiles that cut across runs and documents score as one matrix does."""
    docs = clustered_corpus(120, seed=11)
    c = build_coded(manager, docs)
    records = [c.store.records[i] for i in sorted(docs)]
    # every third document as if not coded yet: read from its stored vectors, not its codes
    mixed = [replace(r, code_offset=NO_OFFSET) if n % 3 == 0 else r for n, r in enumerate(records)]
    tokens = c.searcher.tokens_of(mixed)
    assert sorted(r.id for r in tokens.records) == sorted(docs)
    n_vectors = len(range(0, len(mixed), 3))  # regrouped: one run of codes, then one of vectors
    expected = ["residual8"] * (len(mixed) - n_vectors) + ["float16"] * n_vectors
    assert [tokens.precision(i) for i in range(len(mixed))] == expected
    whole = c.searcher.token_matrix(tokens.records)
    rng = np.random.default_rng(12)
    for _ in range(20):
        start, stop = sorted(rng.choice(len(mixed) + 1, 2, replace=False).tolist())
        rows = slice(tokens.rows[start], tokens.rows[stop])
        out = np.full((rows.stop - rows.start, DIM), np.nan, np.float32)
        np.testing.assert_array_equal(tokens.read(start, stop, out), whole[rows])
    for n, record in enumerate(tokens.records):  # stored vectors where float16, decoded codes elsewhere
        own = whole[tokens.rows[n] : tokens.rows[n + 1]]
        np.testing.assert_array_equal(own, c.searcher.token_matrix([record]))
        if tokens.precision(n) == "float16":
            np.testing.assert_array_equal(own, record.vectors().astype(np.float32))
        else:  # this document's tokens, decoded (8-bit: close, not equal)
            assert np.abs(own - docs[record.id]).mean() < 0.01
    monkeypatch.setattr(rerank, "TILE_TOKENS", 37)  # tiles far smaller than a document
    query = unit(np.random.default_rng(13), 6)
    scored = rerank.maxsim_tiled(query, tokens.counts, tokens.read)
    expected = [chamfer(query, whole[tokens.rows[n] : tokens.rows[n + 1]]) for n in range(len(mixed))]
    np.testing.assert_allclose(scored.scores, expected, atol=1e-5)


def test_default_centroid_depth_grows_with_the_candidates() -> None:
    """`candidates` alone is the recall knob: past the base, the probe keeps 4 documents per candidate
    and walks lists in proportion to the square root of what it keeps; at the defaults nothing moves."""
    for centroids, probe, kept in [(64, 2, 1000), (4096, 2, 1000), (8192, 4, 2000), (16384, 8, 2000)]:
        for n_candidates in (10, 128, 250):
            assert search_module.default_centroid_candidates(centroids, n_candidates) == kept
            assert search_module.default_probe(centroids, kept) == probe
    assert search_module.default_centroid_candidates(8192, 2048) == 8192
    assert search_module.default_probe(8192, 8192) == 8  # 4 * sqrt(8192 / 2000), rounded
    assert search_module.default_probe(8192, 4096) == 6
    assert search_module.default_probe(4096, 2048) == 3
    # past 8,192 centroids the kept base stays at 2,000 while the probe's base goes on growing
    assert search_module.default_centroid_candidates(65536, 100) == 2000
    assert search_module.default_probe(65536, 2000) == 32
    assert search_module.default_centroid_candidates(16384, 1000) == 4000
    assert search_module.default_probe(16384, 4000) == 11  # 8 * sqrt(4000 / 2000), rounded
    depths = [search_module.default_centroid_candidates(8192, c) for c in range(10, 10_000, 97)]
    probes = [search_module.default_probe(8192, k) for k in depths]
    assert depths == sorted(depths) and probes == sorted(probes)


def test_default_candidates_follow_the_codecs_centroids() -> None:
    """Uncoded: 300; coded: 144, and 100 from 16,384 centroids on (finer centroid stages); always at
    least 10 per hit asked for."""
    assert search_module.default_candidates(None, 10) == 300
    for centroids, expected in [(256, 144), (8192, 144), (16383, 144), (16384, 100), (65536, 100)]:
        assert search_module.default_candidates(centroids, 10) == expected
    assert search_module.default_candidates(16384, 20) == 200
    assert search_module.default_candidates(8192, 20) == 200
    assert search_module.default_candidates(None, 40) == 400


def test_searches_default_to_the_candidates_of_their_codecs_centroids(
    manager: CollectionManager, monkeypatch
) -> None:
    c = build_coded(manager, clustered_corpus(300, seed=14))
    n_centroids = c.searcher._tokens().snapshot.codec.n_centroids
    seen: list[int] = []
    real = search_module.Searcher.centroid_stages

    def spy(self, query, snapshot, params, n_candidates, allowed):
        seen.append(n_candidates)
        return real(self, query, snapshot, params, n_candidates, allowed)

    monkeypatch.setattr(search_module.Searcher, "centroid_stages", spy)
    query = unit(np.random.default_rng(16), 6)
    c.search(query, 10)
    monkeypatch.setattr(search_module, "FINE_CENTROIDS", n_centroids)  # this codec counts as fine
    c.search(query, 10)
    c.search(query, 20)
    c.search(query, 10, candidates=130)
    monkeypatch.setattr(search_module, "FINE_CENTROIDS", n_centroids + 1)
    c.search(query, 10)
    assert seen == [144, 100, 200, 130, 144]


def test_searches_pass_the_resolved_depth_to_the_probe(manager: CollectionManager, monkeypatch) -> None:
    c = build_coded(manager, clustered_corpus(300, seed=14))
    seen: list[tuple[int, int]] = []
    real_table, real_lists = search_module.probe_table, search_module.probe_lists

    def table(scores, n_query, n_probe):
        seen.append((n_probe, -1))
        return real_table(scores, n_query, n_probe)

    def lists(*args):
        seen[-1] = (seen[-1][0], args[-1])
        return real_lists(*args)

    monkeypatch.setattr(search_module, "probe_table", table)
    monkeypatch.setattr(search_module, "probe_lists", lists)
    monkeypatch.setattr(search_module, "DEFAULT_CENTROID_CANDIDATES", 20)  # so that 50 candidates pass it
    query = unit(np.random.default_rng(15), 6)
    c.search(query, 10, candidates=50)
    c.search(query, 10, candidates=50, centroid_candidates=80)
    c.search(query, 10, candidates=50, probe=3, centroid_candidates=30)
    c.search(query, 5, candidates=5)
    assert seen == [(6, 200), (4, 80), (3, 30), (2, 20)]  # 2·√10 → 6; 2·√4; as asked; the base


def test_writes_during_training_and_backfill_are_all_coded(manager: CollectionManager) -> None:
    docs = clustered_corpus(400, seed=10)
    manager.create("coded", model=None, dim=DIM, tokens=CODED)
    c = manager.get("coded")
    items = list(docs.items())
    for start in range(0, len(items), 10):  # small batches: training and backfill race the writes
        c.upsert([DocumentInput(i, vectors=v) for i, v in items[start : start + 10]])
    c.flush(timeout_s=120)
    assert c.stats().coded == 400
    snapshot = c.tokens.snapshot
    assert snapshot.n == 400 and snapshot.n_listed == 400 and bool(np.all(np.diff(snapshot.labels) > 0))


def test_search_knobs_are_validated_by_name(manager: CollectionManager) -> None:
    c = build_coded(manager, clustered_corpus(60, seed=11))
    query = unit(np.random.default_rng(0), 4)
    for kwargs, field in [
        ({"probe": 0}, "probe"),
        ({"probe": 65}, "probe"),
        ({"centroid_candidates": 0}, "centroid_candidates"),
        ({"candidates": 5}, "candidates"),
    ]:
        with pytest.raises(InvalidArgument, match=field):
            c.search(query, 10, **kwargs)


def test_bad_token_storage_is_rejected_by_name(manager: CollectionManager) -> None:
    for tokens, field in [
        ({"residual_bits": 3}, "collection.token_storage.residual_bits"),
        ({"centroids": 70000}, "collection.token_storage.centroids"),
        ({"train_after_tokens": 10}, "collection.token_storage.train_after_tokens"),
        ({"bogus": 1}, "collection.token_storage.bogus"),
    ]:
        with pytest.raises(InvalidArgument, match=field.replace(".", r"\.")):
            manager.create("bad", model=None, dim=DIM, tokens=tokens)


def test_a_passed_deadline_stops_searches_and_stores_nothing(manager: CollectionManager) -> None:
    docs = clustered_corpus(200, seed=41)
    c = build_coded(manager, docs)
    query = paraphrases(docs, 1, seed=42)[0]
    past = time.monotonic() - 0.001
    with pytest.raises(DeadlineExceeded, match="deadline passed before the graph stage"):
        c.search(query, 10, deadline=past)
    assert len(c.search(query, 10, deadline=time.monotonic() + 60)) == 10
    before = c.stats().documents
    with pytest.raises(DeadlineExceeded, match="before encoding the documents"):
        c.upsert([DocumentInput("late", vectors=docs["d0000"])], deadline=past)
    assert c.stats().documents == before and "late" not in c.store.records


def test_limits_are_configurable_and_named(tmp_path: Path) -> None:
    limits = Limits.parse(["max_top_k=5", " max_metadata_keys = 2", "max_candidates=50", "max_collections=2"])
    assert (limits.max_top_k, limits.max_metadata_keys, limits.max_candidates) == (5, 2, 50)
    assert limits.max_query_tokens == Limits().max_query_tokens
    for bad, message in [
        (["max_topk=5"], "unknown limit 'max_topk=5': expected NAME=VALUE, NAME one of"),
        (["max_top_k"], "unknown limit 'max_top_k'"),
        (["max_top_k=0"], "limit max_top_k must be a positive integer, got 0"),
        (["max_top_k=ten"], "limit max_top_k must be a positive integer, got 'ten'"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            Limits.parse(bad)
    manager = CollectionManager(tmp_path, save_interval_s=3600, limits=limits)
    manager.create("l", model=None, dim=DIM)
    c = manager.get("l")
    ok = np.ones((2, DIM), np.float32)
    with pytest.raises(InvalidArgument, match=r"documents\[0\]\.metadata: has 3 keys; the limit is 2"):
        c.upsert([DocumentInput("a", vectors=ok, metadata={"x": "1", "y": "2", "z": "3"})])
    c.upsert([DocumentInput("a", vectors=ok, metadata={"x": "1", "y": "2"})])
    manager.create("l2", model=None, dim=DIM)
    with pytest.raises(
        ResourceExhausted, match=re.escape("holds 2 collections; the limit is 2 (max_collections)")
    ):
        manager.create("l3", model=None, dim=DIM)
    with pytest.raises(InvalidArgument, match=re.escape("top_k: must be an integer in [1, 5], got 6")):
        c.search(ok, 6)
    with pytest.raises(InvalidArgument, match=re.escape("candidates: must be an integer in [5, 50], got 51")):
        c.search(ok, 5, candidates=51)
    assert [h.id for h in c.search(ok, 5)] == ["a"]
    manager.close()


def test_a_full_indexing_backlog_refuses_upserts_with_a_retry_delay(tmp_path: Path, monkeypatch) -> None:
    """While the indexer is stuck, acknowledged documents pile up to max_indexing_backlog; past it an
    upsert is refused whole (nothing stored) with a retry delay, and accepted again once it drains."""
    from mvr.server import indexer as indexer_module

    release = threading.Event()
    real_insert = indexer_module.Indexer._insert

    def stuck_insert(self, batch):
        release.wait(60)
        real_insert(self, batch)

    monkeypatch.setattr(indexer_module.Indexer, "_insert", stuck_insert)
    manager = CollectionManager(tmp_path, save_interval_s=3600, limits=Limits(max_indexing_backlog=5))
    manager.create("b", model=None, dim=DIM)
    c = manager.get("b")
    docs = list(clustered_corpus(10, seed=51).items())
    c.upsert([DocumentInput(i, vectors=v) for i, v in docs[:3]])
    with pytest.raises(ResourceExhausted, match=r"3 acknowledged documents .* limit of 5") as raised:
        c.upsert([DocumentInput(i, vectors=v) for i, v in docs[3:6]])
    assert raised.value.retry_after_s == 1.0
    assert c.stats().documents == 3
    prepared = c.prepare_upsert([DocumentInput(*docs[5])])  # admitted at 3 of 5
    c.upsert([DocumentInput(i, vectors=v) for i, v in docs[3:5]])  # 5: at the limit
    with pytest.raises(ResourceExhausted):  # committed later, as a batch of its own, it is refused
        c.commit_upsert(prepared)
    # ... but a cluster's commit of a share prepared while there was room is not (the other shards'
    # shares of its batch may be stored already)
    assert [r.id for r in c.commit_upsert(prepared, admitted=True)] == [docs[5][0]]
    assert c.stats().documents == 6
    release.set()
    c.flush(timeout_s=60)
    c.upsert([DocumentInput(i, vectors=v) for i, v in docs[5:]])
    c.flush(timeout_s=60)
    assert c.stats().documents == 10
    manager.close()


def test_documents_not_coded_yet_are_found_by_the_graph(manager: CollectionManager, monkeypatch) -> None:
    """In a coded collection, documents waiting for codes (a bulk load waiting for a retrained codec)
    are reachable through the graph only: its budget grows with their share, and each is found by
    its own vectors."""
    from mvr.server import indexer as indexer_module

    c = build_coded(manager, clustered_corpus(300, seed=61))
    monkeypatch.setattr(indexer_module.Indexer, "_code", lambda *args, **kwargs: None)  # codes stop here
    rng = np.random.default_rng(62)  # unclustered: each document's own vectors are its only close match
    items = [(f"new{i}", unit(rng, int(rng.integers(3, 30)))) for i in range(3000)]
    for start in range(0, len(items), 50):
        c.upsert([DocumentInput(i, vectors=v) for i, v in items[start : start + 50]])
    c.flush(timeout_s=120)
    assert c.stats().coded == 300 and c.stats().documents == 3300
    missed = sum(c.search(vectors, 1)[0].id != doc_id for doc_id, vectors in items)
    # the first stage's own error remains (FDE + HNSW: 1 in 6,000 at 6,000 uncoded documents); with
    # the graph's quarter share alone, 131 in 6,000 missed
    assert missed <= 3, f"{missed} of {len(items)} uncoded documents missed their own top-1"
