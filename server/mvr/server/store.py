"""Durable storage of one collection: SQLite catalog + append-only token-vector file.

Owns what survives a crash. Layout of a collection directory::

    catalog.sqlite   SQLite in WAL mode, synchronous=FULL: the config, and one row per live document
                     (external id ↔ internal label, text, metadata, offset and length of its vectors),
                     tombstones of replaced/deleted labels, and the state (next label, vectors end).
    vectors.bin      token vectors of stored document versions, back to back, row-major, in the
                     collection's storage dtype (float16 by default). Append-only between compactions;
                     preallocated in doubling steps (sparse), memory-mapped for reads. Every write lands
                     here first; once a document is also in codes.bin, compaction drops its vectors
                     unless the collection keeps full precision.
    codes.bin        compressed tokens (see :mod:`mvr.server.codec`) of the documents coded so far, one
                     block per document: n uint16 centroid ids, then n packed residuals. Appended by the
                     background indexer with the same write order as vectors.bin; the codec they need is
                     a row of the ``codecs`` table, committed before the first code that uses it.
                     The ``drift`` table keeps the live codec's drift measure (:class:`DriftState`),
                     written in the same transactions as the codes it measured.

Write order (what makes an acknowledged write durable and a crash harmless):

1. append the batch's vectors at ``vectors_end`` with pwrite, then fdatasync the vector file;
2. one SQLite transaction inserts/replaces the documents, writes tombstones and the new
   ``vectors_end``, and commits (WAL + synchronous=FULL: durable when COMMIT returns);
3. only then is the write acknowledged. A crash before 2 leaves bytes past ``vectors_end`` that no
   row references; they are overwritten by the next write. A crash during 2 rolls the transaction back.

Labels are never reused: every stored version of a document gets a fresh integer label, so the HNSW
index (keyed by label) can be rebuilt or replayed from this catalog alone.

Reads never touch SQLite on the search path: an in-memory catalog (id → :class:`Record`) mirrors the
live rows. Records are immutable and carry the memory map their vectors live in, so a reader holding a
record always sees complete vectors, even across a compaction that rewrites the file.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO

import numba
import numpy as np
from mvr.server import metadata as meta
from mvr.server.codec import Codec
from mvr.server.errors import FailedPrecondition
from mvr.server.metadata import MetaValue
from mvr.server.metadata_index import MetadataIndex

CATALOG = "catalog.sqlite"
VECTORS = "vectors.bin"
_MIN_CAPACITY = 1 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS config (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    label INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    text TEXT,
    metadata TEXT NOT NULL,
    vec_offset INTEGER NOT NULL,
    n_tokens INTEGER NOT NULL,
    truncated INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tombstones (label INTEGER PRIMARY KEY, n_tokens INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS codecs (version INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS drift (
    codec_version INTEGER PRIMARY KEY,
    weighted_sum REAL NOT NULL,
    weight REAL NOT NULL,
    tokens INTEGER NOT NULL,
    first_new_label INTEGER NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS text_index USING fts5(text, tokenize = 'porter unicode61');
CREATE TABLE IF NOT EXISTS metadata_values (
    label INTEGER NOT NULL, key TEXT NOT NULL, kind TEXT NOT NULL, value
);
CREATE INDEX IF NOT EXISTS metadata_by_value ON metadata_values (key, kind, value);
CREATE INDEX IF NOT EXISTS metadata_by_label ON metadata_values (label);
"""
# drift: the drift measure of the codec of that version (see DriftState), written with the codec and
# then with the codes it counts; rows of superseded codecs go with them. A codec without a row (trained
# before the measure was stored) counts every document it codes from the next open.
# metadata_values: one row per metadata key of a live document (per entry of a list), typed (see
# mvr.server.metadata): what filters are evaluated against, in SQL, by index range scans. Written in
# the same transactions as the documents; filled once at open for collections from before it.
# text_index: SQLite FTS5 over the documents' texts (rowid = label), written in the same transactions
# as the documents: keyword (BM25) search sees exactly the acknowledged documents. Porter stemming and
# Unicode word splitting: "deleting" finds "delete". A collection written before it existed gets it
# filled once at open (state key text_indexed).
_WORD = re.compile(r"\w+")
MAX_KEYWORD_TERMS = 64
CODES = "codes.bin"
REWRITE_SUFFIX = ".rewrite"  # codes.bin.rewrite: the code file of a retrained codec, until committed
NO_OFFSET = -1  # a document without vectors (dropped after coding) or without codes (not coded yet)
# the metadata of every record that has none: one read-only mapping rather than an empty dict each
# (a record is resident for every live document: bench/profile_search.py measures the bytes)
NO_METADATA: Mapping[str, MetaValue] = MappingProxyType({})


def record_metadata(metadata: Mapping[str, MetaValue]) -> Mapping[str, MetaValue]:
    """What a record keeps of a document's metadata: a copy, or the shared empty mapping."""
    return dict(metadata) if metadata else NO_METADATA


def stored_metadata(text: str) -> dict[str, MetaValue]:
    """A catalog row's metadata JSON as values (JSON arrays are the lists of strings)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(text).items()}


@dataclass(frozen=True)
class DriftState:
    """The live codec's drift measure as stored (the indexer's :class:`mvr.server.indexer.DriftMeter`
    computes it): the decayed sums of newly coded tokens' squared residual norms and of their weights,
    the tokens observed since the codec was trained, and the first label written after its training
    sample was drawn (the documents it counts, whichever path codes them). Kept so that a restart,
    clean or not, goes on measuring from where the last committed codes left it."""

    weighted_sum: float = 0.0
    weight: float = 0.0
    tokens: int = 0
    first_new_label: int = 0


@dataclass(frozen=True, slots=True)
class Record:
    """One live document version, as the search path sees it. Resident for every live document:
    slotted, and metadata read-only (never mutated in place; the empty one is shared)."""

    label: int
    id: str
    metadata: Mapping[str, MetaValue]
    offset: int  # byte offset in the vector file, NO_OFFSET once its vectors were dropped
    n_tokens: int
    truncated: bool
    segment: MappedFile  # the mapping that holds its vectors
    code_offset: int = NO_OFFSET  # byte offset of its block in the code file, NO_OFFSET until coded
    code_segment: MappedFile | None = None  # the mapping that holds its codes
    codec: Codec | None = None  # the codec its codes were written with (None until coded)

    @property
    def has_vectors(self) -> bool:
        return self.offset != NO_OFFSET

    @property
    def coded(self) -> bool:
        return self.code_offset != NO_OFFSET

    def vectors(self) -> np.ndarray:
        """The stored vectors in the storage dtype (only while the document still has them)."""
        if not self.has_vectors:
            raise ValueError(f"document {self.id!r} keeps only its codes")
        return self.segment.read(self.offset, self.n_tokens)


@dataclass
class NewDocument:
    """A document ready to store: vectors already encoded, float32 (n, dim)."""

    id: str
    vectors: np.ndarray
    text: str | None
    metadata: dict[str, MetaValue]
    truncated: bool


class MappedFile:
    """A read-only memory map of an append-only file, valid for every offset below its capacity."""

    def __init__(self, path: Path, capacity: int, dim: int, dtype: np.dtype) -> None:
        self.dim, self.dtype, self.capacity = dim, dtype, capacity
        with path.open("rb") as handle:
            self._map = mmap.mmap(handle.fileno(), capacity, access=mmap.ACCESS_READ)
        self.bytes = np.frombuffer(self._map, dtype=np.uint8)

    def read(self, offset: int, n_tokens: int) -> np.ndarray:
        size = n_tokens * self.dim * self.dtype.itemsize
        return self.bytes[offset : offset + size].view(self.dtype).reshape(n_tokens, self.dim)


class AppendFile:
    """One append-only data file: durable appends at ``end`` (pwrite + fdatasync), capacity grown in
    doubling steps (sparse), and the current read-only mapping."""

    def __init__(self, path: Path, end: int, dim: int, dtype: np.dtype) -> None:
        self.path, self.end, self._dim, self._dtype = path, end, dim, dtype
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        capacity = max(_MIN_CAPACITY, os.fstat(self._fd).st_size, end)
        os.ftruncate(self._fd, capacity)
        self.mapping = MappedFile(path, capacity, dim, dtype)

    def append(self, blob: bytes) -> int:
        """Writes ``blob`` durably at ``end``; returns its offset. The caller commits the new end."""
        offset = self.end
        self._ensure_capacity(offset + len(blob))
        written = os.pwrite(self._fd, blob, offset)
        if written != len(blob):
            raise OSError(f"short write to {self.path}: {written} of {len(blob)} bytes")
        os.fdatasync(self._fd)
        return offset

    def _ensure_capacity(self, end: int) -> None:
        if end <= self.mapping.capacity:
            return
        capacity = self.mapping.capacity
        while capacity < end:
            capacity *= 2
        os.ftruncate(self._fd, capacity)  # sparse: no bytes written until used
        self.mapping = MappedFile(self.path, capacity, self._dim, self._dtype)

    def replaced(self, end: int) -> None:
        """The file at ``path`` was replaced by a compacted copy ending at ``end``: reopen and remap."""
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_RDWR)
        self.end = end
        self.mapping = MappedFile(self.path, os.fstat(self._fd).st_size, self._dim, self._dtype)

    def close(self) -> None:
        os.close(self._fd)


def write_compacted(path: Path, blocks: Iterable[bytes]) -> list[int]:
    """Writes ``blocks`` back to back into ``path`` (fsynced); returns their offsets."""
    offsets, position = [], 0
    with path.open("wb") as handle:
        for block in blocks:
            handle.write(block)
            offsets.append(position)
            position += len(block)
        handle.truncate(max(_MIN_CAPACITY, position))
        handle.flush()
        os.fsync(handle.fileno())
    offsets.append(position)
    return offsets


# float16 → float32 by table lookup: NumPy's astype converts at ~6 ns an element here, which made the
# conversion of the candidates' tokens the largest cost of a search; the 256 KiB table stays in cache.
_HALF_TO_FLOAT = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)


@numba.njit(cache=True)
def _gather_half(source, starts, counts, targets, table, out):
    """out[targets[r] + e] ← float32(source[starts[r] + e]) for e < counts[r]: float16 elements."""
    for r in range(starts.shape[0]):
        start, target = starts[r], targets[r]
        for e in range(counts[r]):
            out[target + e] = table[source[start + e]]


@numba.njit(cache=True)
def _gather_float(source, starts, counts, targets, out):
    for r in range(starts.shape[0]):
        out[targets[r] : targets[r] + counts[r]] = source[starts[r] : starts[r] + counts[r]]


def token_offsets(records: Sequence[Record]) -> np.ndarray:
    """Row offsets (len + 1) of the records' tokens stacked back to back."""
    offsets = np.zeros(len(records) + 1, dtype=np.int64)
    np.cumsum(np.fromiter((r.n_tokens for r in records), np.int64, len(records)), out=offsets[1:])
    return offsets


def read_vectors(
    mapping: MappedFile, byte_offsets: np.ndarray, n_tokens: np.ndarray, rows: np.ndarray, out: np.ndarray
) -> None:
    """Vectors stored in ``mapping`` (document i: ``n_tokens[i]`` rows at ``byte_offsets[i]``) into
    float32 ``out`` (n, dim), document i from row ``rows[i]``."""
    dim, itemsize = out.shape[1], mapping.dtype.itemsize
    starts, counts, targets = byte_offsets // itemsize, n_tokens * dim, rows * dim
    if itemsize == 2:
        _gather_half(mapping.bytes.view(np.uint16), starts, counts, targets, _HALF_TO_FLOAT, out.reshape(-1))
    else:
        _gather_float(mapping.bytes.view(np.float32), starts, counts, targets, out.reshape(-1))


class Store:
    """The catalog and vectors of one collection. One writer at a time (the caller serialises writes);
    any number of concurrent readers."""

    def __init__(self, directory: Path, dim: int, dtype: str, *, keep_vectors: bool = True) -> None:
        self.directory = directory
        self.dim = dim
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.keep_vectors = keep_vectors  # False: a coded document's vectors are dropped at compaction
        self._row_bytes = dim * self.dtype.itemsize
        directory.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(directory / CATALOG, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(documents)")}
        if "code_offset" not in columns:  # a collection written before codes existed
            self._db.execute(
                f"ALTER TABLE documents ADD COLUMN code_offset INTEGER NOT NULL DEFAULT {NO_OFFSET}"
            )
        self._db_lock = threading.Lock()  # sqlite3 connections are not safe for concurrent use
        self._recover_compaction()
        self._fill_text_index()
        self._fill_metadata_index()
        # keyword searches read on their own connection (WAL: they see committed transactions and never
        # wait for the writer's lock)
        self._readers = threading.local()  # one connection per searching thread: reads run in parallel
        self._reader_connections: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        self.next_label = self._state("next_label", 0)
        self._vectors = AppendFile(directory / VECTORS, self._state("vectors_end", 0), dim, self.dtype)
        self._codes = AppendFile(directory / CODES, self._state("codes_end", 0), 1, np.dtype(np.uint8))
        self.codec = self._load_codec()
        (self.codec_generation,) = self._db.execute("SELECT COALESCE(MAX(version), 0) FROM codecs").fetchone()
        # live tokens when the codec was trained (0: unknown, a collection from before retraining)
        self.codec_trained_tokens = self._state("codec_trained_tokens", 0)
        self.drift = self._load_drift()
        self.records: dict[str, Record] = {}
        self.by_label: dict[int, Record] = {}
        # the live versions' metadata as resident columns, what filtered searches evaluate
        self.metadata_index = MetadataIndex()
        self.live_tokens = 0  # tokens of the live documents
        self._load_records()

    # ------------------------------------------------------------------------------ config

    @staticmethod
    def config_at(directory: Path) -> dict | None:
        """The collection config stored in ``directory`` (None if there is none), read-only."""
        path = directory / CATALOG
        if not path.exists():
            return None
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM config WHERE key = 'collection'").fetchone()
        except sqlite3.OperationalError:
            return None
        finally:
            db.close()
        return None if row is None else json.loads(row[0])

    @staticmethod
    def rewrite_config(directory: Path, config: dict) -> None:
        """Replaces the collection config in ``directory``'s catalog (a closed collection: a restore
        renaming its snapshot), durably."""
        with contextlib.closing(sqlite3.connect(directory / CATALOG, isolation_level=None)) as db:
            db.execute("PRAGMA synchronous=FULL")
            db.execute(
                "INSERT OR REPLACE INTO config (key, value) VALUES ('collection', ?)", (json.dumps(config),)
            )

    def read_config(self) -> dict | None:
        with self._db_lock:
            row = self._db.execute("SELECT value FROM config WHERE key = 'collection'").fetchone()
        return None if row is None else json.loads(row[0])

    def write_config(self, config: dict) -> None:
        with self._db_lock:
            self._db.execute(
                "INSERT OR REPLACE INTO config (key, value) VALUES ('collection', ?)", (json.dumps(config),)
            )

    # ------------------------------------------------------------------------------ state

    def _state(self, key: str, default: int) -> int:
        row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return default if row is None else int(row[0])

    @property
    def vectors_end(self) -> int:
        return self._vectors.end

    @property
    def codes_end(self) -> int:
        return self._codes.end

    @property
    def codes_mapping(self) -> MappedFile:
        return self._codes.mapping

    def _fill_text_index(self) -> None:
        if not self._state("text_indexed", 0):
            self._refill(
                "DELETE FROM text_index",
                "INSERT INTO text_index (rowid, text) "
                "SELECT label, text FROM documents WHERE text IS NOT NULL",
                flag="text_indexed",
            )

    def _fill_metadata_index(self) -> None:
        if not self._state("metadata_indexed", 0):
            rows = self._db.execute("SELECT label, metadata FROM documents").fetchall()
            values = [row for label, text in rows for row in meta.rows(label, stored_metadata(text))]
            self._refill(
                "DELETE FROM metadata_values",
                ("INSERT INTO metadata_values VALUES (?, ?, ?, ?)", values),
                flag="metadata_indexed",
            )

    def _refill(self, clear: str, fill: str | tuple[str, list], flag: str) -> None:
        """Rebuilds one derived table of a collection written before it existed, in one transaction."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(clear)
            if isinstance(fill, str):
                self._db.execute(fill)
            else:
                self._db.executemany(*fill)
            self._set_state({flag: 1})
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection to the catalog (WAL: it sees committed transactions and never
        waits for the writer)."""
        connection = getattr(self._readers, "connection", None)
        if connection is None:
            with self._readers_lock:
                if self._closed:
                    raise FailedPrecondition("the collection is closed")
                connection = sqlite3.connect(
                    self.directory / CATALOG, check_same_thread=False, isolation_level=None
                )
                self._reader_connections.append(connection)
            self._readers.connection = connection
        return connection

    def _read(self, sql: str, params: Sequence[object]) -> list[tuple]:
        try:
            return self._reader().execute(sql, params).fetchall()
        except sqlite3.ProgrammingError as error:  # closed under a search in flight
            raise FailedPrecondition("the collection is closed") from error

    def matching(self, sql: str, params: Sequence[object]) -> set[int]:
        """The labels a compiled filter (:func:`mvr.server.metadata.to_sql`) selects."""
        return {row[0] for row in self._read(sql, params)}

    def keyword_search(
        self, text: str, limit: int, where: tuple[str, Sequence[object]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``limit`` (labels, BM25 scores) of the documents whose text holds any word of ``text``
        (and that match the compiled filter ``where``), best first (SQLite FTS5's bm25, negated so that
        higher is better). Words only: FTS5's query syntax (quotes, NEAR, column filters, *) is not
        exposed, so that any text is a valid query."""
        terms = list(dict.fromkeys(word.lower() for word in _WORD.findall(text)))[:MAX_KEYWORD_TERMS]
        if not terms or limit <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        match = " OR ".join(f'"{term}"' for term in terms)  # \w+ holds no quote: nothing to escape
        sql, params = (
            "SELECT rowid, -bm25(text_index) AS score FROM text_index WHERE text_index MATCH ?",
            [match],
        )
        if where is not None:
            sql += f" AND rowid IN ({where[0]})"
            params += list(where[1])
        rows = self._read(f"{sql} ORDER BY score DESC LIMIT ?", [*params, limit])
        labels = np.array([row[0] for row in rows], dtype=np.int64)
        return labels, np.array([row[1] for row in rows], dtype=np.float32)

    def _load_records(self) -> None:
        rows = self._db.execute(
            "SELECT label, id, metadata, vec_offset, n_tokens, truncated, code_offset FROM documents"
        ).fetchall()
        vectors, codes = self._vectors.mapping, self._codes.mapping
        for label, doc_id, metadata, offset, n_tokens, truncated, code_offset in rows:
            record = Record(
                label,
                doc_id,
                record_metadata(stored_metadata(metadata)),
                offset,
                n_tokens,
                bool(truncated),
                vectors,
                code_offset,
                codes,
                self.codec if code_offset != NO_OFFSET else None,
            )
            self.records[doc_id] = record
            self.by_label[label] = record
            self.live_tokens += n_tokens
        self.metadata_index.add((r.label, r.metadata) for r in self.by_label.values())

    # ------------------------------------------------------------------------------ codes

    def _load_codec(self) -> Codec | None:
        row = self._db.execute("SELECT data FROM codecs ORDER BY version DESC LIMIT 1").fetchone()
        return None if row is None else Codec.from_bytes(row[0])

    def _load_drift(self) -> DriftState:
        row = self._db.execute(
            "SELECT weighted_sum, weight, tokens, first_new_label FROM drift WHERE codec_version = ?",
            (self.codec_generation,),
        ).fetchone()
        if row is None:
            return DriftState()
        weighted_sum, weight, tokens, first_new_label = row
        return DriftState(float(weighted_sum), float(weight), int(tokens), int(first_new_label))

    def _write_drift(self, version: int, drift: DriftState) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO drift VALUES (?, ?, ?, ?, ?)",
            (version, drift.weighted_sum, drift.weight, drift.tokens, drift.first_new_label),
        )

    def set_codec(self, codec: Codec, trained_tokens: int, first_new_label: int) -> None:
        """Commits the collection's first codec, trained when the collection held ``trained_tokens`` on
        documents labelled below ``first_new_label`` (later ones come with a rewrite of the code file,
        :meth:`commit_rewrite`: every code in the file belongs to the latest codec)."""
        if self.codec is not None:
            raise ValueError("the collection already has a codec; a new one needs commit_rewrite")
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT INTO codecs (version, data) VALUES (1, ?)", (codec.to_bytes(),))
                self._set_state({"codec_trained_tokens": trained_tokens})
                drift = DriftState(first_new_label=first_new_label)
                self._write_drift(1, drift)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self.codec, self.codec_trained_tokens, self.codec_generation = codec, trained_tokens, 1
        self.drift = drift

    def begin_rewrite(self, codec: Codec, trained_tokens: int, first_new_label: int) -> CodeRewrite:
        """Starts a code file for ``codec`` (trained when the collection held ``trained_tokens``, on
        documents labelled below ``first_new_label``) beside the live one: the live file and codec serve
        every search until :meth:`commit_rewrite`."""
        return CodeRewrite(self.directory / (CODES + REWRITE_SUFFIX), codec, trained_tokens, first_new_label)

    def commit_rewrite(self, rewrite: CodeRewrite) -> list[Record]:
        """Makes ``rewrite``'s file and codec the collection's, in one SQLite commit; returns every live
        record as it now stands. The caller holds the write lock and has rewritten every live coded
        record (a live record coded with the old codec and missing here would lose its codes).

        Crash safety as in :meth:`compact`: before the commit the old file, codec and offsets stand and
        the partial file is deleted on open; after it the rename is completed on open."""
        missing = [r.id for r in self.records.values() if r.coded and r.label not in rewrite.offsets]
        if missing:
            raise ValueError(f"rewrite lacks {len(missing)} coded documents, e.g. {missing[0]!r}")
        end = rewrite.finish()
        live = list(self.records.values())
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                (version,) = self._db.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM codecs").fetchone()
                self._db.execute(
                    "INSERT INTO codecs (version, data) VALUES (?, ?)", (version, rewrite.codec.to_bytes())
                )
                # no code refers to an older codec once this commits (the generation is MAX(version))
                self._db.execute("DELETE FROM codecs WHERE version < ?", (version,))
                self._db.execute("DELETE FROM drift WHERE codec_version < ?", (version,))
                drift = DriftState(first_new_label=rewrite.first_new_label)
                self._write_drift(version, drift)
                self._db.executemany(
                    "UPDATE documents SET code_offset = ? WHERE label = ?",
                    [(rewrite.offsets.get(r.label, NO_OFFSET), r.label) for r in live],
                )
                self._set_state(
                    {
                        "codes_end": end,
                        "rewritten_pending_rename": 1,
                        "codec_trained_tokens": rewrite.trained_tokens,
                    }
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                rewrite.discard()
                raise
        rewrite.committed = True  # from here the file is the collection's: never discarded
        os.replace(rewrite.path, self.directory / CODES)
        fsync_directory(self.directory)
        self._codes.replaced(end)
        with self._db_lock:
            self._db.execute("DELETE FROM state WHERE key = 'rewritten_pending_rename'")
            # the superseded codec's pages (its centroids: 2–4 MiB) back to the file system, and the
            # WAL the rewrite's offsets grew folded in and truncated
            self._db.execute("VACUUM")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.codec, self.codec_trained_tokens, self.codec_generation = (
            rewrite.codec,
            rewrite.trained_tokens,
            version,
        )
        self.drift = drift  # the new codec has measured nothing yet
        codes = self._codes.mapping
        for record in live:
            offset = rewrite.offsets.get(record.label, NO_OFFSET)
            moved = replace(
                record,
                code_offset=offset,
                code_segment=codes,
                codec=rewrite.codec if offset != NO_OFFSET else None,
            )
            self.records[moved.id] = moved
            self.by_label[moved.label] = moved
        return list(self.records.values())

    def add_codes(
        self, records: Sequence[Record], blocks: Sequence[bytes], drift: DriftState | None = None
    ) -> list[Record]:
        """Stores the code blocks of ``records`` durably (same write order as :meth:`upsert`) and swaps
        in records that point at them; returns the new records of the versions still live. ``drift``:
        the live codec's drift measure once these codes are counted, committed with them."""
        offset = self._codes.append(b"".join(blocks))
        offsets = np.cumsum([offset] + [len(b) for b in blocks]).tolist()
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "UPDATE documents SET code_offset = ? WHERE label = ?",
                    [(o, r.label) for o, r in zip(offsets, records, strict=False)],
                )
                self._set_state({"codes_end": offsets[-1]})
                if drift is not None:
                    self._write_drift(self.codec_generation, drift)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self._codes.end = offsets[-1]
        if drift is not None:
            self.drift = drift
        mapping, coded = self._codes.mapping, []
        for record, code_offset in zip(records, offsets, strict=False):
            if self.by_label.get(record.label) is not record:
                continue  # replaced or deleted meanwhile: its code block is dead bytes
            current = replace(record, code_offset=code_offset, code_segment=mapping, codec=self.codec)
            self.records[current.id] = current
            self.by_label[current.label] = current
            coded.append(current)
        return coded

    # ------------------------------------------------------------------------------ writes

    def upsert(self, docs: Sequence[NewDocument]) -> tuple[list[Record], list[Record | None]]:
        """Stores a batch atomically and durably. Returns the new records and, per document, the record
        it replaced (None for a new id)."""
        blob = b"".join(np.ascontiguousarray(d.vectors, dtype=self.dtype).tobytes() for d in docs)
        start = self._vectors.append(blob)
        offsets = (start + self._row_bytes * np.cumsum([0] + [len(d.vectors) for d in docs])).tolist()
        new_end = offsets.pop()
        replaced = [self.records.get(d.id) for d in docs]
        labels = list(range(self.next_label, self.next_label + len(docs)))
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                old = [(r.label, r.n_tokens) for r in replaced if r is not None]
                self._drop_labels([label for label, _ in old])
                self._db.executemany(
                    "INSERT INTO metadata_values VALUES (?, ?, ?, ?)",
                    [
                        row
                        for label, d in zip(labels, docs, strict=True)
                        for row in meta.rows(label, d.metadata)
                    ],
                )
                self._db.executemany("INSERT INTO tombstones (label, n_tokens) VALUES (?, ?)", old)
                self._db.executemany(
                    "INSERT INTO text_index (rowid, text) VALUES (?, ?)",
                    [(label, d.text) for label, d in zip(labels, docs, strict=True) if d.text is not None],
                )
                self._db.executemany(
                    "INSERT INTO documents (label, id, text, metadata, vec_offset, n_tokens, truncated) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            label,
                            d.id,
                            d.text,
                            json.dumps(d.metadata),
                            offset,
                            len(d.vectors),
                            int(d.truncated),
                        )
                        for label, d, offset in zip(labels, docs, offsets, strict=True)
                    ],
                )
                self._set_state({"vectors_end": new_end, "next_label": labels[-1] + 1})
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self._vectors.end, self.next_label = new_end, labels[-1] + 1
        mapping, codes = self._vectors.mapping, self._codes.mapping
        records = [
            Record(
                label,
                d.id,
                record_metadata(d.metadata),
                offset,
                len(d.vectors),
                d.truncated,
                mapping,
                NO_OFFSET,
                codes,
            )
            for label, d, offset in zip(labels, docs, offsets, strict=True)
        ]
        # filterable before they are searchable, and searchable until they are not filterable: a
        # filtered search never selects a version its candidates cannot hold (exact_stage skips those)
        self.metadata_index.add((r.label, r.metadata) for r in records)
        for record in records:
            self.records[record.id] = record
            self.by_label[record.label] = record
            self.live_tokens += record.n_tokens
        for record in replaced:
            if record is not None:
                self.by_label.pop(record.label, None)
                self.live_tokens -= record.n_tokens
        self.metadata_index.remove((r.label, r.metadata) for r in replaced if r is not None)
        return records, replaced

    def delete(self, ids: Iterable[str]) -> list[Record | None]:
        """Deletes documents durably; returns the removed record per id (None where absent)."""
        removed = [self.records.get(i) for i in ids]
        present = [r for r in removed if r is not None]
        if present:
            with self._db_lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._drop_labels([r.label for r in present])
                    self._db.executemany(
                        "INSERT OR IGNORE INTO tombstones (label, n_tokens) VALUES (?, ?)",
                        [(r.label, r.n_tokens) for r in present],
                    )
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            for record in present:
                self.records.pop(record.id, None)
                self.by_label.pop(record.label, None)
                self.live_tokens -= record.n_tokens
            self.metadata_index.remove((r.label, r.metadata) for r in present)
        return removed

    def _drop_labels(self, labels: list[int]) -> None:
        """Removes document versions from the catalog and every table derived from it (inside the
        caller's transaction)."""
        rows = [(label,) for label in labels]
        self._db.executemany("DELETE FROM documents WHERE label = ?", rows)
        self._db.executemany("DELETE FROM text_index WHERE rowid = ?", rows)
        self._db.executemany("DELETE FROM metadata_values WHERE label = ?", rows)

    def _set_state(self, values: dict[str, int]) -> None:
        self._db.executemany("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", list(values.items()))

    # ------------------------------------------------------------------------------ reads

    def text_of(self, doc_id: str) -> str | None:
        with self._db_lock:
            row = self._db.execute("SELECT text FROM documents WHERE id = ?", (doc_id,)).fetchone()
        return None if row is None else row[0]

    def ids_after(
        self, after: str | None, limit: int, where: tuple[str, Sequence[object]] | None = None
    ) -> list[str]:
        """Up to ``limit`` live ids greater than ``after``, in order (SQLite's index on id); with
        ``where`` (a compiled filter: SQL and parameters), only those of matching documents."""
        sql, params = "SELECT id FROM documents WHERE id > ?", [after or ""]
        if where is not None:
            sql += f" AND label IN ({where[0]})"
            params += list(where[1])
        return [row[0] for row in self._read(f"{sql} ORDER BY id LIMIT ?", [*params, limit])]

    def _needs_vectors(self, record: Record) -> bool:
        return record.has_vectors and (self.keep_vectors or not record.coded)

    def _code_bytes(self, record: Record) -> int:
        return 0 if record.codec is None else record.n_tokens * record.codec.token_bytes

    def live_bytes(self) -> tuple[int, int]:
        """(vector bytes, code bytes) that a compaction would keep."""
        records = list(self.records.values())
        vectors = sum(r.n_tokens for r in records if self._needs_vectors(r)) * self._row_bytes
        return vectors, sum(self._code_bytes(r) for r in records)

    def dead_bytes(self) -> int:
        """Bytes a compaction would reclaim: replaced and deleted versions, and the vectors of coded
        documents when the collection keeps codes only."""
        vectors, codes = self.live_bytes()
        return self.vectors_end - vectors + self.codes_end - codes

    def bytes_on_disk(self) -> dict[str, int]:
        sqlite_bytes = sum(
            p.stat().st_size for p in self.directory.glob(CATALOG + "*") if p.is_file()
        )  # the database, its WAL and shared-memory files
        return {"vectors": self.vectors_end, "codes": self.codes_end, "sqlite": sqlite_bytes}

    # ------------------------------------------------------------------------------ snapshots

    def view(self) -> StoreView:
        """The store as it stands now, readable while writes go on (for a snapshot). The caller holds
        the write lock, so that no upsert, delete, compaction or code rewrite is half done; the view
        is taken in microseconds and the lock can go at once."""
        return StoreView(self.directory, self._row_bytes, self.keep_vectors)

    # ------------------------------------------------------------------------------ compaction

    def compact(self) -> int:
        """Rewrites the vector and code files with only what live documents need; returns the bytes
        reclaimed.

        The caller holds the write lock; searches go on, reading records that point into the old maps
        until the new records are swapped in."""
        before = self.vectors_end + self.codes_end
        live = sorted(self.records.values(), key=lambda r: r.label)
        with_vectors = [r for r in live if self._needs_vectors(r)]
        with_codes = [r for r in live if r.coded]
        vector_temp = self.directory / (VECTORS + ".compact")
        code_temp = self.directory / (CODES + ".compact")
        vector_offsets = write_compacted(vector_temp, (r.vectors().tobytes() for r in with_vectors))
        code_offsets = write_compacted(
            code_temp,
            (
                r.code_segment.bytes[r.code_offset : r.code_offset + self._code_bytes(r)].tobytes()
                for r in with_codes
            ),
        )
        new_vector = dict(zip((r.label for r in with_vectors), vector_offsets, strict=False))
        new_code = dict(zip((r.label for r in with_codes), code_offsets, strict=False))
        # The SQLite commit is the switch: before it, the old files and old offsets stand (leftover
        # .compact files are deleted on open); after it, the new offsets stand and the renames are
        # completed on open if a crash came first (see _recover_compaction).
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "UPDATE documents SET vec_offset = ?, code_offset = ? WHERE label = ?",
                    [
                        (new_vector.get(r.label, NO_OFFSET), new_code.get(r.label, NO_OFFSET), r.label)
                        for r in live
                    ],
                )
                self._db.execute("DELETE FROM tombstones")
                self._set_state(
                    {
                        "vectors_end": vector_offsets[-1],
                        "codes_end": code_offsets[-1],
                        "compacted_pending_rename": 1,
                    }
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                vector_temp.unlink(missing_ok=True)
                code_temp.unlink(missing_ok=True)
                raise
        self._finish_compaction(vector_offsets[-1], code_offsets[-1])
        with self._db_lock:  # the rewrite of every row grew the WAL: fold it in and truncate it
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        vectors, codes = self._vectors.mapping, self._codes.mapping
        for record in live:
            moved = replace(
                record,
                offset=new_vector.get(record.label, NO_OFFSET),
                segment=vectors,
                code_offset=new_code.get(record.label, NO_OFFSET),
                code_segment=codes,
            )
            self.records[moved.id] = moved
            self.by_label[moved.label] = moved
        return before - self.vectors_end - self.codes_end

    def _recover_compaction(self) -> None:
        """Completes the renames of a compaction or code rewrite committed just before a crash, and
        deletes the partial files of one that was not."""
        moves = [(VECTORS, ".compact", "compacted"), (CODES, ".compact", "compacted")]
        moves.append((CODES, REWRITE_SUFFIX, "rewritten"))
        for name, suffix, flag in moves:
            temporary = self.directory / (name + suffix)
            if self._state(f"{flag}_pending_rename", 0):
                if temporary.exists():
                    os.replace(temporary, self.directory / name)
            else:
                temporary.unlink(missing_ok=True)
        self._db.execute(
            "DELETE FROM state WHERE key IN ('compacted_pending_rename', 'rewritten_pending_rename')"
        )

    def _finish_compaction(self, vectors_end: int, codes_end: int) -> None:
        for name in (VECTORS, CODES):
            os.replace(self.directory / (name + ".compact"), self.directory / name)
        fsync_directory(self.directory)
        self._vectors.replaced(vectors_end)
        self._codes.replaced(codes_end)
        with self._db_lock:
            self._db.execute("DELETE FROM state WHERE key = 'compacted_pending_rename'")

    def close(self) -> None:
        with self._readers_lock:
            self._closed = True
            for connection in self._reader_connections:
                connection.close()
        with self._db_lock:
            self._db.close()
        self._vectors.close()
        self._codes.close()


def fsync_directory(directory: Path) -> None:
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


class StoreView:
    """A consistent, frozen view of a store, copied out compacted (for a snapshot).

    A read transaction on the catalog (WAL: writers go on, the view keeps seeing the instant it began)
    and open handles on the vector and code files. Compaction and code rewrites replace those files by
    rename, and appends land past the ends the view's catalog records, so the bytes the view's catalog
    points at stay as they were while the handles are open. The copy holds only what the live
    documents need, as a compaction would leave it: no replaced or deleted versions, and no float
    vectors of coded documents unless the collection keeps them."""

    def __init__(self, directory: Path, row_bytes: int, keep_vectors: bool) -> None:
        self._row_bytes, self._keep_vectors = row_bytes, keep_vectors
        self._db = sqlite3.connect(directory / CATALOG, check_same_thread=False, isolation_level=None)
        self._db.execute("BEGIN")
        # the first read opens the transaction's snapshot: everything below is as of this instant
        (self.documents,) = self._db.execute("SELECT COUNT(*) FROM documents").fetchone()
        self._files = {name: (directory / name).open("rb") for name in (VECTORS, CODES)}
        self.data: dict[str, ByteRanges] = {}  # VECTORS / CODES → what the copy holds, once written

    def write_catalog(self, path: Path) -> None:
        """Writes the catalog as of the view's instant (SQLite's online backup, read inside the view's
        transaction) to ``path``, with the offsets of the compacted data files (:attr:`data`), then
        ends the view's transaction: held open, it would keep checkpoints (compaction, code rewrites)
        waiting and the WAL growing while the files are copied."""
        target = sqlite3.connect(path, isolation_level=None)
        try:
            self._db.backup(target)
            self._db.close()  # the transaction's end; the file handles keep the data
            target.execute("PRAGMA journal_mode=DELETE")  # one file: no WAL beside it in the snapshot
            target.execute("BEGIN")
            self._compact_rows(target)
            target.execute("COMMIT")
        finally:
            target.close()

    @staticmethod
    def raise_next_label(path: Path, at_least: int) -> None:
        """Raises the next label of the catalog copy at ``path`` to ``at_least``: a snapshot may hold
        graph entries of versions written after its instant, whose labels must never be handed out
        again."""
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
            row = db.execute("SELECT value FROM state WHERE key = 'next_label'").fetchone()
            value = max(0 if row is None else int(row[0]), at_least)
            db.execute("INSERT OR REPLACE INTO state (key, value) VALUES ('next_label', ?)", (value,))

    def _compact_rows(self, target: sqlite3.Connection) -> None:
        rows = target.execute("SELECT label, vec_offset, n_tokens, code_offset FROM documents").fetchall()
        labels, vec_offsets, n_tokens, code_offsets = np.array(rows, dtype=np.int64).reshape(-1, 4).T
        codec = target.execute("SELECT data FROM codecs ORDER BY version DESC LIMIT 1").fetchone()
        token_bytes = 0 if codec is None else Codec.from_bytes(codec[0]).token_bytes
        coded = code_offsets != NO_OFFSET
        with_vectors = (vec_offsets != NO_OFFSET) & (self._keep_vectors | ~coded)
        vectors = ByteRanges(self._files[VECTORS], vec_offsets, n_tokens * self._row_bytes, with_vectors)
        codes = ByteRanges(self._files[CODES], code_offsets, n_tokens * token_bytes, coded)
        target.executemany(
            "UPDATE documents SET vec_offset = ?, code_offset = ? WHERE label = ?",
            zip(vectors.new_offsets.tolist(), codes.new_offsets.tolist(), labels.tolist(), strict=True),
        )
        target.execute("DELETE FROM tombstones")
        target.executemany(
            "INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)",
            [("vectors_end", vectors.size), ("codes_end", codes.size)],
        )
        self.data = {VECTORS: vectors, CODES: codes}

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._db.close()  # (a no-op once write_catalog closed it)


class ByteRanges:
    """Some byte ranges of a file read back to back, in file order, as one stream (``read``), and the
    offset each row's range gets in that stream (``NO_OFFSET`` for rows not ``selected``)."""

    def __init__(
        self, handle: BinaryIO, offsets: np.ndarray, lengths: np.ndarray, selected: np.ndarray
    ) -> None:
        rows = np.flatnonzero(selected)
        rows = rows[np.argsort(offsets[rows], kind="stable")]  # file order: the file is read forwards
        starts, sizes = offsets[rows], lengths[rows]
        self.new_offsets = np.full(len(offsets), NO_OFFSET, dtype=np.int64)
        self.new_offsets[rows] = np.cumsum(sizes) - sizes
        self.size = int(sizes.sum())
        self._runs = _merged_runs(starts.tolist(), sizes.tolist())
        self._fd = handle.fileno()
        self._run, self._within = 0, 0

    def read(self, size: int = -1) -> bytes:
        """The next ``size`` bytes of the stream (all that is left for -1)."""
        parts, wanted = [], self.size if size < 0 else size
        while wanted > 0 and self._run < len(self._runs):
            start, length = self._runs[self._run]
            take = min(wanted, length - self._within)
            part = os.pread(self._fd, take, start + self._within)
            if len(part) != take:
                raise OSError(f"short read: {len(part)} of {take} bytes at {start + self._within}")
            parts.append(part)
            wanted -= take
            self._within += take
            if self._within == length:
                self._run, self._within = self._run + 1, 0
        return b"".join(parts)


def _merged_runs(starts: list[int], sizes: list[int]) -> list[tuple[int, int]]:
    """(offset, length) runs of the ranges (in file order), adjacent ones merged into one read."""
    runs: list[tuple[int, int]] = []
    for start, size in zip(starts, sizes, strict=True):
        if runs and runs[-1][0] + runs[-1][1] == start:
            runs[-1] = (runs[-1][0], runs[-1][1] + size)
        else:
            runs.append((start, size))
    return runs


class CodeRewrite:
    """A code file being written for a new codec beside the live one (see :meth:`Store.begin_rewrite`):
    blocks appended in any label order, fsynced once at commit. Nothing in it counts until
    :meth:`Store.commit_rewrite`; a crash leaves a partial file that the next open deletes."""

    def __init__(self, path: Path, codec: Codec, trained_tokens: int, first_new_label: int) -> None:
        self.path, self.codec, self.trained_tokens = path, codec, trained_tokens
        self.first_new_label = first_new_label  # documents from here on are new to the codec
        self.offsets: dict[int, int] = {}  # label → byte offset of its block
        self.committed = False  # set once the catalog points into this file
        self._handle = path.open("wb")
        self._position = 0

    def append(self, records: Sequence[Record], blocks: Sequence[bytes]) -> None:
        for record, block in zip(records, blocks, strict=True):
            self._handle.write(block)
            self.offsets[record.label] = self._position
            self._position += len(block)

    def finish(self) -> int:
        """Flushes and fsyncs the file (at least the minimum mapped size); returns its end."""
        self._handle.truncate(max(_MIN_CAPACITY, self._position))
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        return self._position

    def discard(self) -> None:
        """Deletes the file of a rewrite that was not committed (a no-op once it was)."""
        if self.committed:
            return
        if not self._handle.closed:
            self._handle.close()
        self.path.unlink(missing_ok=True)
