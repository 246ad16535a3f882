"""mvr's side of bench/vs_peers.py, run by the main venv's python: build a collection, or search it.

    python bench/peers/mvr_runner.py build  --data D.npz --index-dir DIR --create '{}' --out build.json
    python bench/peers/mvr_runner.py search --data D.npz --index-dir DIR --sweep '{}' '{"candidates": 300}'
        --out search.json

``--create`` is passed to CollectionManager.create, each ``--sweep`` dict to Collection.search: a
parameter the engine does not know raises there (TypeError), never silently measures the defaults.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "client")]

import common  # noqa: E402
from mvr.server.app import limit_blas_threads  # noqa: E402
from mvr.server.collection import DocumentInput  # noqa: E402
from mvr.server.errors import ResourceExhausted  # noqa: E402

try:  # the manager moved out of collection.py in the engine rewrite
    from mvr.server.manager import CollectionManager
except ImportError:
    from mvr.server.collection import CollectionManager  # type: ignore[no-redef,attr-defined]

NAME = "bench"
CHUNK = 500


def collection_dir(index_dir: Path) -> Path:
    return index_dir / "collections" / NAME


def build(data: common.Data, index_dir: Path, create: dict) -> dict:
    threads = os.cpu_count() or 1
    manager = CollectionManager(index_dir, index_threads=threads, fde_threads=threads)
    manager.create(NAME, model=None, dim=data.tokens.shape[1], **create)
    collection = manager.get(NAME)

    def insert() -> None:
        for start in range(0, data.n_docs, CHUNK):
            stop = min(start + CHUNK, data.n_docs)
            documents = [DocumentInput(str(i), vectors=data.document(i)) for i in range(start, stop)]
            while True:
                try:
                    collection.upsert(documents)
                    break
                except ResourceExhausted as error:  # the indexing backlog is full: wait as told
                    if error.retry_after_s is None:
                        raise
                    time.sleep(error.retry_after_s)
        collection.flush()

    build_s = common.timed(insert)
    manager.close()
    return {"build_s": build_s, "build_threads": threads, **common.disk_usage(collection_dir(index_dir))}


def search(data: common.Data, index_dir: Path, settings: list[dict]) -> dict:
    limit_blas_threads()
    started = time.perf_counter()
    manager = CollectionManager(index_dir)
    collection = manager.get(NAME)
    load_s = time.perf_counter() - started

    def prepare(setting: dict) -> common.SearchFunction:
        return lambda query: [int(hit.id) for hit in collection.search(query, top_k=10, **setting)]

    try:
        return common.search_result(common.sweep(settings, prepare, data), load_s)
    finally:
        manager.close()


def main() -> None:
    args = common.runner_arguments(__doc__ or "")
    data = common.load_data(args.data)
    if args.phase == "build":
        result = build(data, args.index_dir, args.create)
    else:
        result = search(data, args.index_dir, args.sweep)
    common.write_json(args.out, result)


if __name__ == "__main__":
    main()
