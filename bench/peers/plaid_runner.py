"""PLAID as PyLate 1.2.0 ships it, for bench/vs_peers.py (run by bench/.peers-venv).

    python bench/peers/plaid_runner.py build --data D.npz --index-dir DIR --create '{"nbits": 2}' --out b.json
    python bench/peers/plaid_runner.py search --data D.npz --index-dir DIR
        --sweep '{"ncells": 1, "centroid_score_threshold": 0.5, "ndocs": 256}' --out s.json

``--create``: keyword arguments of ``pylate.indexes.PLAID`` that shape the index (nbits,
kmeans_niters, ...). A setting: the search knobs, which PyLate 1.2.0 takes only as PLAID constructor
arguments (``retrieve.ColBERT.retrieve`` passes nothing but k to a PLAID index), so they are applied to
the loaded searcher's config: ncells (IVF cells probed per query token), centroid_score_threshold
(centroid pruning) and ndocs (candidates scored with the decompressed residuals).
"""

from __future__ import annotations

import inspect
import os
import time
from pathlib import Path

import common
import torch
from pylate import indexes, retrieve
from pylate.indexes.stanford_nlp.search.index_storage import IndexScorer
from pylate.indexes.stanford_nlp.search.strided_tensor import StridedTensor

INDEX_NAME = "plaid"
SEARCH_KEYS = {"ncells", "centroid_score_threshold", "ndocs"}
# what a setting leaves out is PyLate's own default (not the previous setting's value)
SEARCH_DEFAULTS = {key: inspect.signature(indexes.PLAID).parameters[key].default for key in SEARCH_KEYS}
NOT_CREATE_KEYS = SEARCH_KEYS | {"index_folder", "index_name", "override", "embedding_size"}


def compile_extensions() -> None:
    """PyLate compiles its C++ kernels on first use (torch.utils.cpp_extension, cached under
    ~/.cache/torch_extensions): done before any clock starts, so no build or load time includes it."""
    IndexScorer.try_load_torch_extensions(use_gpu=False)
    StridedTensor.try_load_torch_extensions(use_gpu=False)


def open_index(index_dir: Path, create: dict, dim: int, override: bool) -> indexes.PLAID:
    misplaced = sorted(set(create) & NOT_CREATE_KEYS)
    if misplaced:
        raise TypeError(f"plaid create: {misplaced} are set by the runner or belong in --sweep")
    return indexes.PLAID(
        index_folder=str(index_dir), index_name=INDEX_NAME, override=override, embedding_size=dim, **create
    )


def build(data: common.Data, index_dir: Path, create: dict) -> dict:
    compile_extensions()
    documents = [data.document(i) for i in range(data.n_docs)]
    ids = [str(i) for i in range(data.n_docs)]

    def index_all() -> None:
        index = open_index(index_dir, create, data.tokens.shape[1], override=True)
        index.add_documents(documents_ids=ids, documents_embeddings=documents)

    build_s = common.timed(index_all)
    return {"build_s": build_s, "build_threads": torch.get_num_threads(), **common.disk_usage(index_dir)}


def search(data: common.Data, index_dir: Path, create: dict, settings: list[dict]) -> dict:
    torch.set_num_threads(1)
    compile_extensions()
    started = time.perf_counter()
    index = open_index(index_dir, create, data.tokens.shape[1], override=False)
    if index.searcher is None:
        raise RuntimeError(f"{index_dir} holds no PLAID index")
    retriever = retrieve.ColBERT(index=index)
    load_s = time.perf_counter() - started

    def prepare(setting: dict) -> common.SearchFunction:
        common.check_keys(setting, SEARCH_KEYS, "plaid search")
        effective = {**SEARCH_DEFAULTS, **setting}
        index.searcher.configure(**effective)
        for key, value in effective.items():  # the knobs really reach the searcher
            assert getattr(index.searcher.config, key) == value, (key, value)

        def run(query):
            return [int(hit["id"]) for hit in retriever.retrieve(queries_embeddings=[query], k=10)[0]]

        return run

    return common.search_result(common.sweep(settings, prepare, data), load_s)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = common.runner_arguments(__doc__ or "")
    data = common.load_data(args.data)
    if args.phase == "build":
        result = build(data, args.index_dir, args.create)
    else:
        result = search(data, args.index_dir, args.create, args.sweep)
    common.write_json(args.out, result)


if __name__ == "__main__":
    main()
