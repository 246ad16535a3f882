"""Voyager 2.1.0 as a plain multi-vector baseline for bench/vs_peers.py (run by bench/.peers-venv).

The ColBERTv1 pipeline: every token vector of the corpus in one HNSW index (inner product); per query
token the k' nearest tokens; their documents are the candidates, reranked by exact MaxSim over float32
token vectors held in memory.

    python bench/peers/voyager_runner.py build  --data D.npz --index-dir DIR --create '{"M": 12}' --out b.json
    python bench/peers/voyager_runner.py search --data D.npz --index-dir DIR
        --sweep '{"k_tokens": 32, "ef": 64}' '{"k_tokens": 128, "ef": 128}' --out s.json

``--create``: M, ef_construction, random_seed (voyager.Index). A setting: k_tokens (k' per query token)
and ef (HNSW query depth, at least k_tokens).
"""

from __future__ import annotations

import time
from pathlib import Path

import common
import numpy as np
import voyager

INDEX_FILE = "tokens.voyager"
VECTORS_FILE = "tokens.npy"  # the float32 vectors the rerank reads: part of what the baseline stores
CREATE_KEYS = {"M", "ef_construction", "random_seed"}
SEARCH_KEYS = {"k_tokens", "ef"}


def build(data: common.Data, index_dir: Path, create: dict) -> dict:
    common.check_keys(create, CREATE_KEYS, "voyager create")
    index = voyager.Index(
        voyager.Space.InnerProduct,
        num_dimensions=data.tokens.shape[1],
        storage_data_type=voyager.StorageDataType.Float32,
        **create,
    )
    ids = list(range(len(data.tokens)))  # token row = voyager id
    build_s = common.timed(lambda: index.add_items(data.tokens, ids=ids, num_threads=-1))
    index_dir.mkdir(parents=True, exist_ok=True)
    index.save(str(index_dir / INDEX_FILE))
    np.save(index_dir / VECTORS_FILE, data.tokens)
    return {"build_s": build_s, "build_threads": "all", **common.disk_usage(index_dir)}


def maxsim_top_k(
    query: np.ndarray, docs: np.ndarray, tokens: np.ndarray, offsets: np.ndarray, k: int = 10
) -> np.ndarray:
    """Exact MaxSim (Chamfer) of ``query`` against the documents ``docs``; the best k of them."""
    starts, lengths = offsets[docs], offsets[docs + 1] - offsets[docs]
    segment = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    rows = np.repeat(starts - segment, lengths) + np.arange(int(lengths.sum()))
    similarities = query @ tokens[rows].T  # (query tokens, candidate tokens)
    scores = np.maximum.reduceat(similarities, segment, axis=1).sum(axis=0)
    best = np.argpartition(-scores, k - 1)[:k] if len(docs) > k else np.arange(len(docs))
    return docs[best[np.argsort(-scores[best], kind="stable")]]


def search(data: common.Data, index_dir: Path, settings: list[dict]) -> dict:
    started = time.perf_counter()
    index = voyager.Index.load(str(index_dir / INDEX_FILE))
    tokens = np.load(index_dir / VECTORS_FILE)
    offsets = data.offsets
    token_doc = np.repeat(np.arange(data.n_docs), np.diff(offsets))
    load_s = time.perf_counter() - started

    def prepare(setting: dict) -> common.SearchFunction:
        common.check_keys(setting, SEARCH_KEYS, "voyager search")
        k_tokens = int(setting.get("k_tokens", 128))
        ef = max(int(setting.get("ef", k_tokens)), k_tokens)

        def run(query: np.ndarray) -> np.ndarray:
            neighbours, _ = index.query(query, k=k_tokens, num_threads=1, query_ef=ef)
            candidates = np.unique(token_doc[neighbours.ravel().astype(np.int64)])
            return maxsim_top_k(query, candidates, tokens, offsets)

        return run

    return common.search_result(common.sweep(settings, prepare, data), load_s)


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
