"""The in-memory token index of a coded collection: what the cascade's cheap stages read.

Owns, for every coded document version (a *slot*, in ascending label order): its label, whether it is
still live, its distinct centroids (CSR, read once from its code block), and the inverted
lists centroid → slots over a prefix of the slots (the rest, a short tail of recent documents, is
scored by centroid interaction directly until the next rebuild of the lists).

Readers take a :class:`TokenSnapshot` (immutable fields, built once, swapped atomically); the indexer
appends and rebuilds under its own lock. Nothing here is durable: it is rebuilt from the store's code
file on open and after a compaction (a counting sort over distinct centroids, milliseconds per 10k
documents).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from mvr.server.candidates import CentroidTable, build_lists
from mvr.server.codec import Codec, distinct_centroids
from mvr.server.store import MappedFile, Record

# Slots left outside the inverted lists before a rebuild: the tail is scored by centroid interaction in
# full by every search (≈ 4 µs a document), the rebuild costs ≈ 10 ms per 10k documents.
_MIN_TAIL = 512  # ... or 1/64 of the slots, whichever is more
_TAIL_FRACTION = 64


@dataclass(frozen=True)
class TokenSnapshot:
    """A consistent view of the token index for one search."""

    codec: Codec
    centroid_table: CentroidTable  # the codec's centroids as the centroid stages read them
    labels: np.ndarray  # int64 (n,), ascending
    alive: np.ndarray  # uint8 (≥ n,), shared with the index: cleared on delete
    cids: np.ndarray  # uint16: each slot's distinct centroids back to back
    cid_offsets: np.ndarray  # int64 (n + 1,)
    list_offsets: np.ndarray  # int64 (K + 1,)
    list_slots: np.ndarray  # int32: slots of each centroid, over slots [0, n_listed)
    n_listed: int

    @property
    def n(self) -> int:
        return len(self.labels)

    def slots_of(self, labels: np.ndarray) -> np.ndarray:
        """The slot of each label, -1 for a label that is not coded."""
        position = np.searchsorted(self.labels, labels)
        position = np.minimum(position, max(self.n - 1, 0))
        found = (self.n > 0) & (self.labels[position] == labels) if self.n else np.zeros(len(labels), bool)
        return np.where(found, position, -1)

    def nbytes(self) -> int:
        """Resident bytes of the arrays (the alive flags included)."""
        arrays = (self.labels, self.alive, self.cids, self.cid_offsets, self.list_offsets, self.list_slots)
        return sum(a.nbytes for a in arrays) + self.centroid_table.codes.nbytes


class TokenIndex:
    """Appends coded documents, retires dead ones, and publishes snapshots."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.centroid_table = CentroidTable.of(codec.centroids)
        self._lock = threading.Lock()
        self.snapshot: TokenSnapshot | None = None

    def rebuild(self, records: Sequence[Record], codes: MappedFile) -> None:
        """Starts over from the coded ``records`` (on open and after a compaction)."""
        coded = sorted((r for r in records if r.coded), key=lambda r: r.label)
        with self._lock:
            self.snapshot = None
            self._append(coded, codes)

    def append(self, records: Sequence[Record], codes: MappedFile) -> None:
        """Adds newly coded records (labels above every label already in)."""
        with self._lock:
            self._append(sorted(records, key=lambda r: r.label), codes)

    def tail(self) -> int:
        """Slots not in the inverted lists yet."""
        snapshot = self.snapshot
        return 0 if snapshot is None else snapshot.n - snapshot.n_listed

    def relist(self) -> None:
        """Rebuilds the inverted lists over every slot (the indexer does it when idle)."""
        with self._lock:
            old = self.snapshot
            if old is None or old.n == old.n_listed:
                return
            list_offsets, list_slots = build_lists(old.cids, old.cid_offsets, old.n, self.codec.n_centroids)
            self.snapshot = replace(old, list_offsets=list_offsets, list_slots=list_slots, n_listed=old.n)

    def retire(self, labels: Sequence[int]) -> None:
        """Marks replaced or deleted versions dead, so the cheap stages skip them."""
        with self._lock:  # an append copies the flags: a retire must not fall between copy and swap
            snapshot = self.snapshot
            if snapshot is None or not labels:
                return
            slots = snapshot.slots_of(np.asarray(labels, dtype=np.int64))
            snapshot.alive[slots[slots >= 0]] = 0

    def _append(self, records: Sequence[Record], codes: MappedFile) -> None:
        old = self.snapshot
        if not records and old is not None:
            return
        labels = np.fromiter((r.label for r in records), np.int64, len(records))
        offsets = np.fromiter((r.code_offset for r in records), np.int64, len(records))
        counts = np.fromiter((r.n_tokens for r in records), np.int64, len(records))
        new_cids, new_cid_offsets = distinct_centroids(codes.bytes, offsets, counts, self.codec.n_centroids)
        if old is None:
            merged_labels = labels
            cids, cid_offsets = new_cids, new_cid_offsets
            alive = np.ones(len(labels), dtype=np.uint8)
            n_listed = 0
        else:
            if len(labels) and old.n and labels[0] <= old.labels[-1]:
                raise ValueError(f"label {labels[0]} appended after {old.labels[-1]}: appends must ascend")
            merged_labels = np.concatenate([old.labels, labels])
            cids = np.concatenate([old.cids, new_cids])
            cid_offsets = np.concatenate([old.cid_offsets, old.cid_offsets[-1] + new_cid_offsets[1:]])
            alive = np.concatenate([old.alive[: old.n], np.ones(len(labels), dtype=np.uint8)])
            n_listed = old.n_listed
        n = len(merged_labels)
        if old is not None and n - n_listed <= max(_MIN_TAIL, n // _TAIL_FRACTION):
            list_offsets, list_slots = old.list_offsets, old.list_slots
        else:
            list_offsets, list_slots = build_lists(cids, cid_offsets, n, self.codec.n_centroids)
            n_listed = n
        self.snapshot = TokenSnapshot(
            self.codec,
            self.centroid_table,
            merged_labels,
            alive,
            cids,
            cid_offsets,
            list_offsets,
            list_slots,
            n_listed,
        )
