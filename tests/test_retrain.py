"""Retraining the codec as a collection grows: the rewrite of every code under a new codec runs in the
background, searches and writes go on, the switch is one commit, and a crash on either side of it
loses nothing."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from mvr.server import codec as codec_module
from mvr.server import indexer
from mvr.server import store as store_module
from mvr.server.errors import FailedPrecondition
from mvr.server.manager import CollectionManager
from mvr.server.store import CODES, REWRITE_SUFFIX
from mvr.server.values import DocumentInput

from tests.test_collection import DIM, chamfer, clustered_corpus, exact_top, paraphrases

SMALL, LARGE = 16, 64


@pytest.fixture(autouse=True)
def centroids_grow_with_the_collection(monkeypatch) -> None:
    """The server's rule grows centroids over millions of tokens; here: 16 below 3,000 tokens, 64 from
    there, so that a retraining (due at 4× the tokens of the last training) also changes their number."""
    monkeypatch.setattr(codec_module, "default_centroids", lambda n, bits: SMALL if n < 3000 else LARGE)


def catalog_column(directory: Path, sql: str) -> list:
    """The first column of ``sql``'s rows in the collection's catalog."""
    import sqlite3

    db = sqlite3.connect(directory / "catalog.sqlite")
    try:
        return [row[0] for row in db.execute(sql)]
    finally:
        db.close()


def codec_versions(directory: Path) -> list[int]:
    """The codec versions the catalog keeps: only the live one (a superseded codec is deleted)."""
    return catalog_column(directory, "SELECT version FROM codecs ORDER BY version")


def drift_versions(directory: Path) -> list[int]:
    """The codec versions whose drift measure the catalog keeps."""
    return catalog_column(directory, "SELECT codec_version FROM drift ORDER BY codec_version")


def upsert_in_batches(collection, docs: dict[str, np.ndarray], batch: int = 25) -> None:
    items = list(docs.items())
    for start in range(0, len(items), batch):
        collection.upsert([DocumentInput(i, vectors=v) for i, v in items[start : start + batch]])


def check_scores_are_exact_over_decoded_tokens(collection, query: np.ndarray, n: int) -> list:
    hits = collection.search(query, 10, candidates=n)
    for hit in hits:
        decoded = collection.searcher.token_matrix([collection.store.records[hit.id]])
        assert hit.score == pytest.approx(chamfer(query, decoded), abs=1e-4)
    return hits


def grown_from_first_codec(tmp_path: Path, docs: dict[str, np.ndarray]):
    """A collection "grow" holding the first 60 of ``docs`` (~1,500 tokens), indexed and coded with its
    first codec (SMALL centroids); the rest of ``docs`` is for the test to add."""
    manager = CollectionManager(tmp_path, save_interval_s=3600)
    manager.create("grow", model=None, dim=DIM, tokens={"train_after_tokens": 1024})
    c = manager.get("grow")
    upsert_in_batches(c, dict(list(docs.items())[:60]))
    c.flush(timeout_s=120)
    return manager, c


def test_growing_collection_retrains_and_rewrites_every_code(tmp_path: Path) -> None:
    docs = clustered_corpus(300, seed=21)
    manager, c = grown_from_first_codec(tmp_path, docs)
    assert (c.stats().centroids, c.stats().coded) == (SMALL, 60)
    queries = paraphrases(docs, 12, seed=22)
    searching, failures = True, []

    def search_while_growing() -> None:  # searches across the rewrite and its switch
        while searching:
            try:
                for query in queries[:3]:
                    assert len(c.search(query, 10)) == 10
            except Exception as error:  # pragma: no cover - reported below
                failures.append(error)
                return

    reader = threading.Thread(target=search_while_growing)
    reader.start()
    upsert_in_batches(c, dict(list(docs.items())[60:]))
    c.flush(timeout_s=120)
    searching = False
    reader.join(60)
    assert not failures
    stats = c.stats()
    assert (stats.centroids, stats.coded) == (LARGE, 300)
    assert codec_versions(c.directory) == [2] and (stats.codec_generation, stats.recoded) == (2, 0)
    token_bytes = c.store.codec.token_bytes
    assert {r.codec for r in c.store.records.values()} == {c.store.codec}
    assert c.store.codes_end == stats.tokens * token_bytes  # one block per live document, nothing else
    assert c.tokens.codec is c.store.codec and c.tokens.snapshot.n == 300
    assert not (c.directory / (CODES + REWRITE_SUFFIX)).exists()
    for query in queries[:4]:
        check_scores_are_exact_over_decoded_tokens(c, query, 300)
    found = [len({h.id for h in c.search(q, 10)} & set(exact_top(q, docs, 10))) / 10 for q in queries]
    assert np.mean(found) >= 0.8
    before = [[(h.id, h.score) for h in c.search(q, 10)] for q in queries]
    manager.close()
    reopened = CollectionManager(tmp_path, save_interval_s=3600)
    c = reopened.get("grow")
    c.flush(timeout_s=60)  # the growth since the last training is remembered: no retraining now
    assert (c.stats().centroids, c.stats().coded, codec_versions(c.directory)) == (LARGE, 300, [2])
    assert [[(h.id, h.score) for h in c.search(q, 10)] for q in queries] == before
    reopened.close()


def test_a_load_that_outgrows_the_first_codec_codes_each_document_once(tmp_path: Path, monkeypatch) -> None:
    """The first codec is trained on the first documents; the rest of the load arrives while it
    trains. A retraining is then due before the backfill has run: it goes first, and every document
    is coded once, with the retrained codec (none with the first, which would be re-coded)."""
    docs = clustered_corpus(300, seed=31)
    first_training_started, rest_loaded = threading.Event(), threading.Event()
    real_train, real_encode_blocks = codec_module.train, codec_module.encode_blocks
    trained: list[codec_module.Codec] = []
    coded_with: list[tuple[codec_module.Codec, int]] = []

    def train(*args, **kwargs):
        if not trained:  # the first training waits until the rest of the load is acknowledged
            first_training_started.set()
            assert rest_loaded.wait(60)
        trained.append(real_train(*args, **kwargs))
        return trained[-1]

    def encode_blocks(codec, tokens, offsets, threads=1):
        coded_with.append((codec, len(offsets) - 1))
        return real_encode_blocks(codec, tokens, offsets, threads)

    monkeypatch.setattr(codec_module, "train", train)
    monkeypatch.setattr(codec_module, "encode_blocks", encode_blocks)
    manager = CollectionManager(tmp_path, save_interval_s=3600)
    manager.create("grow", model=None, dim=DIM, tokens={"train_after_tokens": 1024})
    c = manager.get("grow")
    upsert_in_batches(c, dict(list(docs.items())[:60]))
    assert first_training_started.wait(60)
    upsert_in_batches(c, dict(list(docs.items())[60:]))
    rest_loaded.set()
    c.flush(timeout_s=120)
    assert len(trained) == 2
    assert [n for codec, n in coded_with if codec is trained[0]] == []
    assert sum(n for codec, n in coded_with if codec is trained[1]) == 300
    stats = c.stats()
    assert (stats.centroids, stats.coded, stats.codec_generation) == (LARGE, 300, 2)
    assert codec_versions(c.directory) == [2]
    query = paraphrases(docs, 1, seed=32)[0]
    check_scores_are_exact_over_decoded_tokens(c, query, 300)
    manager.close()


def test_documents_without_vectors_are_recoded_from_their_codes(tmp_path: Path) -> None:
    docs = clustered_corpus(320, seed=23)
    manager, c = grown_from_first_codec(tmp_path, docs)
    c.compact()  # the first 60 keep only their 16-centroid codes
    assert c.store.bytes_on_disk()["vectors"] == 0 and c.stats().centroids == SMALL
    upsert_in_batches(c, dict(list(docs.items())[60:]))
    c.flush(timeout_s=120)
    assert (c.stats().centroids, c.stats().coded) == (LARGE, 320)
    for doc_id in ("d0003", "d0150"):  # re-coded from decoded codes, and from stored vectors
        decoded = c.get(doc_id).vectors
        assert decoded.shape == docs[doc_id].shape
        assert (decoded * docs[doc_id]).sum(axis=1).min() > 0.9
    c.compact()
    assert c.store.bytes_on_disk()["vectors"] == 0
    check_scores_are_exact_over_decoded_tokens(c, paraphrases(docs, 1, seed=24)[0], 320)
    manager.close()


def build_small(tmp_path: Path, n_docs: int = 120):
    manager = CollectionManager(tmp_path, save_interval_s=3600)
    manager.create("grow", model=None, dim=DIM, tokens={"train_after_tokens": 1024, "centroids": SMALL})
    c = manager.get("grow")
    upsert_in_batches(c, clustered_corpus(n_docs, seed=25))
    c.flush(timeout_s=120)
    return manager, c


def rewrite_everything(c, n_centroids: int):
    """What the indexer does, in the test's thread: a new codec, every coded document re-coded."""
    sample = c.searcher.token_matrix(list(c.store.records.values()))
    trained = codec_module.train(sample, n_centroids, 8, iterations=3)
    rewrite = c.store.begin_rewrite(trained, c.store.live_tokens, c.store.next_label)
    records = sorted(c.store.records.values(), key=lambda r: r.label)
    tokens = c.searcher.token_matrix(records)
    offsets = store_module.token_offsets(records)
    rewrite.append(records, codec_module.encode_blocks(rewrite.codec, tokens, offsets))
    return rewrite


def fail_rewrite_rename(monkeypatch, message: str):
    """Makes the store's rename of a rewritten code file fail (other renames go through); returns the
    real ``os.replace``, to put back."""
    real_replace = store_module.os.replace

    def replace(source, target) -> None:
        if str(source).endswith(REWRITE_SUFFIX):
            raise OSError(message)
        real_replace(source, target)

    monkeypatch.setattr(store_module.os, "replace", replace)
    return real_replace


def test_crash_before_the_commit_keeps_the_old_codes(tmp_path: Path) -> None:
    manager, c = build_small(tmp_path)
    query = paraphrases(clustered_corpus(120, seed=25), 1, seed=26)[0]
    before = [(h.id, h.score) for h in c.search(query, 10)]
    rewrite = rewrite_everything(c, LARGE)
    rewrite._handle.flush()  # a crash after some blocks reached the file
    assert rewrite.path.stat().st_size > 0
    manager.close()
    reopened = CollectionManager(tmp_path, save_interval_s=3600)
    c = reopened.get("grow")
    assert not rewrite.path.exists()  # the partial file is deleted on open
    assert c.stats().centroids == SMALL and codec_versions(c.directory) == [c.stats().codec_generation] == [1]
    assert [(h.id, h.score) for h in c.search(query, 10)] == before
    reopened.close()


def test_crash_between_the_commit_and_the_rename_completes_the_switch(tmp_path: Path, monkeypatch) -> None:
    manager, c = build_small(tmp_path)
    query = paraphrases(clustered_corpus(120, seed=25), 1, seed=27)[0]
    rewrite = rewrite_everything(c, LARGE)
    real_replace = fail_rewrite_rename(monkeypatch, "simulated crash after the commit")
    with c.write_lock, pytest.raises(OSError, match="simulated"):
        c.store.commit_rewrite(rewrite)
    monkeypatch.setattr(store_module.os, "replace", real_replace)
    c.close(save=False)  # the process is gone: nothing more is written through this instance
    reopened = CollectionManager(tmp_path, save_interval_s=3600)
    c = reopened.get("grow")
    assert not rewrite.path.exists()
    assert c.stats().centroids == LARGE and c.stats().coded == 120 and codec_versions(c.directory) == [2]
    check_scores_are_exact_over_decoded_tokens(c, query, 120)
    reopened.close()
    manager.close()


def test_a_rewrite_missing_a_coded_document_is_refused(tmp_path: Path) -> None:
    manager, c = build_small(tmp_path, n_docs=80)
    rewrite = rewrite_everything(c, LARGE)
    first = min(rewrite.offsets)
    del rewrite.offsets[first]
    with c.write_lock, pytest.raises(ValueError, match="lacks 1 coded documents"):
        c.store.commit_rewrite(rewrite)
    assert c.store.codec.n_centroids == SMALL
    rewrite.discard()
    manager.close()


def test_a_failed_rename_after_the_commit_stops_the_collection_and_reopening_completes_it(
    tmp_path: Path, monkeypatch
) -> None:
    """The indexer's own rewrite, with the rename failing after the catalog committed: the collection
    stops (more codes appended to the old file would corrupt what reopening recovers), nothing is lost."""
    docs = clustered_corpus(300, seed=28)
    manager, c = grown_from_first_codec(tmp_path, docs)
    real_replace = fail_rewrite_rename(monkeypatch, "simulated rename failure")
    upsert_in_batches(c, dict(list(docs.items())[60:]))
    with pytest.raises(FailedPrecondition, match="restart the server"):
        c.flush(timeout_s=120)
    with pytest.raises(FailedPrecondition):  # writes refused; searches still read the old codes whole
        c.upsert([DocumentInput("late", vectors=docs["d0001"])])
    assert len(c.search(paraphrases(docs, 1, seed=29)[0], 10)) == 10
    assert (c.directory / (CODES + REWRITE_SUFFIX)).exists()  # kept: the catalog points into it
    monkeypatch.setattr(store_module.os, "replace", real_replace)
    manager.close()
    reopened = CollectionManager(tmp_path, save_interval_s=3600)
    c = reopened.get("grow")
    c.flush(timeout_s=120)
    assert (c.stats().centroids, c.stats().coded, c.stats().codec_generation) == (LARGE, 300, 2)
    for query in paraphrases(docs, 3, seed=30):
        check_scores_are_exact_over_decoded_tokens(c, query, 300)
    reopened.close()


def test_kmeans_rounds_grow_with_the_collection_a_training_codes() -> None:
    """A training's k-means passes over its sample add up to a third of the collection's tokens (what
    coding them costs), within [MIN_TRAIN_ROUNDS, MAX_TRAIN_ROUNDS]: 3 rounds at 10k topic documents,
    where more would lengthen the build by a third, 8 at 100k, where they cost a few %."""
    assert (indexer.MIN_TRAIN_ROUNDS, indexer.MAX_TRAIN_ROUNDS) == (3, 8)
    assert indexer.train_rounds(1_150_000, 131_072) == 3  # 10k documents, 4,096 centroids
    assert indexer.train_rounds(11_500_000, 262_144) == 8  # 100k, 8,192 centroids
    assert indexer.train_rounds(2_000_000, 131_072) == 5  # (2M / 3) / 131,072 = 5.09
    assert indexer.train_rounds(1_500, 1_300) == 3  # a first codec on every token it has
    assert indexer.train_rounds(0, 0) == 3
    rounds = [indexer.train_rounds(n, 131_072) for n in range(0, 4_000_000, 50_000)]
    assert rounds == sorted(rounds) and set(rounds) == set(range(3, 9))


@pytest.mark.parametrize("budget, expected", [(indexer.TRAIN_ROUNDS_BUDGET, 3), (1e6, 8)])
def test_the_indexer_trains_with_the_budgeted_rounds(
    tmp_path: Path, monkeypatch, budget: float, expected: int
) -> None:
    """A first codec on ~1,500 tokens gets the fewest rounds; allowed a budget that covers any, the most."""
    monkeypatch.setattr(indexer, "TRAIN_ROUNDS_BUDGET", budget)
    real_train, rounds = codec_module.train, []

    def recording_train(*args, **kwargs):
        rounds.append(kwargs["iterations"])
        return real_train(*args, **kwargs)

    monkeypatch.setattr(codec_module, "train", recording_train)
    manager, c = grown_from_first_codec(tmp_path, clustered_corpus(60, seed=23))
    assert c.stats().coded == 60 and rounds == [expected]
    manager.close()


def test_closing_during_a_retraining_waits_a_bounded_time_and_abandons_it(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    """Shutdown does not wait for a codec training: close() gives the indexer INDEXER_STOP_S, says
    that it is still busy, and a training that ends after the close starts no rewrite; the live codec
    stays and the next open retrains."""
    from mvr.server import collection as collection_module

    docs = clustered_corpus(300, seed=41)
    manager, c = grown_from_first_codec(tmp_path, docs)
    retraining, release = threading.Event(), threading.Event()
    real_train = codec_module.train

    def blocked_train(*args, **kwargs):
        retraining.set()
        assert release.wait(60)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(codec_module, "train", blocked_train)
    monkeypatch.setattr(collection_module, "INDEXER_STOP_S", 0.2)
    upsert_in_batches(c, dict(list(docs.items())[60:]))
    assert retraining.wait(60)
    with caplog.at_level("WARNING", logger="mvr.collection"):
        manager.close()
    assert any("indexer still busy at close" in r.getMessage() for r in caplog.records)
    release.set()
    c._indexer.join(timeout=60)
    assert not c._indexer.alive()
    assert not (c.directory / (CODES + REWRITE_SUFFIX)).exists()
    assert codec_versions(c.directory) == [1]

    monkeypatch.setattr(codec_module, "train", real_train)
    reopened = CollectionManager(tmp_path, save_interval_s=3600)
    grown = reopened.get("grow")
    grown.flush(timeout_s=120)
    stats = grown.stats()
    assert (stats.documents, stats.centroids, stats.coded, stats.codec_generation) == (300, LARGE, 300, 2)
    reopened.close()


@pytest.mark.parametrize("new_topics", [True, False])
def test_documents_of_new_topics_retrain_the_codec_before_it_grows(
    tmp_path: Path, monkeypatch, caplog, new_topics: bool
) -> None:
    """Documents written after the training that lie far from its centroids (other topics) retrain
    the codec once the drift measure has seen enough of them, long before 4× growth; documents of the
    trained topics do not (their distortion matches that of the documents held out of the training).
    Every document keeps exact scores over its codes either way."""
    from mvr.server import indexer as indexer_module

    monkeypatch.setattr(indexer_module, "DRIFT_WINDOW_TOKENS", 1024)
    # as many centroids as the corpus has topics, tokens near them: what a trained codec looks like
    monkeypatch.setattr(codec_module, "default_centroids", lambda n, bits: 64)
    docs = list(clustered_corpus(300, seed=51, noise=0.15).items())
    manager = CollectionManager(tmp_path, save_interval_s=3600)
    manager.create("drift", model=None, dim=DIM, tokens={"train_after_tokens": 1024})
    c = manager.get("drift")
    c.upsert([DocumentInput(i, vectors=v) for i, v in docs[:200]])  # one batch: trained on all 200
    c.flush(timeout_s=120)
    trained_tokens = c.store.codec_trained_tokens
    assert c.stats().codec_generation == 1 and c._indexer.drift.tokens == 0
    later = dict(docs[200:])
    if new_topics:
        later = clustered_corpus(100, seed=52, noise=0.15)
    later = {f"later-{key}": tokens for key, tokens in later.items()}
    with caplog.at_level("INFO", logger="mvr.indexer"):
        upsert_in_batches(c, later, batch=20)
        c.flush(timeout_s=120)
    assert c.store.live_tokens < indexer_module.RETRAIN_GROWTH * trained_tokens  # no growth retraining
    retrained = [r for r in caplog.records if r.getMessage() == "codec retrained; rewriting the codes"]
    if new_topics:
        assert [r.reason for r in retrained] == ["drift"]
        assert retrained[0].drift_ratio >= indexer_module.DRIFT_RATIO
        assert c.stats().codec_generation == 2
    else:
        assert retrained == [] and c.stats().codec_generation == 1
        assert c._indexer.drift.tokens > 0
        assert 0.8 < c._indexer.drift.ratio(c.store.codec) < indexer_module.DRIFT_RATIO
    query = paraphrases(later, 1, seed=53)[0]
    check_scores_are_exact_over_decoded_tokens(c, query, 100)
    manager.close()


def trained_on_first_topics(tmp_path: Path, monkeypatch):
    """A collection "drift" whose codec (64 centroids, the corpus' topics) was trained on its 200
    documents; the drift measure's window shrunk to 1,024 tokens to fit the tests' sizes."""
    monkeypatch.setattr(indexer, "DRIFT_WINDOW_TOKENS", 1024)
    monkeypatch.setattr(codec_module, "default_centroids", lambda n, bits: 64)
    manager = CollectionManager(tmp_path, save_interval_s=3600)
    manager.create("drift", model=None, dim=DIM, tokens={"train_after_tokens": 1024})
    c = manager.get("drift")
    c.upsert([DocumentInput(i, vectors=v) for i, v in clustered_corpus(200, seed=51, noise=0.15).items()])
    c.flush(timeout_s=120)
    return manager, c


def test_the_drift_measure_survives_a_restart(tmp_path: Path, monkeypatch, caplog) -> None:
    """The drift measure is stored with the codes it counted: documents of new topics written before a
    restart and after it add up to the evidence a retraining needs, although neither part alone does
    (a measure kept in memory started from nothing after the restart and never retrained)."""
    manager, c = trained_on_first_topics(tmp_path, monkeypatch)
    evidence = max(indexer.DRIFT_WINDOW_TOKENS, c.store.codec_trained_tokens // indexer.DRIFT_MIN_SHARE)
    later = iter({f"later-{k}": v for k, v in clustered_corpus(200, seed=52, noise=0.15).items()}.items())
    while c._indexer.drift.tokens < 0.6 * evidence:  # batches of ~250 tokens: stops short of the evidence
        c.upsert([DocumentInput(i, vectors=v) for i, v in (next(later) for _ in range(10))])
        c.flush(timeout_s=120)
    before, ratio = c.store.drift, c._indexer.drift.ratio(c.store.codec)
    assert before.tokens < evidence and ratio >= indexer.DRIFT_RATIO
    assert c.stats().codec_generation == 1
    manager.close()

    reopened = CollectionManager(tmp_path, save_interval_s=3600)
    c = reopened.get("drift")
    c.flush(timeout_s=120)
    assert c.store.drift == before and c._indexer.drift.ratio(c.store.codec) == ratio
    rest, tokens = [], 0
    while before.tokens + tokens < evidence:
        doc_id, vectors = next(later)
        rest.append(DocumentInput(doc_id, vectors=vectors))
        tokens += len(vectors)
    assert tokens < evidence  # this part alone would not retrain
    with caplog.at_level("INFO", logger="mvr.indexer"):
        for start in range(0, len(rest), 10):
            c.upsert(rest[start : start + 10])
        c.flush(timeout_s=120)
    retrained = [r for r in caplog.records if r.getMessage() == "codec retrained; rewriting the codes"]
    assert [r.reason for r in retrained] == ["drift"]
    assert c.stats().codec_generation == 2
    assert c.store.drift.tokens < before.tokens  # the new codec's measure starts over
    after, directory = c.store.drift, c.directory
    reopened.close()
    assert drift_versions(directory) == [2]  # the superseded codec's measure went with it
    again = CollectionManager(tmp_path, save_interval_s=3600)
    assert again.get("drift").store.drift == after
    again.close()


def test_documents_the_backfill_codes_count_toward_the_drift(tmp_path: Path, monkeypatch) -> None:
    """Every document written after the training sample counts toward the drift measure, whichever
    path codes it: after a restart the indexer codes through the backfill until its first idle moment,
    and documents acknowledged before then are coded there, not as they are indexed."""
    manager, c = trained_on_first_topics(tmp_path, monkeypatch)
    assert c.store.drift.tokens == 0  # the training's own documents are not new to it
    manager.close()

    release = threading.Event()
    backfill = indexer.Indexer._backfill

    def backfill_once_released(self) -> None:
        assert release.wait(timeout=60)
        backfill(self)

    monkeypatch.setattr(indexer.Indexer, "_backfill", backfill_once_released)
    reopened = CollectionManager(tmp_path, save_interval_s=3600)
    c = reopened.get("drift")
    later = {f"later-{k}": v for k, v in clustered_corpus(20, seed=52, noise=0.15).items()}  # new topics
    c.upsert([DocumentInput(i, vectors=v) for i, v in later.items()])  # while the backfill waits
    release.set()
    c.flush(timeout_s=120)
    assert c.stats().coded == 220 and c.stats().codec_generation == 1
    assert c.store.drift.tokens == sum(len(v) for v in later.values())
    assert c._indexer.drift.ratio(c.store.codec) >= indexer.DRIFT_RATIO
    reopened.close()


def test_coding_documents_older_than_the_training_sample_leaves_the_drift_row_alone(
    tmp_path: Path, monkeypatch
) -> None:
    """The documents a training was drawn from are not new to it: coding them writes no drift row (the
    training's own row is the only one written), while coding a later document does."""
    written: list[int] = []
    write_drift = store_module.Store._write_drift

    def recording(self, version, drift) -> None:
        written.append(version)
        write_drift(self, version, drift)

    monkeypatch.setattr(store_module.Store, "_write_drift", recording)
    manager, c = trained_on_first_topics(tmp_path, monkeypatch)
    assert c.stats().coded == 200 and written == [1]
    later = clustered_corpus(1, seed=52, noise=0.15)
    c.upsert([DocumentInput(f"later-{k}", vectors=v) for k, v in later.items()])
    c.flush(timeout_s=120)
    assert written == [1, 1] and c.store.drift.tokens == sum(len(v) for v in later.values())
    manager.close()


@pytest.mark.parametrize("seed", [0, 1])
def test_the_codec_is_drawn_from_the_data_and_the_seed(tmp_path: Path, monkeypatch, seed: int) -> None:
    """Two builds of the same documents train the same codec (the sample and the k-means start depend
    on the collection and ``indexer.TRAIN_SEED`` only); another seed draws another codec."""
    docs = clustered_corpus(120, seed=61)

    def trained_centroids(directory: Path) -> np.ndarray:
        manager = CollectionManager(directory, save_interval_s=3600)
        manager.create("c", model=None, dim=DIM, tokens={"train_after_tokens": 1024})
        c = manager.get("c")
        c.upsert([DocumentInput(i, vectors=v) for i, v in docs.items()])
        c.flush(timeout_s=120)
        centroids = c.store.codec.centroids.copy()
        manager.close()
        return centroids

    first = trained_centroids(tmp_path / "a")
    monkeypatch.setattr(indexer, "TRAIN_SEED", seed)
    second = trained_centroids(tmp_path / "b")
    assert np.array_equal(first, second) == (seed == 0)
