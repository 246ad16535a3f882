"""Collections: the engine between the service and the encoder / FDE / index / store / rerank.

Owns the configuration of each collection, the write path (validate → encode → FDE → durable store →
background HNSW insertion), the search path (query FDE → HNSW candidates + exact scan of the
not-yet-indexed tail → exact MaxSim rerank) and the life of collections on disk
(:class:`CollectionManager`).

Consistency rules:

* A write returns only once the store has it durably (see :mod:`mvr.server.store`); from that moment a
  search sees it, through the in-memory *pending* FDEs scanned exactly until the background indexer
  has moved them into HNSW.
* Writes to one collection are serialised; searches never wait for them. Every document version has a
  fresh label; a search resolves candidate labels against the live catalog, so a replaced or deleted
  version is never returned and a document is seen entirely or not at all.
* The HNSW file is a cache: on open, labels in the graph that are no longer live are marked deleted
  and live labels missing from it are re-encoded from the stored vectors and queued for insertion.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from mvr.server.encoder import Encoder, EncoderSpec
from mvr.server.errors import AlreadyExists, FailedPrecondition, InvalidArgument, MvrError, NotFound
from mvr.server.fde import FDE, FDEConfig
from mvr.server.index import HnswIndex, IndexParams
from mvr.server.rerank import maxsim
from mvr.server.store import NewDocument, Record, Store, gather

log = logging.getLogger("mvr.collection")

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MAX_ID_BYTES = 512
MAX_TOP_K = 1000
MAX_CANDIDATES = 10_000
# Default first-stage candidates: max(MIN_DEFAULT_CANDIDATES, 10·top_k). bench/recall.py at 100k
# documents: C=100 left recall@10 at 0.71 (the FDE ranking, not HNSW, was the limit), see
# bench/results/recall_100k.json for the value chosen.
MIN_DEFAULT_CANDIDATES = 300
FDE_FILE = "fde.npz"
INDEX_CHUNK = 128  # documents per hnswlib add_items call: bounds how long a delete waits
COMPACT_MIN_DEAD_BYTES = 16 << 20


# ---------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class HNSWParams:
    """HNSW graph parameters (hnswlib, inner product over FDEs)."""

    m: int = 16
    ef_construction: int = 200
    ef_search: int = 200

    def __post_init__(self) -> None:
        _check_range("collection.hnsw.m", self.m, 2, 128)
        _check_range("collection.hnsw.ef_construction", self.ef_construction, self.m, 4096)
        _check_range("collection.hnsw.ef_search", self.ef_search, 1, 100_000)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> HNSWParams:
        return cls(**data)


def default_fde(dim: int) -> FDEConfig:
    """Server default FDE: R=20, k_sim=3, d_proj=16 (2,560 dims), chosen by bench/recall.py's sweep
    (see bench/results/recall.json); d_proj is capped at the token dim (tiny test dims)."""
    return FDEConfig(repetitions=20, k_sim=3, d_proj=min(16, dim), fill_empty=True, final_dim=None, seed=0)


@dataclass(frozen=True)
class CollectionConfig:
    """Everything fixed at creation; stored in the collection's catalog as JSON."""

    name: str
    dim: int
    encoder: EncoderSpec | None
    fde: FDEConfig
    hnsw: HNSWParams
    vector_dtype: str = "float16"
    created_at: float = 0.0

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "dim": self.dim,
            "encoder": None if self.encoder is None else self.encoder.to_dict(),
            "fde": self.fde.to_dict(),
            "hnsw": self.hnsw.to_dict(),
            "vector_dtype": self.vector_dtype,
            "created_at": self.created_at,
        }

    @classmethod
    def from_dict(cls, data: dict) -> CollectionConfig:
        return cls(
            name=data["name"],
            dim=data["dim"],
            encoder=None if data["encoder"] is None else EncoderSpec.from_dict(data["encoder"]),
            fde=FDEConfig.from_dict(data["fde"]),
            hnsw=HNSWParams.from_dict(data["hnsw"]),
            vector_dtype=data["vector_dtype"],
            created_at=data["created_at"],
        )


def _check_range(field_name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgument(field_name, f"must be an integer in [{low}, {high}], got {value!r}")


# ---------------------------------------------------------------------------------------- values


@dataclass
class DocumentInput:
    """A document to write: exactly one of ``text`` and ``vectors`` (float32 (n, dim))."""

    id: str
    vectors: np.ndarray | None = None
    text: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class Document:
    id: str
    text: str | None
    metadata: dict[str, str]
    vectors: np.ndarray | None
    n_tokens: int
    truncated: bool


@dataclass
class UpsertResult:
    id: str
    created: bool
    n_tokens: int
    truncated: bool


@dataclass
class TokenMatch:
    query_token: int
    doc_token: int
    score: float


@dataclass
class Hit:
    id: str
    score: float
    metadata: dict[str, str]
    explanation: list[TokenMatch] | None = None


@dataclass
class CollectionStats:
    documents: int
    tokens: int
    indexed: int
    bytes_on_disk: dict[str, int]
    bytes_in_memory: dict[str, int]


@dataclass(frozen=True)
class PendingBatch:
    """Acknowledged documents not yet in HNSW: their labels and FDEs, scanned exactly by searches."""

    labels: np.ndarray  # int64 (m,)
    fdes: np.ndarray  # float32 (m, fde dim)


# ------------------------------------------------------------------------------------ collection


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
    ) -> None:
        self.directory = directory
        self.config = config
        self._encoder = encoder
        self._query_encode = query_encode
        self._text_error = text_error
        self._index_threads = index_threads
        self._save_interval_s = save_interval_s
        self.store = Store(directory, config.dim, config.vector_dtype)
        self.fde = FDE.load(directory / FDE_FILE, threads=fde_threads)
        self._index_params = IndexParams(self.fde.output_dim, config.hnsw.m, config.hnsw.ef_construction)
        self._write_lock = threading.Lock()  # one writer
        self._index_mutex = threading.Lock()  # HNSW membership: indexer inserts vs deletes
        self._meta_lock = threading.Lock()
        self._meta_index: dict[tuple[str, str], set[int]] = {}
        self._pending: list[PendingBatch] = []
        self._pending_changed = threading.Condition()
        self._closed = False
        self._dirty = False
        self._last_save = time.monotonic()
        for record in self.store.records.values():
            self._index_metadata(record)
        self.index = self._open_index()
        self._indexer = threading.Thread(target=self._index_loop, name=f"indexer-{config.name}", daemon=True)
        self._indexer.start()

    # ------------------------------------------------------------------------------ open

    def _open_index(self) -> HnswIndex:
        fresh = not self.store.records and not (self.directory / "hnsw.bin").exists()
        index = None if fresh else HnswIndex.load(self.directory, self._index_params)
        if index is None:
            index = HnswIndex(self._index_params, capacity=max(1024, len(self.store.records)))
            self._dirty = True
        live = set(self.store.by_label)
        in_graph = index.labels()
        stale = sorted(in_graph - live)
        if stale:
            index.mark_deleted(stale)
            self._dirty = True
        missing = [self.store.by_label[label] for label in sorted(live - in_graph)]
        for start in range(0, len(missing), 1024):
            chunk = missing[start : start + 1024]
            self._pending.append(
                PendingBatch(np.array([r.label for r in chunk], np.int64), self._document_fdes(chunk))
            )
        if missing:
            log.info(
                "replaying documents into the index",
                extra={"collection": self.config.name, "documents": len(missing)},
            )
        return index

    def _document_fdes(self, records: Sequence[Record]) -> np.ndarray:
        tokens, offsets = gather(records, self.config.dim)
        return self.fde.encode_documents(tokens, offsets)

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

    def upsert(self, docs: Sequence[DocumentInput]) -> list[UpsertResult]:
        if not docs:
            raise InvalidArgument("documents", "must not be empty")
        prepared = self._prepare(docs)
        tokens = np.concatenate([d.vectors for d in prepared])
        offsets = np.concatenate([[0], np.cumsum([len(d.vectors) for d in prepared])]).astype(np.int64)
        fdes = self.fde.encode_documents(tokens, offsets)
        with self._write_lock:
            self._check_open()
            records, replaced = self.store.upsert(prepared)
            for old in replaced:
                if old is not None:
                    self._unindex_metadata(old)
            for record in records:
                self._index_metadata(record)
            self._retire([old.label for old in replaced if old is not None])
            with self._pending_changed:
                self._pending = [
                    *self._pending,
                    PendingBatch(np.array([r.label for r in records], np.int64), fdes),
                ]
                self._pending_changed.notify_all()
        return [
            UpsertResult(r.id, old is None, r.n_tokens, r.truncated)
            for r, old in zip(records, replaced, strict=True)
        ]

    def _prepare(self, docs: Sequence[DocumentInput]) -> list[NewDocument]:
        """Validates every document, then encodes the texts in one batch."""
        seen: dict[str, int] = {}
        for i, doc in enumerate(docs):
            self._validate_document(i, doc)
            if doc.id in seen:
                raise InvalidArgument(
                    f"documents[{i}].id", f"{doc.id!r} repeats documents[{seen[doc.id]}].id in this batch"
                )
            seen[doc.id] = i
        texts = [(i, d.text) for i, d in enumerate(docs) if d.text is not None]
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
            else:
                vectors, truncated = np.ascontiguousarray(doc.vectors, dtype=np.float32), False
            prepared.append(NewDocument(doc.id, vectors, doc.text, dict(doc.metadata), truncated))
        return prepared

    def _validate_document(self, i: int, doc: DocumentInput) -> None:
        if not isinstance(doc.id, str) or not doc.id:
            raise InvalidArgument(f"documents[{i}].id", "is required")
        if len(doc.id.encode()) > MAX_ID_BYTES:
            raise InvalidArgument(
                f"documents[{i}].id", f"is {len(doc.id.encode())} bytes; the limit is {MAX_ID_BYTES}"
            )
        if (doc.text is None) == (doc.vectors is None):
            raise InvalidArgument(f"documents[{i}]", "exactly one of 'text' and 'vectors' must be set")
        if doc.text is not None and not doc.text.strip():
            raise InvalidArgument(f"documents[{i}].text", "must not be empty or only whitespace")
        if doc.vectors is not None:
            self._validate_vectors(doc.vectors, f"documents[{i}].vectors")
        for key, value in doc.metadata.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise InvalidArgument(
                    f"documents[{i}].metadata", f"keys and values must be strings, got {key!r}: {value!r}"
                )

    def _validate_vectors(self, vectors: np.ndarray, field_name: str) -> None:
        if vectors.ndim != 2 or vectors.shape[0] < 1:
            raise InvalidArgument(
                field_name, f"must have shape (n_tokens >= 1, {self.config.dim}), got {vectors.shape}"
            )
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
        with self._write_lock:
            self._check_open()
            removed = self.store.delete(ids)
            for record in removed:
                if record is not None:
                    self._unindex_metadata(record)
            self._retire([r.label for r in removed if r is not None])
        return [r is not None for r in removed]

    def _retire(self, labels: list[int]) -> None:
        """Removes replaced/deleted versions from HNSW (those still pending are skipped by the indexer)."""
        if not labels:
            return
        with self._index_mutex:
            in_graph = self.index.labels()
            indexed = [label for label in labels if label in in_graph]
            if indexed:
                self.index.mark_deleted(indexed)
                self._dirty = True

    # ------------------------------------------------------------------------------ metadata

    def _index_metadata(self, record: Record) -> None:
        with self._meta_lock:
            for item in record.metadata.items():
                self._meta_index.setdefault(item, set()).add(record.label)

    def _unindex_metadata(self, record: Record) -> None:
        with self._meta_lock:
            for item in record.metadata.items():
                labels = self._meta_index.get(item)
                if labels is not None:
                    labels.discard(record.label)
                    if not labels:
                        del self._meta_index[item]

    def _matching(self, filter: dict[str, str]) -> set[int]:
        with self._meta_lock:
            sets = sorted((self._meta_index.get(item, set()) for item in filter.items()), key=len)
            return set(sets[0]).intersection(*sets[1:])

    # ------------------------------------------------------------------------------ reads

    def get(self, doc_id: str) -> Document:
        record = self.store.records.get(doc_id)
        if record is None:
            raise NotFound(f"document {doc_id!r} not found in collection {self.config.name!r}")
        return Document(
            id=record.id,
            text=self.store.text_of(doc_id),
            metadata=dict(record.metadata),
            vectors=record.vectors().astype(np.float32),
            n_tokens=record.n_tokens,
            truncated=record.truncated,
        )

    def list_documents(
        self, page_size: int, after_id: str | None, *, include_vectors: bool = False
    ) -> tuple[list[Document], str | None]:
        ids = self.store.ids_after(after_id, page_size + 1)  # one more: is there a next page?
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
                    vectors=record.vectors().astype(np.float32) if include_vectors else None,
                    n_tokens=record.n_tokens,
                    truncated=record.truncated,
                )
            )
        return page, (ids[page_size - 1] if len(ids) > page_size else None)

    # ------------------------------------------------------------------------------ search

    def search(
        self,
        query: np.ndarray,
        top_k: int = 10,
        *,
        candidates: int | None = None,
        ef: int | None = None,
        filter: dict[str, str] | None = None,
        explain: bool = False,
    ) -> list[Hit]:
        if isinstance(query, str):
            query = self.encode_query(query)
        query = np.ascontiguousarray(query, dtype=np.float32)
        self._validate_vectors(query, "query.vectors")
        _check_range("top_k", top_k, 1, MAX_TOP_K)
        n_candidates = candidates if candidates is not None else max(MIN_DEFAULT_CANDIDATES, 10 * top_k)
        if not top_k <= n_candidates <= MAX_CANDIDATES:
            raise InvalidArgument(
                "candidates", f"must be between top_k ({top_k}) and {MAX_CANDIDATES}, got {n_candidates}"
            )
        allowed = self._matching(filter) if filter else None
        if allowed is not None and len(allowed) <= n_candidates:
            labels = np.fromiter(allowed, dtype=np.int64, count=len(allowed))  # few matches: score them all
        else:
            # unset: 2·C (HNSW recall of the FDE top-C was 0.96 at ef=C, 0.98 at 2·C, 100k docs)
            ef_search = max(ef, n_candidates) if ef else max(self.config.hnsw.ef_search, 2 * n_candidates)
            labels = self._first_stage(self.fde.encode_query(query), n_candidates, ef_search, allowed)
        return self._rerank(query, labels, top_k, explain)

    def _first_stage(self, query_fde: np.ndarray, k: int, ef: int, allowed: set[int] | None) -> np.ndarray:
        """Top-k labels by FDE inner product: HNSW over indexed documents, exact over pending ones."""
        graph_labels, graph_scores = self.index.search(
            query_fde, k, ef, None if allowed is None else allowed.__contains__
        )
        labels, scores = [graph_labels], [graph_scores]
        for batch in self._pending:  # the list is replaced, never mutated: a consistent snapshot
            batch_scores = batch.fdes @ query_fde
            keep = (
                np.ones(len(batch.labels), bool) if allowed is None else np.isin(batch.labels, list(allowed))
            )
            labels.append(batch.labels[keep])
            scores.append(batch_scores[keep])
        all_labels, all_scores = np.concatenate(labels), np.concatenate(scores)
        if len(all_labels) > k:
            top = np.argpartition(-all_scores, k - 1)[:k]
            all_labels = all_labels[top]
        return all_labels

    def _rerank(self, query: np.ndarray, labels: np.ndarray, top_k: int, explain: bool) -> list[Hit]:
        by_label = self.store.by_label
        records = []
        seen = set()
        for label in labels.tolist():
            record = by_label.get(label)  # replaced or deleted versions drop out here
            if record is not None and label not in seen:
                seen.add(label)
                records.append(record)
        if not records:
            return []
        tokens, offsets = gather(records, self.config.dim)
        scored = maxsim(query, tokens, offsets, explain=explain)
        order = sorted(range(len(records)), key=lambda i: (-float(scored.scores[i]), records[i].id))[:top_k]
        hits = []
        for i in order:
            explanation = None
            if explain:
                explanation = [
                    TokenMatch(q, int(scored.best_tokens[q, i]), float(scored.token_scores[q, i]))
                    for q in range(len(query))
                ]
            hits.append(Hit(records[i].id, float(scored.scores[i]), dict(records[i].metadata), explanation))
        return hits

    # ------------------------------------------------------------------------------ indexing

    def _index_loop(self) -> None:
        while True:
            with self._pending_changed:
                while not self._pending and not self._closed and not self._save_due():
                    self._pending_changed.wait(timeout=1.0)
                if self._closed:
                    return
                batch = self._pending[0] if self._pending else None
            try:
                if batch is not None:
                    self._insert(batch)
                elif self._save_due():
                    self.save_index()
                    self.maybe_compact()  # idle: a good moment to reclaim replaced/deleted vectors
            except Exception:
                log.exception("indexer failed; retrying in 1 s", extra={"collection": self.config.name})
                time.sleep(1.0)

    def _save_due(self) -> bool:
        return self._dirty and time.monotonic() - self._last_save >= self._save_interval_s

    def _insert(self, batch: PendingBatch) -> None:
        for start in range(0, len(batch.labels), INDEX_CHUNK):
            if self._closed:
                return  # shutting down: the rest is replayed from the store on the next open
            with self._index_mutex:
                labels = batch.labels[start : start + INDEX_CHUNK]
                live = np.array([label in self.store.by_label for label in labels.tolist()], bool)
                if live.any():
                    self.index.add(
                        labels[live], batch.fdes[start : start + INDEX_CHUNK][live], self._index_threads
                    )
                    self._dirty = True
                    # a version replaced or deleted while it was being added
                    gone = [int(x) for x in labels[live] if int(x) not in self.store.by_label]
                    if gone:
                        self.index.mark_deleted(gone)
        with self._pending_changed:
            self._pending = [b for b in self._pending if b is not batch]
            self._pending_changed.notify_all()

    def save_index(self) -> None:
        with self._index_mutex:
            self.index.save(self.directory)
            self._dirty = False
            self._last_save = time.monotonic()

    def flush(self, timeout_s: float | None = None) -> None:
        """Waits until every acknowledged document is in HNSW, then saves the index."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._pending_changed:
            while self._pending and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(
                        f"collection {self.config.name!r}: index not caught up in {timeout_s} s"
                    )
                self._pending_changed.wait(timeout=remaining)
        self.save_index()

    def compact(self) -> int:
        """Reclaims the space of replaced and deleted versions in the vector file."""
        with self._write_lock:
            return self.store.compact()

    def maybe_compact(self) -> None:
        dead = self.store.dead_bytes()
        if dead >= COMPACT_MIN_DEAD_BYTES and dead * 2 >= self.store.vectors_end:
            reclaimed = self.compact()
            log.info("compacted", extra={"collection": self.config.name, "bytes_reclaimed": reclaimed})

    # ------------------------------------------------------------------------------ stats

    def stats(self) -> CollectionStats:
        records = list(self.store.records.values())
        pending = self._pending
        live_pending = (
            sum(int(np.isin(b.labels, list(self.store.by_label)).sum()) for b in pending) if pending else 0
        )
        index_file = self.directory / "hnsw.bin"
        on_disk = self.store.bytes_on_disk()
        on_disk["hnsw"] = index_file.stat().st_size if index_file.exists() else 0
        on_disk["fde_matrices"] = (self.directory / FDE_FILE).stat().st_size
        return CollectionStats(
            documents=len(records),
            tokens=sum(r.n_tokens for r in records),
            indexed=len(records) - live_pending,
            bytes_on_disk=on_disk,
            bytes_in_memory={
                "hnsw": self.index.bytes_in_memory(),
                "pending_fde": sum(b.fdes.nbytes for b in pending),
                "catalog": len(records) * 200,  # estimate: one small Python record per document
            },
        )

    # ------------------------------------------------------------------------------ life

    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition(f"collection {self.config.name!r} is closed (deleted or shutting down)")

    def close(self, save: bool = True) -> None:
        """Stops the indexer and saves the graph as it is. Shutdown never waits for the backlog: the
        store holds every acknowledged document, and the next open replays what the graph lacks."""
        if self._closed:
            return
        with self._write_lock, self._pending_changed:
            self._closed = True
            self._pending_changed.notify_all()
        self._indexer.join(timeout=30)
        if save:
            self.save_index()
        self.store.close()


# --------------------------------------------------------------------------------------- manager

EncoderLoader = Callable[[str, int | None, int | None], Encoder]


class CollectionManager:
    """All collections under ``data_dir/collections/``: create, open at start, look up, delete."""

    def __init__(
        self,
        data_dir: Path,
        encoder_loader: EncoderLoader | None = None,
        *,
        index_threads: int = 1,
        fde_threads: int = 1,
        query_threads: int = 1,
        query_max_batch: int = 32,
        query_max_wait_ms: float = 2.0,
        save_interval_s: float = 60.0,
    ) -> None:
        self.root = Path(data_dir) / "collections"
        self.root.mkdir(parents=True, exist_ok=True)
        self._encoder_loader = encoder_loader
        self._index_threads = index_threads
        self._fde_threads = fde_threads
        self._query_threads = query_threads
        self._query_batching = {"max_batch": query_max_batch, "max_wait_ms": query_max_wait_ms}
        self._save_interval_s = save_interval_s
        self._lock = threading.Lock()  # the set of collections
        self._batchers_lock = threading.Lock()
        self._batchers: dict[int, object] = {}
        self._collections: dict[str, Collection] = {}
        for directory in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if directory.name.startswith("."):
                shutil.rmtree(directory, ignore_errors=True)  # a creation or deletion cut short
                continue
            self._collections[directory.name] = self._open(directory)

    def _open(self, directory: Path) -> Collection:
        data = Store.config_at(directory)
        if data is None:
            raise RuntimeError(f"{directory} has no collection config")
        config = CollectionConfig.from_dict(data)
        encoder, query_encode, text_error = self._text_path(config)
        return Collection(
            directory,
            config,
            encoder=encoder,
            query_encode=query_encode,
            text_error=text_error,
            index_threads=self._index_threads,
            fde_threads=self._fde_threads,
            save_interval_s=self._save_interval_s,
        )

    def _text_path(self, config: CollectionConfig):
        """The collection's encoder and query function, or the error that text operations will raise."""
        spec = config.encoder
        if spec is None:
            return None, None, None
        if self._encoder_loader is None:
            return None, None, FailedPrecondition(f"collection {config.name!r}: this server loads no models")
        try:
            encoder = self._encoder_loader(spec.model, spec.query_maxlen, spec.doc_maxlen)
            spec.check_compatible(encoder.spec)
        except MvrError as error:
            log.error("collection model unavailable", extra={"collection": config.name, "error": str(error)})
            return None, None, FailedPrecondition(f"collection {config.name!r}: {error}")
        return encoder, self._query_function(encoder), None

    def _query_function(self, encoder: Encoder) -> Callable[[str], np.ndarray]:
        from mvr.server.batcher import QueryBatcher

        with self._batchers_lock:
            batcher = self._batchers.get(id(encoder))
            if batcher is None:
                batcher = QueryBatcher(
                    encoder.encode_queries, threads=self._query_threads, **self._query_batching
                )
                self._batchers[id(encoder)] = batcher
        return lambda text: batcher.submit(text).vectors

    def create(
        self,
        name: str,
        *,
        model: str | None,
        dim: int | None,
        fde: dict | None = None,
        hnsw: dict | None = None,
        vector_dtype: str = "float16",
        query_maxlen: int | None = None,
        doc_maxlen: int | None = None,
    ) -> CollectionConfig:
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise InvalidArgument(
                "collection_id",
                f"{name!r} must be 1-63 characters of [a-z0-9_-], starting with a letter or digit",
            )
        if vector_dtype not in ("float16", "float32"):
            raise InvalidArgument(
                "collection.storage_dtype", f"must be float16 or float32, got {vector_dtype!r}"
            )
        encoder_spec = None
        if model is None:
            if dim is None:
                raise InvalidArgument(
                    "collection.dim", "is required for a collection without an encoder model"
                )
            _check_range("collection.dim", dim, 1, 4096)
        else:
            if self._encoder_loader is None:
                raise FailedPrecondition(
                    "this server loads no models: create the collection with dim and no model"
                )
            encoder = self._encoder_loader(model, query_maxlen, doc_maxlen)
            if dim is not None and dim != encoder.dim:
                raise InvalidArgument(
                    "collection.dim", f"is {dim}, but model {model!r} produces {encoder.dim}-d vectors"
                )
            dim, encoder_spec = encoder.dim, encoder.spec
        fde_config = _with_overrides(default_fde(dim), fde or {}, "collection.fde")
        hnsw_params = _with_overrides(HNSWParams(), hnsw or {}, "collection.hnsw")
        config = CollectionConfig(name, dim, encoder_spec, fde_config, hnsw_params, vector_dtype, time.time())
        with self._lock:
            if name in self._collections:
                raise AlreadyExists(f"collection {name!r} already exists")
            staging = self.root / f".creating-{name}"
            shutil.rmtree(staging, ignore_errors=True)
            try:
                FDE(fde_config, dim).save(_mkdir(staging) / FDE_FILE)
            except InvalidArgument as error:
                shutil.rmtree(staging, ignore_errors=True)
                raise InvalidArgument(
                    f"collection.fde.{error.field}", str(error).split(": ", 1)[-1]
                ) from error
            store = Store(staging, dim, vector_dtype)
            store.write_config(config.to_dict())
            store.close()
            staging.rename(self.root / name)  # the collection appears whole or not at all
            self._collections[name] = self._open(self.root / name)
        log.info("collection created", extra={"collection": name, "config": config.to_dict()})
        return config

    def get(self, name: str) -> Collection:
        collection = self._collections.get(name)
        if collection is None:
            raise NotFound(f"collection {name!r} not found")
        return collection

    def list(self) -> list[CollectionConfig]:
        return [self._collections[name].config for name in sorted(self._collections)]

    def delete(self, name: str) -> None:
        with self._lock:
            collection = self.get(name)
            del self._collections[name]
        collection.close(save=False)
        doomed = self.root / f".deleting-{name}"
        (self.root / name).rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        log.info("collection deleted", extra={"collection": name})

    def close(self) -> None:
        for collection in list(self._collections.values()):
            collection.close()
        for batcher in self._batchers.values():
            batcher.close()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _with_overrides(defaults, overrides: dict, prefix: str):
    """A config dataclass with some fields replaced; unknown fields and bad values name the field."""
    fields = defaults.to_dict()
    for key in overrides:
        if key not in fields:
            raise InvalidArgument(f"{prefix}.{key}", "is not a parameter")
    try:
        return type(defaults).from_dict({**fields, **overrides})
    except InvalidArgument as error:
        field_name = error.field if error.field.startswith(prefix) else f"{prefix}.{error.field}"
        raise InvalidArgument(field_name, str(error).split(": ", 1)[-1]) from error
