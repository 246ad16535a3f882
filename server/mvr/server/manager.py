"""The registry of collections under ``data_dir/collections/``: create, open at start, look up, delete,
snapshot and restore (snapshot files under ``data_dir/snapshots/``, see :mod:`mvr.server.snapshot`)."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from mvr.server import engine_metrics
from mvr.server import snapshot as snapshot_format
from mvr.server.collection import Collection
from mvr.server.config import (
    NAME_PATTERN,
    CollectionConfig,
    HNSWParams,
    TokenStorage,
    check_range,
    default_fde,
    with_overrides,
)
from mvr.server.encoder import Encoder
from mvr.server.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    MvrError,
    NotFound,
    ResourceExhausted,
)
from mvr.server.fde import FDE, FDE_FILE
from mvr.server.limits import Limits
from mvr.server.snapshot import SnapshotDirectory, SnapshotInfo
from mvr.server.store import Store, fsync_directory

log = logging.getLogger("mvr.collection")


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
        limits: Limits | None = None,
    ) -> None:
        self.root = Path(data_dir) / "collections"
        self.snapshots = SnapshotDirectory(Path(data_dir) / "snapshots")
        self.limits = limits or Limits()
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
            limits=self.limits,
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
                    encoder.encode_queries,
                    threads=self._query_threads,
                    max_queued=self.limits.max_queued_queries,
                    **self._query_batching,
                )
                self._batchers[id(encoder)] = batcher
                engine_metrics.track_query_queue(encoder.spec.model, batcher.queue_depth)
        return lambda text: batcher.submit(text).vectors

    def create(
        self,
        name: str,
        *,
        model: str | None,
        dim: int | None,
        fde: dict | None = None,
        hnsw: dict | None = None,
        tokens: dict | None = None,
        vector_dtype: str = "float16",
        query_maxlen: int | None = None,
        doc_maxlen: int | None = None,
    ) -> CollectionConfig:
        self.check_name(name, "collection_id")
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
            check_range("collection.dim", dim, 1, 4096)
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
        token_storage = with_overrides(TokenStorage(), tokens or {}, "collection.token_storage")
        fde_config = with_overrides(default_fde(dim, token_storage.coded), fde or {}, "collection.fde")
        if (
            "final_dim" not in (fde or {})
            and fde_config.final_dim
            and fde_config.inner_dim <= fde_config.final_dim
        ):
            fde_config = replace(fde_config, final_dim=None)  # the default projection only ever shrinks
        hnsw_params = with_overrides(HNSWParams(), hnsw or {}, "collection.hnsw")
        config = CollectionConfig(
            name, dim, encoder_spec, fde_config, hnsw_params, vector_dtype, time.time(), token_storage
        )
        with self._lock:
            self._check_room(name)
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

    # ------------------------------------------------------------------------------ snapshots

    @staticmethod
    def check_name(name: str, field: str) -> None:
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise InvalidArgument(
                field, f"{name!r} must be 1-63 characters of [a-z0-9_-], starting with a letter or digit"
            )

    def create_snapshot(self, name: str) -> SnapshotInfo:
        """Takes a snapshot of collection ``name`` while it keeps serving (see Collection.snapshot)."""
        collection = self.get(name)
        snapshot_id, partial = self.snapshots.reserve(name)
        created = time.time()
        try:
            size, sha256, documents = collection.snapshot(partial, created)
            info = SnapshotInfo(name, snapshot_id, created, size, documents, sha256)
            self.snapshots.publish(partial, info)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        log.info("snapshot created", extra={"collection": name, "snapshot": snapshot_id, "bytes": size})
        return info

    def check_restorable(self, name: str) -> None:
        """INVALID_ARGUMENT, ALREADY_EXISTS or RESOURCE_EXHAUSTED if a collection ``name`` cannot be
        created now: what a restore checks before it unpacks (and a service before it receives) a file."""
        self.check_name(name, "collection_id")
        with self._lock:
            self._check_room(name)

    def restore(self, name: str, source: Path, field: str) -> CollectionConfig:
        """Creates collection ``name`` from the snapshot file ``source``; ``field`` names the source in
        errors. The collection appears whole or not at all, as at creation."""
        self.check_restorable(name)  # before the work, to fail fast (the room is checked again below)
        # unpacked and checked outside the lock (it copies the whole collection), under its own name
        staging = self.root / f".restoring-{name}-{uuid.uuid4().hex[:8]}"
        try:
            manifest = snapshot_format.extract(source, _mkdir(staging), field)
            config = self._renamed_config(staging, name, field)
            fsync_directory(staging)
            with self._lock:
                self._check_room(name)
                target = self.root / name
                staging.rename(target)
                fsync_directory(self.root)
                try:
                    self._collections[name] = self._open(target)
                except BaseException:  # never leave a directory the next start cannot open
                    doomed = self.root / f".deleting-{name}-{uuid.uuid4().hex[:8]}"
                    target.rename(doomed)
                    shutil.rmtree(doomed, ignore_errors=True)
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # (gone once renamed)
        origin = manifest["collection"].get("name")
        log.info("collection restored", extra={"collection": name, "from": origin})
        return config

    @staticmethod
    def _renamed_config(staging: Path, name: str, field: str) -> CollectionConfig:
        """The snapshot's config under its new name, written to its catalog."""
        try:
            stored = Store.config_at(staging)
            if stored is None:
                raise ValueError("the catalog holds no collection config")
            config = CollectionConfig.from_dict(stored)
        except (KeyError, TypeError, ValueError, sqlite3.DatabaseError) as error:
            message = f"holds no collection config this server can read ({error})"
            raise InvalidArgument(field, message) from None
        config = replace(config, name=name)
        Store.rewrite_config(staging, config.to_dict())
        return config

    def _check_room(self, name: str) -> None:
        """ALREADY_EXISTS or RESOURCE_EXHAUSTED for a new collection ``name``; the caller holds the lock."""
        if name in self._collections:
            raise AlreadyExists(f"collection {name!r} already exists")
        if len(self._collections) >= self.limits.max_collections:
            raise ResourceExhausted(
                f"collection_id: this server holds {len(self._collections)} collections; the limit is "
                f"{self.limits.max_collections} (max_collections)"
            )

    def close(self) -> None:
        for collection in list(self._collections.values()):
            collection.close()
        for batcher in self._batchers.values():
            batcher.close()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path
