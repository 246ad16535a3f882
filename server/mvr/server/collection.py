"""A collection: the write path and the wiring of its stages.

Owns a collection's state in memory and the rules that tie its stages together: the write path
(validate → encode → FDE → durable store → pending batch for the :mod:`mvr.server.indexer`), deletes,
the metadata index, reads, and stats. The search cascade lives in :mod:`mvr.server.search`; training,
coding, graph insertion and compaction in :mod:`mvr.server.indexer`; the registry of collections in
:mod:`mvr.server.manager`.

Consistency rules:

* A write returns only once the store has it durably (see :mod:`mvr.server.store`); from that moment a
  search sees it, through the in-memory *pending* FDEs scanned exactly until the background indexer
  has moved them into HNSW, and through the graph until it is coded too.
* Writes to one collection are serialised; searches never wait for them. Every document version has a
  fresh label; a search resolves candidate labels against the live catalog, so a replaced or deleted
  version is never returned and a document is seen entirely or not at all.
* The HNSW file and the token index are caches: on open, labels in the graph that are no longer live
  are marked deleted, live labels missing from it are re-encoded from the stored tokens and queued for
  insertion, and the token index is rebuilt from the code file.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from mvr.server import engine_metrics, hybrid
from mvr.server import metadata as meta
from mvr.server import snapshot as snapshot_format
from mvr.server.config import CollectionConfig
from mvr.server.encoder import Encoder
from mvr.server.errors import (
    FailedPrecondition,
    InvalidArgument,
    MvrError,
    NotFound,
    ResourceExhausted,
    check_deadline,
)
from mvr.server.fde import FDE, FDE_FILE
from mvr.server.index import INDEX_FILE, SIDECAR_FILE, HnswIndex, IndexParams
from mvr.server.indexer import COMPACT_MIN_DEAD_BYTES, Indexer
from mvr.server.limits import Limits
from mvr.server.metadata_index import LabelSet
from mvr.server.search import PendingBatch, Searcher, SearchParams
from mvr.server.store import CATALOG, CODES, VECTORS, NewDocument, Record, Store, token_offsets
from mvr.server.tokens import TokenIndex
from mvr.server.values import CollectionStats, Document, DocumentInput, Hit, UpsertResult

log = logging.getLogger("mvr.collection")

# Ids travel in resource names, logs and terminals: control characters (C0 and DEL) are refused.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
# The per-request limits (ids, metadata, tokens) come from the server's Limits (limits.py). Token
# limits matter beyond validation: the exact stage scores a tile of (max(tile, longest document) ×
# query tokens) float32 similarities, so they bound one request's memory (8,192 × 1,024 × 4 B = 32 MiB
# at the defaults) whatever it sends; before them, one tile of a 50,000-token query against a
# 100,000-token document was 20 GB (the hardening issue saw a server's RSS grow by ~16 GB). Text is
# cut to the collection's doc_maxlen / query_maxlen by the encoder before it gets here.
_GRAPH = (INDEX_FILE, SIDECAR_FILE)
_SAVED = (CATALOG, *_GRAPH)  # what a snapshot writes to its scratch directory first
SEARCH_MODES = ("semantic", "keyword", "hybrid")
# close() waits this long for the indexer's current step (a chunk of inserts or codes; a codec training
# can take longer, and is then abandoned: the next open trains again)
INDEXER_STOP_S = 30.0
RETRY_BACKLOG_S = 1.0  # the indexer inserts thousands of documents a second (bench/ingest.py)


@dataclass(frozen=True)
class PreparedBatch:
    """A batch of documents validated and encoded, with their FDEs, not stored yet."""

    documents: list[NewDocument]
    fdes: np.ndarray  # float32 (len(documents), fde dim)


class Collection:
    """One open collection. Thread-safe: one writer at a time, any number of concurrent searches."""

    def __init__(
        self,
        directory: Path,
        config: CollectionConfig,
        *,
        encoder: Encoder | None = None,
        query_encode: Callable[[str], np.ndarray] | None = None,
        text_error: MvrError | None = None,
        index_threads: int = 1,
        fde_threads: int = 1,
        save_interval_s: float = 60.0,
        limits: Limits | None = None,
    ) -> None:
        self.directory = directory
        self.config = config
        self.limits = limits or Limits()
        self._encoder = encoder
        self._query_encode = query_encode
        self._text_error = text_error
        self.index_threads = index_threads
        self.store = Store(
            directory,
            config.dim,
            config.vector_dtype,
            keep_vectors=config.tokens.keep_vectors or not config.tokens.coded,
        )
        self.fde = FDE.load(directory / FDE_FILE, threads=fde_threads)
        self._index_params = IndexParams(self.fde.output_dim, config.hnsw.m, config.hnsw.ef_construction)
        self.write_lock = threading.Lock()  # one writer
        self.index_mutex = threading.Lock()  # HNSW membership: indexer inserts vs deletes
        self.pending: list[PendingBatch] = []
        self.pending_changed = threading.Condition()
        self.closed = False
        self._released = False  # files closed (close() done)
        self.stop_reason: str | None = None  # why the indexer stopped the collection, if it did
        self.dirty = False
        self._last_save = time.monotonic()
        self.tokens: TokenIndex | None = None
        if self.store.codec is not None:
            self.tokens = TokenIndex(self.store.codec)
            self.tokens.rebuild(list(self.store.records.values()), self.store.codes_mapping)
        self.searcher = Searcher(
            config, self.store, self.fde, lambda: self.index, lambda: self.pending, lambda: self.tokens
        )
        self.index = self._open_index()
        self._indexer = Indexer(self, save_interval_s)
        self._indexer.start()
        engine_metrics.track_backlog(config.name, self.backlog)
        engine_metrics.track_drift(config.name, lambda: self._indexer.drift.ratio(self.store.codec))

    # ------------------------------------------------------------------------------ open

    def _open_index(self) -> HnswIndex:
        fresh = not self.store.records and not (self.directory / INDEX_FILE).exists()
        index = None if fresh else HnswIndex.load(self.directory, self._index_params)
        if index is None:
            index = HnswIndex(self._index_params, capacity=max(1024, len(self.store.records)))
            self.dirty = True
        live = set(self.store.by_label)
        revived = sorted(live & index.deleted_labels())  # only after a snapshot's restore
        if revived:
            index.revive(revived)
            self.dirty = True
        in_graph = index.labels()
        stale = sorted(in_graph - live)
        if stale:
            index.mark_deleted(stale)
            self.dirty = True
        missing = [self.store.by_label[label] for label in sorted(live - in_graph)]
        for start in range(0, len(missing), 1024):
            chunk = missing[start : start + 1024]
            self.pending.append(
                PendingBatch(np.array([r.label for r in chunk], np.int64), self._document_fdes(chunk))
            )
        if missing:
            log.info(
                "replaying documents into the index",
                extra={"collection": self.config.name, "documents": len(missing)},
            )
        return index

    def _document_fdes(self, records: Sequence[Record]) -> np.ndarray:
        tokens = self.searcher.token_matrix(records, vectors_when_present=True)
        return self.fde.encode_documents(tokens, token_offsets(records))

    # ------------------------------------------------------------------------------ text

    def text_encoder(self) -> Encoder:
        if self._text_error is not None:
            raise self._text_error
        if self._encoder is None:
            raise FailedPrecondition(
                f"collection {self.config.name!r} has no encoder: it takes precomputed vectors only"
            )
        return self._encoder

    def encode_query(self, text: str) -> np.ndarray:
        self.text_encoder()
        assert self._query_encode is not None
        return self._query_encode(text)

    # ------------------------------------------------------------------------------ writes

    def upsert(self, docs: Sequence[DocumentInput], deadline: float | None = None) -> list[UpsertResult]:
        """Stores ``docs`` durably (one atomic batch) and queues them for the indexer. Past ``deadline``
        (``time.monotonic()``) nothing is stored: the check comes before encoding and again before
        the write, never during it."""
        return self.commit_upsert(self.prepare_upsert(docs, deadline), deadline)

    def prepare_upsert(self, docs: Sequence[DocumentInput], deadline: float | None = None) -> PreparedBatch:
        """The first half of :meth:`upsert`: every document validated, texts encoded, FDEs computed;
        nothing stored. A cluster's router prepares every shard's share before committing any."""
        if not docs:
            raise InvalidArgument("documents", "must not be empty")
        check_deadline(deadline, "encoding the documents")
        self._check_backlog(len(docs))  # before the encoding: a refusal should cost nothing
        prepared = self._prepare(docs)
        tokens = np.concatenate([d.vectors for d in prepared])
        offsets = np.concatenate([[0], np.cumsum([len(d.vectors) for d in prepared])]).astype(np.int64)
        return PreparedBatch(prepared, self.fde.encode_documents(tokens, offsets))

    def commit_upsert(
        self, batch: PreparedBatch, deadline: float | None = None, *, admitted: bool = False
    ) -> list[UpsertResult]:
        """The second half of :meth:`upsert`: stores a prepared batch durably, atomically. ``admitted``:
        the batch passed the backlog check when it was prepared and must not be refused for load now
        (a cluster commits every shard's share once all were prepared; one refusing would leave the
        others stored alone)."""
        check_deadline(deadline, "storing the documents")
        with self.write_lock:
            self._check_open()
            if not admitted:
                self._check_backlog(len(batch.documents))
            records, replaced = self.store.upsert(batch.documents)
            self._retire([old.label for old in replaced if old is not None])
            with self.pending_changed:
                self.pending = [
                    *self.pending,
                    PendingBatch(np.array([r.label for r in records], np.int64), batch.fdes),
                ]
                self.pending_changed.notify_all()
        return [
            UpsertResult(r.id, old is None, r.n_tokens, r.truncated)
            for r, old in zip(records, replaced, strict=True)
        ]

    def backlog(self) -> int:
        """Acknowledged documents waiting for the indexer's graph insertion."""
        return sum(len(batch.labels) for batch in self.pending)

    def _check_backlog(self, n_docs: int) -> None:
        """RESOURCE_EXHAUSTED (with a retry delay) when the indexer's backlog would pass its limit; an
        empty backlog takes any batch."""
        backlog = self.backlog()
        limit = self.limits.max_indexing_backlog
        if backlog and backlog + n_docs > limit:
            raise ResourceExhausted(
                f"documents: the collection {self.config.name!r} has {backlog} acknowledged documents "
                f"waiting for its indexer; {n_docs} more would pass the limit of {limit} "
                "(max_indexing_backlog): retry once it has caught up",
                retry_after_s=RETRY_BACKLOG_S,
            )

    def _prepare(self, docs: Sequence[DocumentInput]) -> list[NewDocument]:
        """Validates every document, then encodes the texts in one batch."""
        seen: dict[str, int] = {}
        metadata: list[dict[str, meta.MetaValue]] = []
        for i, doc in enumerate(docs):
            metadata.append(self._validate_document(i, doc))
            if doc.id in seen:
                raise InvalidArgument(
                    f"documents[{i}].id", f"{doc.id!r} repeats documents[{seen[doc.id]}].id in this batch"
                )
            seen[doc.id] = i
        # text with vectors is stored (keyword search, reading back) but not encoded: the vectors stand
        texts = [(i, d.text) for i, d in enumerate(docs) if d.text is not None and d.vectors is None]
        encoded = {}
        if texts:
            encoder = self.text_encoder()
            try:
                results = encoder.encode_documents([t for _, t in texts])
            except InvalidArgument as error:  # "texts[j]" → "documents[i].text"
                j = int(error.field[len("texts[") : -1]) if error.field.startswith("texts[") else 0
                raise InvalidArgument(
                    f"documents[{texts[j][0]}].text", str(error).split(": ", 1)[-1]
                ) from error
            encoded = {i: result for (i, _), result in zip(texts, results, strict=True)}
        prepared = []
        for i, doc in enumerate(docs):
            if i in encoded:
                if len(encoded[i].vectors) == 0:
                    raise InvalidArgument(
                        f"documents[{i}].text", "encodes to no tokens (only punctuation or markers)"
                    )
                vectors, truncated = encoded[i].vectors, encoded[i].truncated
                limit = self.limits.max_document_tokens
                if len(vectors) > limit:  # a doc_maxlen above the limit
                    raise InvalidArgument(
                        f"documents[{i}].text", f"encodes to {len(vectors)} tokens; the limit is {limit}"
                    )
            else:
                vectors, truncated = np.ascontiguousarray(doc.vectors, dtype=np.float32), doc.truncated
            prepared.append(NewDocument(doc.id, vectors, doc.text, metadata[i], truncated))
        return prepared

    def _validate_document(self, i: int, doc: DocumentInput) -> dict[str, meta.MetaValue]:
        """Checks one document; returns its metadata as stored (lists as tuples)."""
        if not isinstance(doc.id, str) or not doc.id:
            raise InvalidArgument(f"documents[{i}].id", "is required")
        limits = self.limits
        if len(doc.id.encode()) > limits.max_id_bytes:
            raise InvalidArgument(
                f"documents[{i}].id", f"is {len(doc.id.encode())} bytes; the limit is {limits.max_id_bytes}"
            )
        control = CONTROL_CHARACTERS.search(doc.id)
        if control:
            raise InvalidArgument(
                f"documents[{i}].id",
                f"contains the control character U+{ord(control.group()):04X} at position {control.start()}",
            )
        if doc.text is None and doc.vectors is None:
            raise InvalidArgument(f"documents[{i}]", "set 'text', 'vectors' or both")
        if doc.text is not None and not doc.text.strip():
            raise InvalidArgument(f"documents[{i}].text", "must not be empty or only whitespace")
        if doc.vectors is not None:
            self._validate_vectors(doc.vectors, f"documents[{i}].vectors", limits.max_document_tokens)
        return meta.validate(doc.metadata, f"documents[{i}].metadata", self.limits)

    def _validate_vectors(self, vectors: np.ndarray, field_name: str, max_tokens: int) -> None:
        if vectors.ndim != 2 or vectors.shape[0] < 1:
            raise InvalidArgument(
                field_name, f"must have shape (n_tokens >= 1, {self.config.dim}), got {vectors.shape}"
            )
        if vectors.shape[0] > max_tokens:
            raise InvalidArgument(field_name, f"has {vectors.shape[0]} tokens; the limit is {max_tokens}")
        if vectors.shape[1] != self.config.dim:
            raise FailedPrecondition(
                f"{field_name}: vectors have dim {vectors.shape[1]}, but collection "
                f"{self.config.name!r} has dim {self.config.dim}"
            )
        if not np.isfinite(vectors).all():
            row, col = np.argwhere(~np.isfinite(vectors))[0]
            raise InvalidArgument(
                field_name, f"element [{row}, {col}] is {vectors[row, col]}; vectors must be finite"
            )

    def delete(self, ids: Sequence[str]) -> list[bool]:
        """Deletes documents durably; per id, whether it existed."""
        return self.delete_matching(ids, None)[0]

    def delete_matching(self, ids: Sequence[str] | None, where: meta.Filter | None) -> tuple[list[bool], int]:
        """Deletes the documents ``ids`` (those that match ``where``, if given) or, with ``ids`` None,
        every document matching ``where``, in one durable transaction; returns, per id, whether it was
        deleted, and how many documents were deleted in all."""
        with self.write_lock:
            self._check_open()
            allowed = None if where is None else self.matching(where)
            if ids is None:
                assert allowed is not None
                targets = [
                    r.id for label in sorted(allowed) if (r := self.store.by_label.get(label)) is not None
                ]
            else:
                targets = [i for i in ids if allowed is None or self._label_of(i) in allowed]
            removed = self.store.delete(targets)
            self._retire([r.label for r in removed if r is not None])
        gone = {r.id for r in removed if r is not None}
        return [i in gone for i in (ids if ids is not None else targets)], len(gone)

    def _label_of(self, doc_id: str) -> int | None:
        record = self.store.records.get(doc_id)
        return None if record is None else record.label

    def _retire(self, labels: list[int]) -> None:
        """Removes replaced/deleted versions from HNSW and the token index (those still pending are
        skipped by the indexer)."""
        if not labels:
            return
        with self.index_mutex:
            in_graph = self.index.labels()
            indexed = [label for label in labels if label in in_graph]
            if indexed:
                self.index.mark_deleted(indexed)
                self.dirty = True
        if self.tokens is not None:
            self.tokens.retire(labels)

    # ------------------------------------------------------------------------------ metadata

    def matching(self, where: meta.Filter) -> set[int]:
        """The labels of the live documents matching a filter, evaluated in the catalog (what
        delete-by-filter removes); INVALID_ARGUMENT naming the path inside ``where``."""
        checked = self._checked(None, where)
        assert checked is not None
        return self.store.matching(*meta.to_sql(checked))

    def allowed(self, filter: dict[str, str] | None, where: meta.Filter | None) -> LabelSet | None:
        """The live versions both filters select, from the resident columns (what a filtered vector
        search reads; None: no filter)."""
        checked = self._checked(filter, where)
        return None if checked is None else self.store.metadata_index.evaluate(checked)

    def _checked(self, filter: dict[str, str] | None, where: meta.Filter | None) -> meta.Checked | None:
        """Both filters validated as one (None: every document). Operand types are checked against
        the kinds the resident columns say each key holds."""
        kinds_of = self.store.metadata_index.kinds_of
        parts = []
        if filter:  # the exact-match string map: string equality, no type checks (its old semantics)
            parts.append(meta.check_filter(meta.equality(filter), "filter", kinds_of, strict=False))
        if where is not None:
            parts.append(meta.check_filter(where, "where", kinds_of))
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else meta.AllOf(tuple(parts))

    # ------------------------------------------------------------------------------ reads

    def get(self, doc_id: str) -> Document:
        record = self.store.records.get(doc_id)
        if record is None:
            raise NotFound(f"document {doc_id!r} not found in collection {self.config.name!r}")
        return Document(
            id=record.id,
            text=self.store.text_of(doc_id),
            metadata=dict(record.metadata),
            vectors=self._vectors_of(record),
            n_tokens=record.n_tokens,
            truncated=record.truncated,
        )

    def list_documents(
        self,
        page_size: int,
        after_id: str | None,
        *,
        include_vectors: bool = False,
        where: meta.Filter | None = None,
    ) -> tuple[list[Document], str | None]:
        checked = self._checked(None, where)
        compiled = None if checked is None else meta.to_sql(checked)
        ids = self.store.ids_after(after_id, page_size + 1, compiled)  # one more: is there a next page?
        page = []
        for doc_id in ids[:page_size]:
            record = self.store.records.get(doc_id)
            if record is None:
                continue
            page.append(
                Document(
                    id=record.id,
                    text=self.store.text_of(doc_id),
                    metadata=dict(record.metadata),
                    vectors=self._vectors_of(record) if include_vectors else None,
                    n_tokens=record.n_tokens,
                    truncated=record.truncated,
                )
            )
        return page, (ids[page_size - 1] if len(ids) > page_size else None)

    def _vectors_of(self, record: Record) -> np.ndarray:
        """A document's tokens at the best precision kept: its stored vectors while it has them (a coded
        document keeps them until the next compaction unless the collection keeps them for good),
        else its decoded codes."""
        if record.has_vectors:
            return record.vectors().astype(np.float32)
        return self.searcher.token_matrix([record])

    # ------------------------------------------------------------------------------ search

    def search(
        self,
        query: np.ndarray | str,
        top_k: int = 10,
        *,
        candidates: int | None = None,
        ef: int | None = None,
        probe: int | None = None,
        centroid_candidates: int | None = None,
        filter: dict[str, str] | None = None,
        where: meta.Filter | None = None,
        explain: bool = False,
        deadline: float | None = None,
        mode: str = "semantic",
        semantic_weight: float | None = None,
        keyword_query: str | None = None,
    ) -> list[Hit]:
        """The best ``top_k`` documents: by exact MaxSim (``mode`` "semantic"), by BM25 over their texts
        ("keyword": ``query`` or ``keyword_query`` must be text), or both fused ("hybrid", see
        :mod:`mvr.server.hybrid`; a text query, or vectors with the text in ``keyword_query``).
        ``deadline`` (a ``time.monotonic()`` instant): the caller's; once it has passed, the search stops
        at the next stage boundary with DeadlineExceeded."""
        text = query if isinstance(query, str) else keyword_query
        weight = self._check_mode(mode, semantic_weight, text)
        params = SearchParams(top_k, candidates, ef, probe, centroid_candidates, explain)
        params.check(self.limits)
        checked = self._checked(filter, where)
        compiled = None if checked is None or mode == "semantic" else meta.to_sql(checked)
        if mode == "keyword":
            assert text is not None
            return self._keyword_hits(text, top_k, compiled, deadline)
        allowed = None if checked is None else self.store.metadata_index.evaluate(checked)
        field_name = "query.vectors"
        if isinstance(query, str):
            check_deadline(deadline, "encoding the query")
            with engine_metrics.stage("encode"):
                query, field_name = self.encode_query(query), "query.text"
        query = np.ascontiguousarray(query, dtype=np.float32)
        self._validate_vectors(query, field_name, self.limits.max_query_tokens)
        if mode == "hybrid":  # each list deeper than top_k (the candidates, if fewer, bound it)
            depth = min(
                hybrid.fusion_depth(top_k), candidates or self.limits.max_top_k, self.limits.max_top_k
            )
            params = replace(params, top_k=max(top_k, depth))
        semantic = self.searcher.search(query, params, allowed, deadline)
        semantic = [replace(h, semantic_rank=i, semantic_score=h.score) for i, h in enumerate(semantic, 1)]
        if mode == "semantic":
            return semantic
        assert text is not None
        keyword = self._keyword_hits(text, params.top_k, compiled, deadline)
        return hybrid.fuse(semantic, keyword, top_k, weight)

    @staticmethod
    def _check_mode(mode: str, semantic_weight: float | None, text: str | None) -> float:
        """The fusion weight; INVALID_ARGUMENT for a mode without what it needs."""
        if mode not in SEARCH_MODES:
            raise InvalidArgument("mode", f"must be one of {', '.join(SEARCH_MODES)}, got {mode!r}")
        if mode != "semantic" and (text is None or not text.strip()):
            raise InvalidArgument("query.text", f"is required in {mode} mode: keyword search reads words")
        if semantic_weight is None:
            return hybrid.DEFAULT_SEMANTIC_WEIGHT
        if mode != "hybrid":
            raise InvalidArgument("semantic_weight", f"applies to hybrid mode only, not {mode}")
        if not 0.0 <= semantic_weight <= 1.0:
            raise InvalidArgument("semantic_weight", f"must be in [0, 1], got {semantic_weight}")
        return semantic_weight

    def _keyword_hits(
        self, text: str, top_k: int, where: tuple[str, list[object]] | None, deadline: float | None
    ) -> list[Hit]:
        """The top_k by BM25 among the documents matching the compiled filter ``where`` (all: None),
        filtered inside the full-text query."""
        check_deadline(deadline, "the keyword stage")
        with engine_metrics.stage("keyword"):
            labels, scores = self.store.keyword_search(text, top_k, where)
            return hybrid.keyword_hits(labels, scores, self.store.by_label, top_k)

    # ------------------------------------------------------------------------------ indexer hooks

    def save_due(self, interval_s: float) -> bool:
        return self.dirty and time.monotonic() - self._last_save >= interval_s

    def notify_progress(self) -> None:
        with self.pending_changed:
            self.pending_changed.notify_all()

    def save_index(self) -> None:
        with self.index_mutex:
            self.index.save(self.directory)
            self.dirty = False
            self._last_save = time.monotonic()

    def flush(self, timeout_s: float | None = None) -> None:
        """Waits until every acknowledged document is in HNSW and, once the collection has enough
        tokens for a codec, coded (by a retrained codec, if its growth calls for one); then saves the
        index and compacts if dead bytes dominate."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self.pending_changed:
            while self._indexer.busy() and not self.closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(
                        f"collection {self.config.name!r}: index not caught up in {timeout_s} s"
                    )
                self.pending_changed.wait(timeout=0.5 if remaining is None else min(remaining, 0.5))
        self._check_open()
        self.save_index()
        self.maybe_compact()

    def compact(self) -> int:
        """Reclaims the space of replaced and deleted versions, and of vectors superseded by codes."""
        with self.write_lock:
            self._check_open()
            reclaimed = self.store.compact()
            if self.tokens is not None:
                self.tokens.rebuild(list(self.store.records.values()), self.store.codes_mapping)
            return reclaimed

    def maybe_compact(self) -> None:
        dead = self.store.dead_bytes()
        if dead >= COMPACT_MIN_DEAD_BYTES and dead * 2 >= self.store.vectors_end + self.store.codes_end:
            reclaimed = self.compact()
            log.info("compacted", extra={"collection": self.config.name, "bytes_reclaimed": reclaimed})

    # ------------------------------------------------------------------------------ snapshots

    def snapshot(self, path: Path, created: float) -> tuple[int, str, int]:
        """Writes a snapshot file of the collection at ``path`` (see :mod:`mvr.server.snapshot`);
        returns (file size, SHA-256, live documents). Its instant is the moment the write lock is
        held here: every write acknowledged before it is in the snapshot, none after it. The lock is
        held only to open the store's view; writes and searches go on while the files are copied."""
        with ExitStack() as held:
            with self.write_lock:
                self._check_open()
                view = self.store.view()
                held.callback(view.close)
                fde_file = held.enter_context((self.directory / FDE_FILE).open("rb"))
            scratch_dir = Path(
                held.enter_context(tempfile.TemporaryDirectory(dir=path.parent, prefix=".snapshot-"))
            )
            view.write_catalog(scratch_dir / CATALOG)  # first: it ends the view's read transaction
            with self.index_mutex:
                self.index.save(scratch_dir)
            # every label in that graph was handed out before this read
            view.raise_next_label(scratch_dir / CATALOG, self.store.next_label)
            local = {name: held.enter_context((scratch_dir / name).open("rb")) for name in _SAVED}
            sources = [
                (CATALOG, local[CATALOG], (scratch_dir / CATALOG).stat().st_size),
                *((name, view.data[name], view.data[name].size) for name in (VECTORS, CODES)),
                (FDE_FILE, fde_file, os.fstat(fde_file.fileno()).st_size),
                *((name, local[name], (scratch_dir / name).stat().st_size) for name in _GRAPH),
            ]
            manifest = snapshot_format.manifest_for(self.config.to_dict(), view.documents, created)
            size, sha256 = snapshot_format.write(path, sources, manifest)
        return size, sha256, view.documents

    # ------------------------------------------------------------------------------ stats

    def stats(self) -> CollectionStats:
        records = list(self.store.records.values())
        pending = self.pending
        live_pending = (
            sum(int(np.isin(b.labels, list(self.store.by_label)).sum()) for b in pending) if pending else 0
        )
        index_file = self.directory / INDEX_FILE
        on_disk = self.store.bytes_on_disk()
        on_disk["hnsw"] = index_file.stat().st_size if index_file.exists() else 0
        on_disk["fde_matrices"] = (self.directory / FDE_FILE).stat().st_size
        snapshot = None if self.tokens is None else self.tokens.snapshot
        in_memory = {
            "hnsw": self.index.bytes_in_memory(),
            "pending_fde": sum(b.fdes.nbytes for b in pending),
            "catalog": len(records) * 200,  # estimate: one small Python record per document
        }
        if snapshot is not None:
            in_memory["token_index"] = snapshot.nbytes()
        return CollectionStats(
            documents=len(records),
            tokens=self.store.live_tokens,
            indexed=len(records) - live_pending,
            bytes_on_disk=on_disk,
            bytes_in_memory=in_memory,
            coded=sum(1 for r in records if r.coded),
            centroids=0 if self.store.codec is None else self.store.codec.n_centroids,
            codec_generation=self.store.codec_generation,
            recoded=self._indexer.recoded(),
        )

    # ------------------------------------------------------------------------------ life

    def _check_open(self) -> None:
        if self.closed:
            why = self.stop_reason or "deleted or shutting down"
            raise FailedPrecondition(f"collection {self.config.name!r} is closed ({why})")

    def close(self, save: bool = True) -> None:
        """Stops the indexer and saves the graph as it is. Shutdown never waits for the backlog: the
        store holds every acknowledged document, and the next open replays what the graph lacks."""
        if self._released:
            return  # (closed alone may also mean stopped by the indexer, with files still open)
        with self.write_lock, self.pending_changed:
            self.closed = True
            self.pending_changed.notify_all()
        self._indexer.join(timeout=INDEXER_STOP_S)
        if self._indexer.alive():  # inside one long step (a codec training): it stops at the next check
            log.warning(
                "indexer still busy at close; its step is abandoned at the next check",
                extra={"collection": self.config.name, "waited_s": INDEXER_STOP_S},
            )
        if save:
            self.save_index()
        self.store.close()
        self._released = True
        engine_metrics.forget_collection(self.config.name)
