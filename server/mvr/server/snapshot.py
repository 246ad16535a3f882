"""Snapshots: the file format of a collection copied whole, and the server's directory of them.

Owns how a snapshot is written from a consistent view of a collection, how one is checked and
unpacked into a new collection directory, and where the server keeps them. What goes into a
snapshot, and at which instant, is decided by :meth:`mvr.server.collection.Collection.snapshot`;
creating and restoring collections by :mod:`mvr.server.manager`.

A snapshot file is an uncompressed POSIX (pax) tar holding, in this order::

    catalog.sqlite   the catalog as of the snapshot's instant (one file, rollback journal mode), its
                     offsets those of the two files below
    vectors.bin      the token vectors the live documents need, compacted (see store.StoreView)
    codes.bin        the live documents' codes, compacted (their codec is a row of the catalog)
    fde.npz          the FDE matrices
    hnsw.bin         the graph, saved just after the instant (a cache: on open, labels missing from
    hnsw.json        it are replayed and labels not live are marked deleted, as after a crash)
    manifest.json    format, version, the collection config, live documents, and each file's size
                     and SHA-256

Token vectors are float16/float32 and codes near-random bytes: compression would cost time for
little. On the server, snapshots live under ``data_dir/snapshots/{collection_id}/``, each as
``{snapshot_id}.tar`` with a small ``{snapshot_id}.json`` beside it (what listings show: size,
SHA-256 of the whole file, documents, time), written only once the tar is complete and durable.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import shutil
import tarfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from mvr.server.config import NAME_PATTERN
from mvr.server.errors import InvalidArgument, NotFound
from mvr.server.fde import FDE_FILE
from mvr.server.index import INDEX_FILE, SIDECAR_FILE
from mvr.server.store import CATALOG, CODES, VECTORS, fsync_directory

FORMAT = "mvr-snapshot"
VERSION = 1
MANIFEST = "manifest.json"
DATA_FILES = (CATALOG, VECTORS, CODES, FDE_FILE, INDEX_FILE, SIDECAR_FILE)
CHUNK_BYTES = 1 << 20
SYNC_BYTES = 16 << 20
SNAPSHOT_ID = re.compile(r"^\d{8}T\d{12}Z-[0-9a-f]{6}$")  # UTC to the microsecond: ids sort by time
UPLOADS = ".uploads"


@dataclass(frozen=True)
class SnapshotInfo:
    """One snapshot kept by the server."""

    collection_id: str
    snapshot_id: str
    created: float  # Unix time of the snapshot's instant
    size_bytes: int
    documents: int
    sha256: str  # of the whole file


# ------------------------------------------------------------------------------------------ format


class _HashingWriter:
    """A write-only file that hashes and counts what passes through it (tarfile asks for tell), and
    syncs every SYNC_BYTES: one flush of a whole snapshot at the end made the collection's own
    fdatasyncs wait behind it (bench/snapshot.py measures the writers' latency meanwhile)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.count, self.digest = raw, 0, hashlib.sha256()
        self._synced = 0

    def write(self, data: bytes) -> int:
        self.raw.write(data)
        self.digest.update(data)
        self.count += len(data)
        if self.count - self._synced >= SYNC_BYTES:
            self.raw.flush()
            os.fdatasync(self.raw.fileno())
            self._synced = self.count
        return len(data)

    def tell(self) -> int:
        return self.count


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _HashingReader:
    def __init__(self, raw: Readable) -> None:
        self.raw, self.digest = raw, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.digest.update(data)
        return data


def write(path: Path, sources: Sequence[tuple[str, Readable, int]], manifest: dict) -> tuple[int, str]:
    """Writes a snapshot file at ``path`` (fsynced) from ``(name, stream, bytes)`` sources, each read
    from where it stands for exactly that many bytes, then the manifest; returns (file size, SHA-256)."""
    files = {}
    with path.open("wb") as raw:
        out = _HashingWriter(raw)
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            for name, handle, size in sources:
                reader = _HashingReader(handle)
                tar.addfile(_member(name, size, manifest["created"]), reader)  # type: ignore[arg-type]
                files[name] = {"bytes": size, "sha256": reader.digest.hexdigest()}
            body = json.dumps({**manifest, "files": files}, indent=1).encode()
            tar.addfile(_member(MANIFEST, len(body), manifest["created"]), io.BytesIO(body))
        raw.flush()
        os.fsync(raw.fileno())
    return out.count, out.digest.hexdigest()


def _member(name: str, size: int, created: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(created), 0o644
    return info


def manifest_for(config: dict, documents: int, created: float) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "created": created,
        "collection": config,
        "documents": documents,
    }


def extract(path: Path, directory: Path, field: str) -> dict:
    """Checks the snapshot file at ``path`` and unpacks it into the empty ``directory``; returns its
    manifest. Anything but a complete, intact snapshot of this format (another file, a truncated or
    altered one, an entry with another name or kind, a path) is INVALID_ARGUMENT naming ``field``."""
    found: dict[str, dict] = {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if member.name not in (*DATA_FILES, MANIFEST) or not member.isfile() or member.name in found:
                    raise InvalidArgument(
                        field, f"holds an unexpected entry {member.name[:100]!r}: not an mvr snapshot"
                    )
                source = tar.extractfile(member)
                assert source is not None  # a regular file
                digest = hashlib.sha256()
                with (directory / member.name).open("wb") as target:
                    while chunk := source.read(CHUNK_BYTES):
                        digest.update(chunk)
                        target.write(chunk)
                    target.flush()
                    os.fsync(target.fileno())  # a restore is acknowledged only once it is durable
                found[member.name] = {"bytes": member.size, "sha256": digest.hexdigest()}
    except tarfile.TarError as error:
        raise InvalidArgument(field, f"is not a readable mvr snapshot file ({error})") from None
    if MANIFEST not in found:
        raise InvalidArgument(field, "has no manifest.json: not an mvr snapshot, or cut short")
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidArgument(field, f"has an unreadable manifest.json ({error})") from None
    _check_manifest(manifest, found, field)
    (directory / MANIFEST).unlink()
    return manifest


def _check_manifest(manifest: object, found: dict[str, dict], field: str) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InvalidArgument(field, "manifest.json is not an mvr snapshot manifest")
    if manifest.get("version") != VERSION:
        raise InvalidArgument(
            field,
            f"is a snapshot of format version {manifest.get('version')!r}; this server reads "
            f"version {VERSION}",
        )
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not isinstance(manifest.get("collection"), dict):
        raise InvalidArgument(field, "manifest.json lacks its file list or collection config")
    for name in DATA_FILES:
        if name not in found or name not in listed:
            raise InvalidArgument(field, f"lacks {name}: the snapshot is incomplete")
        if found[name] != listed[name]:
            expected = listed[name] if isinstance(listed[name], dict) else {}
            raise InvalidArgument(
                field,
                f"{name} has {found[name]['bytes']} bytes with SHA-256 {found[name]['sha256'][:16]}…, the "
                f"manifest says {expected.get('bytes')} bytes with {str(expected.get('sha256'))[:16]}…: "
                "the file was altered or damaged",
            )


# ------------------------------------------------------------------------------------------ directory


class SnapshotDirectory:
    """The snapshots a server keeps, under ``root`` (``data_dir/snapshots``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        # uploads, snapshots and their scratch copies cut short by a crash or a failed call: never
        # complete, never listed
        shutil.rmtree(root / UPLOADS, ignore_errors=True)
        for partial in root.glob("*/.*.tmp"):
            partial.unlink(missing_ok=True)
        for scratch in root.glob("*/.snapshot-*"):
            shutil.rmtree(scratch, ignore_errors=True)

    def reserve(self, collection_id: str) -> tuple[str, Path]:
        """A new snapshot id and the temporary path to write its file at (see :meth:`publish`)."""
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now % 1 * 1e6):06d}Z"
        snapshot_id = f"{stamp}-{secrets.token_hex(3)}"
        directory = self.root / collection_id
        directory.mkdir(exist_ok=True)
        return snapshot_id, directory / f".{snapshot_id}.tar.tmp"

    def publish(self, written: Path, info: SnapshotInfo) -> None:
        """Moves a complete, fsynced snapshot file in place, then writes its description: a snapshot is
        listed only once both are durable."""
        directory = self.root / info.collection_id
        final = directory / f"{info.snapshot_id}.tar"
        os.replace(written, final)
        sidecar = directory / f".{info.snapshot_id}.json.tmp"
        try:
            with sidecar.open("w") as handle:
                json.dump(asdict(info), handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(sidecar, directory / f"{info.snapshot_id}.json")
            fsync_directory(directory)
        except BaseException:
            final.unlink(missing_ok=True)  # unlisted without its description: not left behind
            sidecar.unlink(missing_ok=True)
            raise

    def list(self, collection_id: str) -> list[SnapshotInfo]:
        """The collection's snapshots, oldest first (ids start with their UTC time)."""
        directory = self.root / collection_id
        if not directory.is_dir():
            return []
        infos = [self._read_info(path) for path in sorted(directory.glob("*.json"))]
        return [info for info in infos if (directory / f"{info.snapshot_id}.tar").exists()]

    def get(self, collection_id: str, snapshot_id: str, field: str) -> tuple[Path, SnapshotInfo]:
        if not NAME_PATTERN.match(collection_id) or not SNAPSHOT_ID.match(snapshot_id):
            raise InvalidArgument(
                field,
                f"'collections/{collection_id}/snapshots/{snapshot_id}' is not a snapshot name of the "
                "form 'collections/{collection_id}/snapshots/{YYYYMMDDTHHMMSSffffffZ-xxxxxx}'",
            )
        directory = self.root / collection_id
        path, sidecar = directory / f"{snapshot_id}.tar", directory / f"{snapshot_id}.json"
        if not path.exists() or not sidecar.exists():
            raise NotFound(f"snapshot 'collections/{collection_id}/snapshots/{snapshot_id}' not found")
        return path, self._read_info(sidecar)

    def delete(self, collection_id: str, snapshot_id: str, field: str) -> None:
        path, _ = self.get(collection_id, snapshot_id, field)
        (path.parent / f"{snapshot_id}.json").unlink()  # first: unlisted even if the next step fails
        path.unlink(missing_ok=True)

    def upload_path(self) -> Path:
        """Where to receive an uploaded snapshot file (deleted by the caller once restored)."""
        uploads = self.root / UPLOADS
        uploads.mkdir(exist_ok=True)
        return uploads / f"{uuid.uuid4().hex}.tar"

    @staticmethod
    def _read_info(path: Path) -> SnapshotInfo:
        return SnapshotInfo(**json.loads(path.read_text()))
