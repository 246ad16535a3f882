"""The background work of one collection, on one thread, so that writes are acknowledged at the speed
of the durable store and searches never wait for it.

Owns, in order of priority:

1. **Pending batches** (acknowledged, not yet in the graph): insert their FDEs into HNSW and, once the
   collection has a codec, code their tokens (codes.bin + catalog, then the token index).
2. **Training**: once the collection holds ``train_after_tokens`` tokens (and nothing is pending), a
   sample of its stored tokens trains the codec (:func:`mvr.server.codec.train`), committed to the
   catalog; then every document written before it is coded (the *backfill*), in label order.
3. **Retraining** as the collection grows: once it holds ``RETRAIN_GROWTH`` times the tokens it held
   when its codec was trained, a new codec (with :func:`mvr.server.codec.default_centroids` of the
   token count, unless the collection fixed it) is trained on a sample of the stored tokens and
   every coded document is re-coded into a new code file (*the rewrite*), a chunk at a
   time, yielding to pending batches (which are coded with the live codec meanwhile and re-coded
   before the end). Searches and writes go on against the live codec and file; the switch is one
   SQLite commit under the write lock (:meth:`mvr.server.store.Store.commit_rewrite`), then the token
   index is rebuilt for the new codec. Documents whose vectors were dropped are re-coded from their
   decoded codes. A retraining that falls due before the backfill is done goes first, and the
   documents not coded yet wait for the new codec: a bulk load outgrows the first codec (trained on
   its first ~1,000 documents) long before the backfill has coded the rest, and coding them with a
   codec about to be replaced doubled the coding work of the load.
   **Or on drift**, before that growth: when the documents written since the training sit measurably
   farther from their centroids than documents held out of the training did (:class:`DriftMeter`:
   the decayed mean squared residual norm of newly coded tokens against the codec's ``distortion``),
   the centroids no longer cover what the collection holds — new topics, a changed domain — and the
   same retraining runs.
4. **Housekeeping** when idle: save the graph, compact the files when dead bytes dominate.

Codes are appended in ascending label order (what the token index requires); a search sees a document
first through the pending scan, then the graph, then also the token index, never through none.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
from mvr.server import codec as codec_module
from mvr.server.search import PendingBatch
from mvr.server.store import CodeRewrite, DriftState, Record, Store, token_offsets
from mvr.server.tokens import TokenIndex

if TYPE_CHECKING:
    from mvr.server.collection import Collection

log = logging.getLogger("mvr.indexer")

INDEX_CHUNK = 128  # documents per hnswlib add_items call: bounds how long a delete waits
CODE_CHUNK = 256  # documents per code append during the backfill
COMPACT_MIN_DEAD_BYTES = 16 << 20
TRAIN_SAMPLE_PER_CENTROID = 32  # bench/codec.py: more buys no recall, and k-means time is linear in it
# k-means rounds: each is one nearest-centroid pass over the training sample, as coding is one pass over
# the collection's tokens (the build's dominant costs). More rounds place the centroids better
# (bench/codec.py --iterations 3 8 --seeds 0 1 2 3, 10k topic documents, 4,096 centroids: the centroid
# stage keeps 0.967 of the true top-10 after 3 rounds, 0.964–0.9695 by draw, 0.971 after 8, 0.9685–0.972;
# at 100k, 8,192 centroids, bench/profile_search.py --train-rounds: recall@10 0.9485 → 0.953) but at 10k
# 8 rounds take the build from 38–41 s to 54–55 s. So the rounds are budgeted against the coding: as many
# as pass over TRAIN_ROUNDS_BUDGET of the collection's tokens, within [MIN, MAX]. At 10k (1.15M tokens,
# a 131k sample) that is 3; at 100k (8–11.5M tokens, a 262k sample) 8: build 416.6 → 428.3 s, one
# build after the other (BENCHMARKS.md).
MIN_TRAIN_ROUNDS = 3
MAX_TRAIN_ROUNDS = 8
TRAIN_ROUNDS_BUDGET = 1 / 3
TRAIN_SAMPLE_SPREAD = 16
# Which draw a training makes (its sample and the k-means' first centroids), a function of this and of
# the collection's size only, so that a build is reproducible; bench/profile_search.py --train-seed
# varies it to measure how much one draw moves recall.
TRAIN_SEED = 0
# Retrain once the collection holds this many times the tokens it held at the last training: the
# first codec sees ~1,100 documents, which do not cover a growing collection's topics
# (bench/retrain.py, 100k documents, 2 probes and 1,000 kept: recall@10 0.893 with a codec trained
# on the first 1,100 documents, 0.922 with one trained on all of them, 0.955 with 8,192 centroids at
# the scaled defaults). Each retraining re-codes everything, so the total re-coding stays within 4/3
# of the collection's tokens.
RETRAIN_GROWTH = 4
# Retrain on drift: once the tokens of documents written since the training number at least
# max(DRIFT_WINDOW_TOKENS, trained tokens / DRIFT_MIN_SHARE) (enough evidence, and the re-coding it
# costs stays in proportion to what was written) and their squared residual norm, a mean decayed over
# about DRIFT_WINDOW_TOKENS tokens, exceeds DRIFT_RATIO times that of the documents held out of the
# training. bench/drift.py (6,000 topic documents, then 3,000 more): more documents of the same corpus
# measure 0.98, documents of another corpus (new topics) 2.6; their queries' recall@10 is 0.785 with
# the codec that never saw them and 0.9715 once the drift has retrained it.
DRIFT_RATIO = 1.3
DRIFT_WINDOW_TOKENS = 1 << 16
DRIFT_MIN_SHARE = 4
# One sampled document in DRIFT_HOLD_OUT is kept out of the k-means and measures the codec's
# distortion (new documents are not in the sample either; the sample's own distortion is lower, the
# centroids fitted to it)
DRIFT_HOLD_OUT = 8


def train_rounds(collection_tokens: int, sample_tokens: int) -> int:
    """k-means rounds for a training on ``sample_tokens`` when the collection holds
    ``collection_tokens``: those whose passes over the sample add up to TRAIN_ROUNDS_BUDGET of the
    collection's tokens (what coding it costs), within [MIN_TRAIN_ROUNDS, MAX_TRAIN_ROUNDS]."""
    affordable = int(TRAIN_ROUNDS_BUDGET * collection_tokens // max(sample_tokens, 1))
    return min(MAX_TRAIN_ROUNDS, max(MIN_TRAIN_ROUNDS, affordable))


class DriftMeter:
    """How far newly written documents' tokens lie from the live codec's centroids: the mean of their
    squared residual norms over the tokens seen since the codec was trained, decayed over about
    ``window`` tokens (a recent change of content shows however long the collection has lived).

    It counts every document written after the codec's training sample was drawn, whichever path
    codes it (as it is indexed, or by the backfill, which codes what arrived while a training ran or
    before a restart's first idle moment). The measure itself is the store's
    (:class:`mvr.server.store.DriftState`, committed with the codes it counts, reset when a new codec
    is), so a restart, clean or not, goes on from it; the meter computes the next state
    (:meth:`after`) and reads the ratio."""

    def __init__(self, window: int, store: Store) -> None:
        self.window = window
        self._store = store

    @property
    def tokens(self) -> int:
        """Tokens observed since the live codec's training."""
        return self._store.drift.tokens

    def after(self, squared_sum: float, n_tokens: int) -> DriftState:
        """The state once ``n_tokens`` more tokens, of squared residual norms summing to
        ``squared_sum``, are observed (for :meth:`mvr.server.store.Store.add_codes` to commit)."""
        state = self._store.drift
        if n_tokens <= 0:
            return state
        keep = math.exp(-n_tokens / self.window)
        return replace(
            state,
            weighted_sum=state.weighted_sum * keep + squared_sum,
            weight=state.weight * keep + n_tokens,
            tokens=state.tokens + n_tokens,
        )

    def ratio(self, codec: codec_module.Codec | None) -> float:
        """The decayed mean squared residual norm over ``codec``'s distortion (0 when either is unknown)."""
        state = self._store.drift
        if codec is None or not codec.distortion or not state.weight:
            return 0.0
        return state.weighted_sum / state.weight / codec.distortion


class Indexer:
    """The indexer thread of ``collection``; see the module docstring."""

    def __init__(self, collection: Collection, save_interval_s: float) -> None:
        self._c = collection
        self._save_interval_s = save_interval_s
        self._backfill_due = collection.store.codec is not None
        self._rewrite: CodeRewrite | None = None  # a retrained codec's code file being written
        self.drift = DriftMeter(DRIFT_WINDOW_TOKENS, collection.store)
        self._thread = threading.Thread(
            target=self._loop, name=f"indexer-{collection.config.name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout=timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()

    # ------------------------------------------------------------------------------ loop

    def _loop(self) -> None:
        c = self._c
        while True:
            with c.pending_changed:
                while not c.pending and not c.closed and not self._idle_work_due():
                    c.pending_changed.wait(timeout=1.0)
                if c.closed:
                    return
                batch = c.pending[0] if c.pending else None
            try:
                if batch is not None:
                    self._insert(batch)
                elif self._training_due() or self._retraining_due():
                    self._train()
                elif self._rewrite is not None:
                    self._continue_rewrite()
                elif self._backfill_due:
                    self._backfill()
                elif self._relist_due():
                    c.tokens.relist()
                    c.notify_progress()
                elif c.save_due(self._save_interval_s):
                    c.save_index()
                    c.maybe_compact()  # idle: a good moment to reclaim replaced/deleted vectors
            except Exception:
                log.exception("indexer failed; retrying in 1 s", extra={"collection": c.config.name})
                time.sleep(1.0)

    def _idle_work_due(self) -> bool:
        return (
            self._training_due()
            or self._retraining_due()
            or self._backfill_due
            or self._rewrite is not None
            or self._relist_due()
            or self._c.save_due(self._save_interval_s)
        )

    def busy(self) -> bool:
        """Whether acknowledged documents are still waiting for the graph, the codec or their codes, or
        a retraining the collection's growth or drift calls for is not done yet."""
        return (
            bool(self._c.pending)
            or self._training_due()
            or self._retraining_due()
            or self._backfill_due
            or self._rewrite is not None
            or self._relist_due()
        )

    def recoded(self) -> int:
        """Documents re-coded so far by the rewrite in progress (0 when none runs)."""
        rewrite = self._rewrite
        return 0 if rewrite is None else len(rewrite.offsets)

    def _relist_due(self) -> bool:
        """Whether coded documents wait outside the inverted lists."""
        tokens = self._c.tokens
        return tokens is not None and tokens.tail() > 0

    # ------------------------------------------------------------------------------ graph + codes

    def _insert(self, batch: PendingBatch) -> None:
        c = self._c
        for start in range(0, len(batch.labels), INDEX_CHUNK):
            if c.closed:
                return  # shutting down: the rest is replayed from the store on the next open
            labels = batch.labels[start : start + INDEX_CHUNK]
            with c.index_mutex:
                live = np.array([label in c.store.by_label for label in labels.tolist()], bool)
                if live.any():
                    c.index.add(labels[live], batch.fdes[start : start + INDEX_CHUNK][live], c.index_threads)
                    c.dirty = True
                    # a version replaced or deleted while it was being added
                    gone = [int(x) for x in labels[live] if int(x) not in c.store.by_label]
                    if gone:
                        c.index.mark_deleted(gone)
            if c.tokens is not None and not self._backfill_due:
                self._code([c.store.by_label[x] for x in labels.tolist() if x in c.store.by_label])
        with c.pending_changed:
            c.pending = [b for b in c.pending if b is not batch]
            c.pending_changed.notify_all()

    def _code(self, records: Sequence[Record]) -> None:
        """Codes records (ascending labels) that still have vectors and no codes; the distances to the
        centroids of those written after the codec's training sample feed the drift measure."""
        c = self._c
        todo = [r for r in records if r.has_vectors and not r.coded]
        if not todo or c.tokens is None:
            return
        codec = c.store.codec
        blocks = self._encode(codec, todo)
        drift = None  # the stored measure is left as it is: no row rewritten when no token is new to it
        first_new = c.store.drift.first_new_label
        new = [block for r, block in zip(todo, blocks, strict=True) if r.label >= first_new]
        if codec.distortion is not None and new:
            drift = self.drift.after(*codec_module.squared_norms_of_blocks(codec, new))
        with c.write_lock:  # the catalog swap must not race an upsert replacing the same id
            if c.closed:
                return
            coded = c.store.add_codes(todo, blocks, drift)
            c.tokens.append(coded, c.store.codes_mapping)

    # ------------------------------------------------------------------------------ training

    def _training_due(self) -> bool:
        c = self._c
        storage = c.config.tokens
        return (
            storage.coded
            and c.store.codec is None
            and not c.pending
            and c.store.live_tokens >= storage.train_after_tokens
        )

    def _retraining_due(self) -> bool:
        c, store = self._c, self._c.store
        return (
            store.codec is not None
            and self._rewrite is None
            and not c.pending
            and (self._grown() or self._drifted())
        )

    def _trained_at(self) -> int:
        return self._c.store.codec_trained_tokens or self._c.config.tokens.train_after_tokens

    def _grown(self) -> bool:
        return self._c.store.live_tokens >= RETRAIN_GROWTH * self._trained_at()

    def _drifted(self) -> bool:
        evidence = max(DRIFT_WINDOW_TOKENS, self._trained_at() // DRIFT_MIN_SHARE)
        return self.drift.tokens >= evidence and self.drift.ratio(self._c.store.codec) >= DRIFT_RATIO

    def _train(self) -> None:
        """Trains a codec on a sample of the stored tokens: the collection's first (committed at once,
        then the backfill codes everything), or a successor (then the rewrite re-codes everything)."""
        c = self._c
        storage = c.config.tokens
        n_tokens = c.store.live_tokens
        n_centroids = storage.centroids or codec_module.default_centroids(n_tokens, storage.residual_bits)
        wanted = max(TRAIN_SAMPLE_PER_CENTROID * n_centroids, 1 << 16)
        first_new_label = c.store.next_label  # documents written from here on are new to the codec
        sample, held_out = self._sample(wanted * DRIFT_HOLD_OUT // (DRIFT_HOLD_OUT - 1))
        n_centroids = min(n_centroids, len(sample))
        reason = "first" if c.store.codec is None else "growth" if self._grown() else "drift"
        drift = self.drift.ratio(c.store.codec)
        rounds = train_rounds(n_tokens, len(sample))
        started = time.perf_counter()
        trained = codec_module.train(
            sample,
            n_centroids,
            storage.residual_bits,
            iterations=rounds,
            threads=c.fde.threads,
            held_out=held_out,
            seed=TRAIN_SEED,
        )
        retrained = c.store.codec is not None
        if retrained:
            if c.closed:
                return  # shut down while it trained: the next open trains again
            self._rewrite = c.store.begin_rewrite(trained, n_tokens, first_new_label)
        else:
            with c.write_lock:
                if c.closed:
                    return
                # writes went on while it trained: count from here
                c.store.set_codec(trained, n_tokens, first_new_label)
                c.tokens = TokenIndex(trained)
                self._backfill_due = True
        log.info(
            "codec retrained; rewriting the codes" if retrained else "codec trained",
            extra={
                "collection": c.config.name,
                "reason": reason,
                "drift_ratio": round(drift, 3),
                "centroids": n_centroids,
                "bits": storage.residual_bits,
                "sample_tokens": len(sample),
                "kmeans_rounds": rounds,
                "seconds": round(time.perf_counter() - started, 2),
            },
        )

    def _sample(self, n_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """About ``n_tokens`` stored token vectors, drawn uniformly from the tokens of up to
        ``TRAIN_SAMPLE_SPREAD`` times as many documents as they fill: whole documents alone would cover
        too few topics, so the centroids would miss the rest (k-means places centroids only where the
        sample has tokens). Returned as (training tokens, held-out tokens): those of one sampled
        document in ``DRIFT_HOLD_OUT`` are held out, whole documents, as new documents are (tokens held
        out of the sampled documents themselves share their topics, and measured closer to the
        centroids than new documents of the same corpus did)."""
        records = list(self._c.store.records.values())
        rng = np.random.default_rng(len(records) + (TRAIN_SEED << 32))
        order = rng.permutation(len(records))
        counts = np.fromiter((records[i].n_tokens for i in order), np.int64, len(order))
        n_docs = int(np.searchsorted(np.cumsum(counts), TRAIN_SAMPLE_SPREAD * n_tokens)) + 1
        keep = min(1.0, n_tokens / max(int(counts[:n_docs].sum()), 1))
        parts, held_parts = [], []
        for start in range(0, n_docs, 1024):
            chunk = [records[i] for i in order[start : min(start + 1024, n_docs)]]
            tokens = self._c.searcher.token_matrix(chunk, vectors_when_present=True)
            position = np.repeat(np.arange(start, start + len(chunk)), [r.n_tokens for r in chunk])
            drawn = rng.random(len(tokens)) < keep
            held = position % DRIFT_HOLD_OUT == DRIFT_HOLD_OUT - 1
            parts.append(tokens[drawn & ~held])
            held_parts.append(tokens[drawn & held])
        return np.concatenate(parts), np.concatenate(held_parts)

    def _backfill(self) -> None:
        """Codes the documents written before the codec, in label order, a chunk at a time; returns
        early when new batches are pending (their graph insertion must not wait behind it)."""
        c = self._c
        uncoded = sorted(
            (r for r in c.store.records.values() if r.has_vectors and not r.coded), key=lambda r: r.label
        )
        for start in range(0, len(uncoded), CODE_CHUNK):
            if c.closed or c.pending:
                return
            self._code(
                [
                    c.store.by_label[r.label]
                    for r in uncoded[start : start + CODE_CHUNK]
                    if r.label in c.store.by_label
                ]
            )
        self._backfill_due = False
        c.notify_progress()

    # ------------------------------------------------------------------------------ rewrite

    def _continue_rewrite(self) -> None:
        """Re-codes the coded documents not in the rewrite yet, in label order, a chunk at a time;
        returns early when batches are pending. Once none is left, commits under the write lock (after
        re-coding what was coded with the live codec since the last look) and swaps in a token index
        for the new codec."""
        c, rewrite = self._c, self._rewrite
        assert rewrite is not None
        try:
            todo = self._not_rewritten()
            for start in range(0, len(todo), CODE_CHUNK):
                if c.closed:
                    self._abandon_rewrite()
                    return
                if c.pending:
                    return
                self._recode(todo[start : start + CODE_CHUNK])
            with c.write_lock:
                if c.closed:
                    self._abandon_rewrite()
                    return
                self._recode(self._not_rewritten())
                records = c.store.commit_rewrite(rewrite)
                tokens = TokenIndex(rewrite.codec)
                tokens.rebuild(records, c.store.codes_mapping)
                c.tokens = tokens
        except BaseException:
            if rewrite.committed:
                self._stop_collection()  # durable but not applied in memory: reopening completes it
            self._abandon_rewrite()  # the next retraining starts over from a fresh sample
            raise
        self._rewrite = None
        self._backfill_due = True  # documents acknowledged meanwhile and not coded yet
        log.info(
            "codes rewritten",
            extra={
                "collection": c.config.name,
                "centroids": rewrite.codec.n_centroids,
                "documents": len(records),
            },
        )
        c.notify_progress()

    def _not_rewritten(self) -> list[Record]:
        rewrite = self._rewrite
        assert rewrite is not None
        pending = (r for r in self._c.store.records.values() if r.coded and r.label not in rewrite.offsets)
        return sorted(pending, key=lambda r: r.label)

    def _recode(self, records: Sequence[Record]) -> None:
        """Appends the codes of ``records`` under the new codec to the rewrite: from their vectors where
        they still have them, else from their codes decoded with the live codec."""
        if not records:
            return
        rewrite = self._rewrite
        assert rewrite is not None
        rewrite.append(records, self._encode(rewrite.codec, records))

    def _encode(self, codec: codec_module.Codec, records: Sequence[Record]) -> list[bytes]:
        """The code blocks of ``records`` under ``codec``, from the best precision still stored."""
        tokens = self._c.searcher.token_matrix(records, vectors_when_present=True)
        return codec_module.encode_blocks(codec, tokens, token_offsets(records), self._c.fde.threads)

    def _stop_collection(self) -> None:
        """Fail-stop after a rewrite committed in the catalog but not applied in memory (the rename
        failed): appending more codes to the old file would corrupt what reopening recovers, so the
        collection refuses everything until the server reopens it."""
        c = self._c
        log.critical(
            "code rewrite committed but not applied; collection stopped until reopened",
            extra={"collection": c.config.name},
        )
        with c.pending_changed:
            c.stop_reason = "a code rewrite failed after its commit; restart the server to complete it"
            c.closed = True
            c.pending_changed.notify_all()

    def _abandon_rewrite(self) -> None:
        if self._rewrite is not None:
            self._rewrite.discard()
            self._rewrite = None
