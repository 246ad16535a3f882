"""Keyword and hybrid ranking: hits from the store's BM25 index, and the weighted reciprocal rank
fusion of a semantic and a keyword list.

Owns how the two lists become one: a document's fused score is ``w / (RRF_K + semantic rank) +
(1 - w) / (RRF_K + keyword rank)``, a list it is missing from contributing 0 (Cormack et al., 2009;
k = 60 as there). Rank fusion needs no calibration between MaxSim sums and BM25 scores, whose scales
differ by query length and corpus. Each hit keeps its rank and score in each list.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from mvr.server.store import Record
from mvr.server.values import Hit

RRF_K = 60
DEFAULT_SEMANTIC_WEIGHT = 0.5


def fusion_depth(top_k: int) -> int:
    """How deep each list is taken for fusion: a hit ranked low in one list can still win with the
    other's support."""
    return max(50, 2 * top_k)


def keyword_hits(labels: np.ndarray, scores: np.ndarray, records: dict[int, Record], top_k: int) -> list[Hit]:
    """Hits of a keyword list (labels and BM25 scores, best first), resolved against the live
    records: a version replaced or deleted since the index answered is dropped."""
    hits = []
    for rank, (label, score) in enumerate(zip(labels.tolist(), scores.tolist(), strict=True), 1):
        record = records.get(label)
        if record is None:
            continue
        hits.append(
            Hit(
                record.id,
                float(score),
                dict(record.metadata),
                precision="",
                keyword_rank=rank,
                keyword_score=float(score),
            )
        )
        if len(hits) == top_k:
            break
    return hits


def fuse(semantic: list[Hit], keyword: list[Hit], top_k: int, semantic_weight: float) -> list[Hit]:
    """The top_k of both lists by weighted reciprocal rank fusion; ties by id."""
    fused: dict[str, Hit] = {}
    for rank, hit in enumerate(semantic, 1):
        fused[hit.id] = replace(hit, semantic_rank=rank, semantic_score=hit.score)
    for rank, hit in enumerate(keyword, 1):
        known = fused.get(hit.id)
        fused[hit.id] = (
            replace(known, keyword_rank=rank, keyword_score=hit.keyword_score) if known is not None else hit
        )
    for doc_id, hit in fused.items():
        score = semantic_weight / (RRF_K + hit.semantic_rank) if hit.semantic_rank else 0.0
        score += (1 - semantic_weight) / (RRF_K + hit.keyword_rank) if hit.keyword_rank else 0.0
        fused[doc_id] = replace(hit, score=score)
    return sorted(fused.values(), key=lambda h: (-h.score, h.id))[:top_k]
