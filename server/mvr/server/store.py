"""Durable storage of one collection: SQLite catalog + append-only token-vector file.

Owns what survives a crash. Layout of a collection directory::

    catalog.sqlite   SQLite in WAL mode, synchronous=FULL: the config, and one row per live document
                     (external id ↔ internal label, text, metadata, offset and length of its vectors),
                     tombstones of replaced/deleted labels, and the state (next label, vectors end).
    vectors.bin      token vectors of every stored document version, back to back, row-major, in the
                     collection's storage dtype (float16 by default). Append-only between compactions;
                     preallocated in doubling steps (sparse), memory-mapped for reads.

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

import json
import mmap
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np

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
"""


@dataclass(frozen=True)
class Record:
    """One live document version, as the search path sees it."""

    label: int
    id: str
    metadata: dict[str, str]
    offset: int  # byte offset in the vector file
    n_tokens: int
    truncated: bool
    segment: VectorSegment  # the mapping that holds its vectors

    def vectors(self) -> np.ndarray:
        return self.segment.read(self.offset, self.n_tokens)


@dataclass
class NewDocument:
    """A document ready to store: vectors already encoded, float32 (n, dim)."""

    id: str
    vectors: np.ndarray
    text: str | None
    metadata: dict[str, str]
    truncated: bool


class VectorSegment:
    """A read-only memory map of the vector file, valid for every offset below its capacity."""

    def __init__(self, path: Path, capacity: int, dim: int, dtype: np.dtype) -> None:
        self.dim, self.dtype, self.capacity = dim, dtype, capacity
        with path.open("rb") as handle:
            self._map = mmap.mmap(handle.fileno(), capacity, access=mmap.ACCESS_READ)
        self._array = np.frombuffer(self._map, dtype=np.uint8)

    def read(self, offset: int, n_tokens: int) -> np.ndarray:
        size = n_tokens * self.dim * self.dtype.itemsize
        return self._array[offset : offset + size].view(self.dtype).reshape(n_tokens, self.dim)


# float16 → float32 by table lookup: NumPy's astype converts at ~6 ns an element here, which made the
# conversion of the candidates' tokens the largest cost of a search; the 256 KiB table stays in cache.
_HALF_TO_FLOAT = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)


@numba.njit(cache=True)
def _half_to_float(source, table, out):
    for i in range(source.size):
        out[i] = table[source[i]]


def gather(records: Sequence[Record], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The records' token vectors back to back as one float32 (n, dim) matrix, and their offsets."""
    offsets = np.zeros(len(records) + 1, dtype=np.int64)
    np.cumsum([r.n_tokens for r in records], out=offsets[1:])
    out = np.empty((int(offsets[-1]), dim), dtype=np.float32)
    for record, start, stop in zip(records, offsets[:-1], offsets[1:], strict=True):
        source = record.vectors()
        if source.dtype.itemsize == 2:
            _half_to_float(source.reshape(-1).view(np.uint16), _HALF_TO_FLOAT, out[start:stop].reshape(-1))
        else:
            out[start:stop] = source
    return out, offsets


class Store:
    """The catalog and vectors of one collection. One writer at a time (the caller serialises writes);
    any number of concurrent readers."""

    def __init__(self, directory: Path, dim: int, dtype: str) -> None:
        self.directory = directory
        self.dim = dim
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self._row_bytes = dim * self.dtype.itemsize
        directory.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(directory / CATALOG, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._db_lock = threading.Lock()  # sqlite3 connections are not safe for concurrent use
        self._vector_path = directory / VECTORS
        self._recover_compaction()
        self._fd = os.open(self._vector_path, os.O_RDWR | os.O_CREAT, 0o644)
        self.vectors_end = self._state("vectors_end", 0)
        self.next_label = self._state("next_label", 0)
        capacity = max(_MIN_CAPACITY, os.fstat(self._fd).st_size, self.vectors_end)
        os.ftruncate(self._fd, capacity)
        self._segment = VectorSegment(self._vector_path, capacity, dim, self.dtype)
        self.records: dict[str, Record] = {}
        self.by_label: dict[int, Record] = {}
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

    def _load_records(self) -> None:
        rows = self._db.execute(
            "SELECT label, id, metadata, vec_offset, n_tokens, truncated FROM documents"
        ).fetchall()
        for label, doc_id, metadata, offset, n_tokens, truncated in rows:
            record = Record(
                label, doc_id, json.loads(metadata), offset, n_tokens, bool(truncated), self._segment
            )
            self.records[doc_id] = record
            self.by_label[label] = record

    # ------------------------------------------------------------------------------ writes

    def _ensure_capacity(self, end: int) -> None:
        if end <= self._segment.capacity:
            return
        capacity = self._segment.capacity
        while capacity < end:
            capacity *= 2
        os.ftruncate(self._fd, capacity)  # sparse: no bytes written until used
        self._segment = VectorSegment(self._vector_path, capacity, self.dim, self.dtype)

    def _append_vectors(self, docs: Sequence[NewDocument]) -> list[int]:
        """Step 1 of a write: the vectors, durable, past the current end. Returns their offsets."""
        blob = b"".join(np.ascontiguousarray(d.vectors, dtype=self.dtype).tobytes() for d in docs)
        offsets, position = [], self.vectors_end
        for doc in docs:
            offsets.append(position)
            position += len(doc.vectors) * self._row_bytes
        self._ensure_capacity(position)
        written = os.pwrite(self._fd, blob, self.vectors_end)
        if written != len(blob):
            raise OSError(f"short write to {self._vector_path}: {written} of {len(blob)} bytes")
        os.fdatasync(self._fd)
        return offsets

    def upsert(self, docs: Sequence[NewDocument]) -> tuple[list[Record], list[Record | None]]:
        """Stores a batch atomically and durably. Returns the new records and, per document, the record
        it replaced (None for a new id)."""
        offsets = self._append_vectors(docs)
        new_end = offsets[-1] + len(docs[-1].vectors) * self._row_bytes
        replaced = [self.records.get(d.id) for d in docs]
        labels = list(range(self.next_label, self.next_label + len(docs)))
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                old = [(r.label, r.n_tokens) for r in replaced if r is not None]
                self._db.executemany("DELETE FROM documents WHERE label = ?", [(label,) for label, _ in old])
                self._db.executemany("INSERT INTO tombstones (label, n_tokens) VALUES (?, ?)", old)
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
        self.vectors_end, self.next_label = new_end, labels[-1] + 1
        records = [
            Record(label, d.id, dict(d.metadata), offset, len(d.vectors), d.truncated, self._segment)
            for label, d, offset in zip(labels, docs, offsets, strict=True)
        ]
        for record in records:
            self.records[record.id] = record
            self.by_label[record.label] = record
        for record in replaced:
            if record is not None:
                self.by_label.pop(record.label, None)
        return records, replaced

    def delete(self, ids: Iterable[str]) -> list[Record | None]:
        """Deletes documents durably; returns the removed record per id (None where absent)."""
        removed = [self.records.get(i) for i in ids]
        present = [r for r in removed if r is not None]
        if present:
            with self._db_lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany(
                        "DELETE FROM documents WHERE label = ?", [(r.label,) for r in present]
                    )
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
        return removed

    def _set_state(self, values: dict[str, int]) -> None:
        self._db.executemany("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", list(values.items()))

    # ------------------------------------------------------------------------------ reads

    def text_of(self, doc_id: str) -> str | None:
        with self._db_lock:
            row = self._db.execute("SELECT text FROM documents WHERE id = ?", (doc_id,)).fetchone()
        return None if row is None else row[0]

    def ids_after(self, after: str | None, limit: int) -> list[str]:
        """Up to ``limit`` live ids greater than ``after``, in order (SQLite's index on id)."""
        with self._db_lock:
            rows = self._db.execute(
                "SELECT id FROM documents WHERE id > ? ORDER BY id LIMIT ?", (after or "", limit)
            ).fetchall()
        return [row[0] for row in rows]

    def dead_bytes(self) -> int:
        with self._db_lock:
            (tokens,) = self._db.execute("SELECT COALESCE(SUM(n_tokens), 0) FROM tombstones").fetchone()
        return int(tokens) * self._row_bytes

    def bytes_on_disk(self) -> dict[str, int]:
        sqlite_bytes = sum(
            p.stat().st_size for p in self.directory.glob(CATALOG + "*") if p.is_file()
        )  # the database, its WAL and shared-memory files
        return {"vectors": self.vectors_end, "sqlite": sqlite_bytes}

    # ------------------------------------------------------------------------------ compaction

    def compact(self) -> int:
        """Rewrites the vector file with only live documents; returns the bytes reclaimed.

        The caller holds the write lock; searches go on, reading records that point into the old map
        until the new records are swapped in."""
        before = self.vectors_end
        live = sorted(self.records.values(), key=lambda r: r.offset)
        temporary = self.directory / (VECTORS + ".compact")
        new_offsets, position = [], 0
        with temporary.open("wb") as handle:
            for record in live:
                data = record.vectors().tobytes()
                handle.write(data)
                new_offsets.append(position)
                position += len(data)
            handle.truncate(max(_MIN_CAPACITY, position))
            handle.flush()
            os.fsync(handle.fileno())
        # The SQLite commit is the switch: before it, the old file and old offsets stand (a leftover
        # .compact file is deleted on open); after it, the new offsets stand and the rename is
        # completed on open if a crash came first (see _recover_compaction).
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "UPDATE documents SET vec_offset = ? WHERE label = ?",
                    [(offset, r.label) for offset, r in zip(new_offsets, live, strict=True)],
                )
                self._db.execute("DELETE FROM tombstones")
                self._set_state({"vectors_end": position, "compacted_pending_rename": 1})
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                temporary.unlink(missing_ok=True)
                raise
        self._finish_compaction(temporary)
        segment = VectorSegment(self._vector_path, os.fstat(self._fd).st_size, self.dim, self.dtype)
        self._segment, self.vectors_end = segment, position
        for record, offset in zip(live, new_offsets, strict=True):
            moved = Record(
                record.label, record.id, record.metadata, offset, record.n_tokens, record.truncated, segment
            )
            self.records[moved.id] = moved
            self.by_label[moved.label] = moved
        return before - position

    def _recover_compaction(self) -> None:
        temporary = self.directory / (VECTORS + ".compact")
        if self._state("compacted_pending_rename", 0):
            if temporary.exists():
                os.replace(temporary, self._vector_path)
            self._db.execute("DELETE FROM state WHERE key = 'compacted_pending_rename'")
        else:
            temporary.unlink(missing_ok=True)

    def _finish_compaction(self, temporary: Path) -> None:
        os.replace(temporary, self._vector_path)
        directory_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory_fd)
        finally:
            os.close(directory_fd)
        os.close(self._fd)
        self._fd = os.open(self._vector_path, os.O_RDWR)
        with self._db_lock:
            self._db.execute("DELETE FROM state WHERE key = 'compacted_pending_rename'")

    def close(self) -> None:
        with self._db_lock:
            self._db.close()
        os.close(self._fd)
