"""Which shard a document belongs to, and the directory that holds the shards.

An id's shard is ``blake2b(id, 8 bytes) mod N``: stable across processes, machines and Python versions
(unlike ``hash``), so an upsert or delete of an id reaches the shard that holds it. The shards of one
collection live under one directory with a manifest, ``cluster.json`` (format version, collection,
shard count, hash, model and dim, written before any shard); shard i is ``shard-{i:03d}-of-{N:03d}``,
an ordinary mvr data directory (``collections/<name>/`` inside), which ``mvr serve --data-dir`` opens.
Re-sharding is not supported: a manifest with another shard count or collection is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

MANIFEST = "cluster.json"
FORMAT = 1
HASH = "blake2b-64 mod shards"
MAX_SHARDS = 1024


class ManifestMismatch(ValueError):
    """The shards directory holds another layout than the one asked for."""


@dataclass(frozen=True)
class Layout:
    """A sharded collection on disk."""

    collection: str
    shards: int
    model: str | None  # the encoder the shard collections were created with (None: vectors only)
    dim: int | None
    format: int = FORMAT
    hash: str = HASH

    def shard_dir(self, root: Path, shard: int) -> Path:
        return Path(root) / f"shard-{shard:03d}-of-{self.shards:03d}"


def shard_of(doc_id: str, shards: int) -> int:
    """The shard of ``doc_id`` among ``shards``."""
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % shards


def shards_of(ids: list[str], shards: int) -> np.ndarray:
    """:func:`shard_of` for each id (int64)."""
    return np.fromiter((shard_of(i, shards) for i in ids), np.int64, len(ids))


def group_by_shard(ids: Sequence[str], shards: int) -> dict[int, list[int]]:
    """Positions in ``ids`` by their shard (shards in order of first appearance, positions ascending)."""
    groups: dict[int, list[int]] = {}
    for position, shard in enumerate(shards_of(list(ids), shards).tolist()):
        groups.setdefault(shard, []).append(position)
    return groups


def check_shards(shards: int) -> None:
    if not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"--shards must be 1 to {MAX_SHARDS}, got {shards}")


def check_layout(root: Path, wanted: Layout) -> bool:
    """Whether ``root`` already holds shards, which must then be laid out as ``wanted``."""
    path = Path(root) / MANIFEST
    if not path.exists():
        return False
    found = read_layout(root)
    differing = [
        f"{field} is {getattr(found, field)!r} there, {getattr(wanted, field)!r} here"
        for field in ("collection", "shards", "model", "dim", "format", "hash")
        if getattr(found, field) != getattr(wanted, field)
    ]
    if differing:
        raise ManifestMismatch(f"{path}: " + "; ".join(differing) + " (re-sharding is not supported)")
    return True


def write_layout(root: Path, layout: Layout) -> None:
    """Writes the manifest atomically (a crash leaves none or the whole one)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    temporary = root / (MANIFEST + ".tmp")
    with temporary.open("w") as handle:
        json.dump(asdict(layout), handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.rename(root / MANIFEST)


def read_layout(root: Path) -> Layout:
    path = Path(root) / MANIFEST
    try:
        data = json.loads(path.read_text())
        return Layout(**data)
    except FileNotFoundError:
        raise ManifestMismatch(f"{path} not found: not a directory of shards") from None
    except (json.JSONDecodeError, TypeError) as error:
        raise ManifestMismatch(f"{path} is not an mvr shards manifest: {error}") from None
