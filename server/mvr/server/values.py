"""Plain values that cross between the engine and the service layer (no gRPC types)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from mvr.server.metadata import MetaValue


@dataclass
class DocumentInput:
    """A document to write: ``text``, ``vectors`` (float32 (n, dim)) or both (the text is then stored for
    keyword search and reading back, and the vectors are its tokens: the text is not encoded)."""

    id: str
    vectors: np.ndarray | None = None
    text: str | None = None
    metadata: dict[str, MetaValue] = field(default_factory=dict)
    truncated: bool = False  # vectors of a text its encoder cut to the model's length (bulk ingest)


@dataclass
class Document:
    id: str
    text: str | None
    metadata: dict[str, MetaValue]
    vectors: np.ndarray | None
    n_tokens: int
    truncated: bool


@dataclass
class UpsertResult:
    id: str
    created: bool
    n_tokens: int
    truncated: bool


@dataclass
class TokenMatch:
    query_token: int
    doc_token: int
    score: float


@dataclass
class Hit:
    id: str
    score: float
    metadata: dict[str, MetaValue]
    explanation: list[TokenMatch] | None = None
    precision: str = "float32"  # what the score was computed over: "float16", "float32", "residual8", ...
    # hybrid search: the hit's 1-based rank and score in each list (0: not in it); keyword hits and
    # semantic hits fill their own
    semantic_rank: int = 0
    semantic_score: float = 0.0
    keyword_rank: int = 0
    keyword_score: float = 0.0


@dataclass
class CollectionStats:
    documents: int
    tokens: int
    indexed: int
    bytes_on_disk: dict[str, int]
    bytes_in_memory: dict[str, int]
    coded: int = 0  # documents whose codes the cascade reads
    centroids: int = 0  # centroids of the collection's codec, 0 before training
    codec_generation: int = 0  # codecs trained so far (the first, then one per retraining)
    recoded: int = 0  # documents re-coded so far by a retraining in progress
