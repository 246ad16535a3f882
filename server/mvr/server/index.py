"""The first-stage index: hnswlib HNSW (inner-product space) over document FDEs, keyed by label.

Owns the graph, its growth, deletions and its file. The file is a cache of the store, never the
source of truth: it is saved atomically (temp file + fsync + rename) with a small JSON sidecar, and
on open a missing, unreadable or mismatched file is rebuilt from the store (logged, not fatal). Which
labels to add or mark deleted after loading is decided by the collection, by comparing the labels in
the graph with the live labels of the store.

hnswlib allows ``add_items`` and ``knn_query`` to run at the same time from different threads;
``resize_index``, ``mark_deleted`` and ``save_index`` are not safe alongside them, so they take the
exclusive side of a readers-writer lock whose shared side searches and inserts hold.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import hnswlib
import numpy as np

log = logging.getLogger("mvr.index")

INDEX_FILE = "hnsw.bin"
SIDECAR_FILE = "hnsw.json"


@dataclass(frozen=True)
class IndexParams:
    dim: int
    m: int
    ef_construction: int


class ReadWriteLock:
    """Many shared holders or one exclusive holder; a waiting writer blocks new readers."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    def acquire_shared(self) -> None:
        with self._condition:
            while self._writer or self._writers_waiting:
                self._condition.wait()
            self._readers += 1

    def release_shared(self) -> None:
        with self._condition:
            self._readers -= 1
            if not self._readers:
                self._condition.notify_all()

    def acquire_exclusive(self) -> None:
        with self._condition:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._condition.wait()
            self._writers_waiting -= 1
            self._writer = True

    def release_exclusive(self) -> None:
        with self._condition:
            self._writer = False
            self._condition.notify_all()


class HnswIndex:
    """An hnswlib index that grows on demand; labels are the store's document labels."""

    def __init__(
        self, params: IndexParams, capacity: int = 1024, *, _index: hnswlib.Index | None = None
    ) -> None:
        self.params = params
        self.lock = ReadWriteLock()
        if _index is None:
            _index = hnswlib.Index(space="ip", dim=params.dim)
            _index.init_index(
                max_elements=capacity,
                M=params.m,
                ef_construction=params.ef_construction,
                allow_replace_deleted=False,
            )
        self._index = _index
        self._deleted: set[int] = set()
        # elements whose insertion has finished: only those are surely reachable by a search that
        # runs while add_items is linking new ones
        self._completed = _index.get_current_count()

    # ------------------------------------------------------------------------------ queries

    @property
    def count(self) -> int:
        """Labels in the graph (fully inserted) that are not marked deleted."""
        return self._completed - len(self._deleted)

    def labels(self) -> set[int]:
        return set(self._index.get_ids_list()) - self._deleted

    def deleted_labels(self) -> set[int]:
        return set(self._deleted)

    def search(
        self, query: np.ndarray, k: int, ef: int, allowed: Callable[[int], bool] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Up to k (labels, inner products), best first."""
        self.lock.acquire_shared()
        try:
            available = self.count
            if available == 0:
                return np.zeros(0, np.int64), np.zeros(0, np.float32)
            k = min(k, available)
            self._index.set_ef(max(ef, k))
            labels, distances = self._index.knn_query(query[None, :], k=k, num_threads=1, filter=allowed)
        except RuntimeError:
            # hnswlib raises when fewer than k elements are reachable (a filter, or deletions)
            return self._search_fewer(query, k, allowed)
        finally:
            self.lock.release_shared()
        return labels[0].astype(np.int64), (1.0 - distances[0]).astype(np.float32)

    def _search_fewer(
        self, query: np.ndarray, k: int, allowed: Callable[[int], bool] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The most results the search can return when it cannot return k: hnswlib answers exactly k
        or raises, and at a fixed ef its search finds the same set whatever k is, so whether a k can
        be filled is monotone in k; bisected (log2 k more searches, on this path only). Halving k, as
        before, could drop up to half of what the search had found."""
        found = np.zeros(0, np.int64), np.zeros(0, np.float32)
        fillable, unfillable = 0, k
        while unfillable - fillable > 1:
            middle = (fillable + unfillable) // 2
            try:
                labels, distances = self._index.knn_query(
                    query[None, :], k=middle, num_threads=1, filter=allowed
                )
            except RuntimeError:
                unfillable = middle
                continue
            fillable, found = middle, (labels[0].astype(np.int64), (1.0 - distances[0]).astype(np.float32))
        return found

    # ------------------------------------------------------------------------------ updates

    def add(self, labels: np.ndarray, vectors: np.ndarray, threads: int = 1) -> None:
        needed = self._index.get_current_count() + len(labels)
        if needed > self._index.get_max_elements():
            self.lock.acquire_exclusive()
            try:
                self._index.resize_index(max(needed, 2 * self._index.get_max_elements()))
            finally:
                self.lock.release_exclusive()
        self.lock.acquire_shared()
        try:
            self._index.add_items(vectors, labels, num_threads=threads)
            self._completed += len(labels)  # one indexer thread per index: no lost update
        finally:
            self.lock.release_shared()

    def mark_deleted(self, labels: list[int]) -> None:
        self.lock.acquire_exclusive()
        try:
            for label in labels:
                if label not in self._deleted:
                    # already marked in a graph saved before its sidecar
                    with contextlib.suppress(RuntimeError):
                        self._index.mark_deleted(label)
                    self._deleted.add(label)
        finally:
            self.lock.release_exclusive()

    def revive(self, labels: list[int]) -> None:
        """Unmarks deleted labels. A label is one immutable document version, so its vector in the graph
        is still right: used when a snapshot's graph, saved just after the snapshot's instant, marks
        deleted a version that was live at that instant."""
        self.lock.acquire_exclusive()
        try:
            for label in labels:
                if label in self._deleted:
                    with contextlib.suppress(RuntimeError):  # already unmarked in the graph file
                        self._index.unmark_deleted(label)
                    self._deleted.discard(label)
        finally:
            self.lock.release_exclusive()

    # ------------------------------------------------------------------------------ persistence

    def save(self, directory: Path) -> int:
        """Atomically writes the graph and its sidecar; returns the bytes written."""
        temporary = directory / (INDEX_FILE + ".tmp")
        self.lock.acquire_exclusive()
        try:
            self._index.save_index(str(temporary))
            sidecar = {"params": asdict(self.params), "deleted": sorted(self._deleted)}
        finally:
            self.lock.release_exclusive()
        with temporary.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, directory / INDEX_FILE)
        _write_json(directory / SIDECAR_FILE, sidecar)
        return (directory / INDEX_FILE).stat().st_size

    @classmethod
    def load(cls, directory: Path, params: IndexParams) -> HnswIndex | None:
        """The saved index, or None (logged) when it is missing, unreadable or for other parameters."""
        path, sidecar_path = directory / INDEX_FILE, directory / SIDECAR_FILE
        if not path.exists() or not sidecar_path.exists():
            log.warning("index file missing; rebuilding from the store", extra={"path": str(path)})
            return None
        try:
            sidecar = json.loads(sidecar_path.read_text())
            if IndexParams(**sidecar["params"]) != params:
                raise ValueError(f"saved with {sidecar['params']}, expected {asdict(params)}")
            index = hnswlib.Index(space="ip", dim=params.dim)
            index.load_index(str(path), allow_replace_deleted=False)
            loaded = cls(params, _index=index)
            # deleted marks are stored in the graph file too; the sidecar only saves the lookups
            loaded._deleted = set(sidecar["deleted"])
            return loaded
        except Exception as error:
            log.warning(
                "index file unreadable; rebuilding from the store",
                extra={"path": str(path), "error": str(error)},
            )
            return None

    def bytes_in_memory(self) -> int:
        # hnswlib keeps, per element, the vector plus level-0 links (2·M ints) and a label, in a block
        # sized for max_elements of which only the used slots' pages become resident (resizing
        # reallocates without touching); per reserved slot it constructs a mutex and a level (44 bytes).
        # bench/profile_search.py measures the resident memory of an opened collection beside this.
        per_element = self.params.dim * 4 + (2 * self.params.m + 1) * 4 + 8
        return self._index.get_current_count() * per_element + self._index.get_max_elements() * 44


def _write_json(path: Path, value: object) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w") as handle:
        json.dump(value, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
