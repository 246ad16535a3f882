"""Plain dataclasses the client returns and accepts: no protobuf in user code."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np


@dataclass
class Document:
    """A document to write: an id, and ``text``, ``vectors`` (float32, shape (n_tokens, dim)) or both
    (then the vectors are its tokens and the text is stored for keyword search and reading back)."""

    id: str
    text: str | None = None
    vectors: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # str, int, float, bool or list of str


@dataclass(frozen=True)
class StoredDocument:
    """A document as read back from the server."""

    id: str
    text: str | None
    metadata: dict[str, Any]  # str, int, float, bool or list of str values
    vectors: np.ndarray | None  # only when asked for (include_vectors=True)
    token_count: int
    truncated: bool


@dataclass(frozen=True)
class UpsertResult:
    """What happened to one written document: created (new id) or replaced."""

    id: str
    created: bool
    token_count: int
    truncated: bool


@dataclass(frozen=True)
class DocumentStatus:
    """Per-document outcome in a streamed batch: code is CREATED, REPLACED, INVALID or ABORTED."""

    id: str
    code: str
    message: str
    token_count: int
    truncated: bool


@dataclass(frozen=True)
class BatchAck:
    """Acknowledgement of one streamed batch; ``ok`` means it is durable, else nothing of it was stored."""

    batch_index: int
    ok: bool
    statuses: list[DocumentStatus]


@dataclass(frozen=True)
class DeleteResult:
    deleted: list[str]  # of the ids given
    not_found: list[str]  # of the ids given
    count: int = 0  # documents deleted in all (with a filter alone, the only figure)


@dataclass(frozen=True)
class TokenMatch:
    """One query token's best match in a hit: its contribution to the score."""

    query_token: int
    document_token: int
    score: float


@dataclass(frozen=True)
class Hit:
    """A search result: ``score`` is the exact MaxSim score (semantic mode), the BM25 score (keyword)
    or the fused reciprocal-rank score (hybrid); ``explanation`` only when asked for. The ranks
    (1-based; 0: not in that list) and scores of the hit in the semantic and keyword lists."""

    id: str
    score: float
    metadata: dict[str, Any]
    explanation: list[TokenMatch] | None = None
    semantic_rank: int = 0
    semantic_score: float = 0.0
    keyword_rank: int = 0
    keyword_score: float = 0.0


@dataclass(frozen=True)
class FdeParams:
    repetitions: int
    k_sim: int
    d_proj: int
    fill_empty: bool
    final_dim: int | None
    seed: int
    output_dim: int


@dataclass(frozen=True)
class HnswParams:
    m: int
    ef_construction: int
    ef_search: int


@dataclass(frozen=True)
class CollectionStats:
    documents: int
    tokens: int
    indexed_documents: int
    bytes_on_disk: dict[str, int]
    bytes_in_memory: dict[str, int]
    coded_documents: int = 0  # live documents the centroid stages read (once the codec is trained)
    codec_generation: int = 0  # codecs trained so far (0: not coded yet)
    recoded_documents: int = 0  # while a retrained codec's codes are written: documents done so far


@dataclass(frozen=True)
class CollectionInfo:
    """A collection's configuration (immutable) and, when read with get_collection, its stats."""

    name: str  # the collection id, e.g. "papers"
    model: str | None  # None: precomputed vectors only
    encoder_format: str | None
    weights_sha256: str | None
    query_maxlen: int | None
    doc_maxlen: int | None
    dim: int
    fde: FdeParams
    hnsw: HnswParams
    storage_dtype: str
    stats: CollectionStats | None
    create_time: datetime | None


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot kept by the server (see Client.create_snapshot)."""

    name: str  # "collections/{collection}/snapshots/{snapshot_id}"
    create_time: datetime
    size_bytes: int
    document_count: int
    sha256: str  # hex SHA-256 of the whole file

    @property
    def collection(self) -> str:
        return self.name.split("/")[1]
