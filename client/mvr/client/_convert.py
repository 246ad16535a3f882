"""Request building and response decoding shared by the sync and asyncio clients.

Everything protobuf-shaped lives here; the two clients only differ in how they call the stubs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from mvr.client.types import (
    BatchAck,
    CollectionInfo,
    CollectionStats,
    DeleteResult,
    Document,
    DocumentStatus,
    FdeParams,
    Hit,
    HnswParams,
    SnapshotInfo,
    StoredDocument,
    TokenMatch,
    UpsertResult,
)
from mvr.v1 import collection_service_pb2 as cpb
from mvr.v1 import document_service_pb2 as dpb
from mvr.v1 import search_service_pb2 as spb
from mvr.v1 import snapshot_service_pb2 as snpb
from mvr.v1 import types_pb2 as tpb

SERVICES = ("mvr.v1.CollectionService", "mvr.v1.DocumentService", "mvr.v1.SearchService")

# gRPC's own retry policy (applied by the channel, transparent to callers): UNAVAILABLE is retried
# with exponential backoff. Every mvr write is idempotent (upsert by id, delete by id), so retrying
# a write whose first attempt did land is harmless.
RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": service} for service in SERVICES],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def channel_options(max_message_mb: int) -> list[tuple[str, Any]]:
    size = max_message_mb * 1024 * 1024
    return [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", RETRY_SERVICE_CONFIG),
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
    ]


PemSource = bytes | str | Path


def _pem(source: PemSource | None) -> bytes | None:
    """PEM bytes as given, or read from a file path."""
    if source is None or isinstance(source, bytes):
        return source
    return Path(source).read_bytes()


def channel_credentials(
    tls: bool,
    root_certificates: PemSource | None,
    certificate_chain: PemSource | None,
    private_key: PemSource | None,
) -> grpc.ChannelCredentials | None:
    """TLS credentials for a channel, or None for plaintext. Any certificate given means TLS; a client
    certificate (mutual TLS) needs both its chain and its key."""
    if (certificate_chain is None) != (private_key is None):
        raise ValueError("certificate_chain and private_key go together: give both or neither")
    if not (tls or root_certificates is not None or certificate_chain is not None):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_pem(root_certificates),  # None: the system's trusted roots
        private_key=_pem(private_key),
        certificate_chain=_pem(certificate_chain),
    )


def open_channel(
    channels: Any,
    target: str,
    max_message_mb: int,
    tls: bool,
    root_certificates: PemSource | None,
    certificate_chain: PemSource | None,
    private_key: PemSource | None,
) -> Any:
    """A channel from ``channels`` (``grpc`` or ``grpc.aio``): TLS when :func:`channel_credentials`
    says so, else plaintext; both with :func:`channel_options`."""
    options = channel_options(max_message_mb)
    credentials = channel_credentials(tls, root_certificates, certificate_chain, private_key)
    if credentials is None:
        return channels.insecure_channel(target, options=options)
    return channels.secure_channel(target, credentials, options=options)


def auth_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    if api_key is not None and (not api_key or api_key != api_key.strip() or "\n" in api_key):
        raise ValueError("api_key must be a non-empty string without surrounding whitespace or newlines")
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


# The call's timeout, also sent as metadata: a server behind a proxy that does not pass gRPC's own
# deadline on (an mvr cluster on Ray Serve) reads it here and gives its shards that much time.
TIMEOUT_HEADER = "mvr-timeout-ms"


def call_metadata(metadata: tuple[tuple[str, str], ...], timeout: float) -> tuple[tuple[str, str], ...]:
    return (*metadata, (TIMEOUT_HEADER, str(max(1, round(timeout * 1000)))))


_WIRE = {tpb.DTYPE_FLOAT32: np.dtype("<f4"), tpb.DTYPE_FLOAT16: np.dtype("<f2")}
_STORAGE = {"float32": tpb.DTYPE_FLOAT32, "float16": tpb.DTYPE_FLOAT16}
_KINDS = {"query": spb.ENCODE_KIND_QUERY, "document": spb.ENCODE_KIND_DOCUMENT}
_FDE_PARAMS = {"repetitions", "k_sim", "d_proj", "fill_empty", "final_dim", "seed"}
_HNSW_PARAMS = {"m", "ef_construction", "ef_search"}
_OTHER_PARAMS = {"storage_dtype", "query_maxlen", "doc_maxlen"}


# ------------------------------------------------------------------------------------------- names


def collection_name(name: str) -> str:
    """'papers' or 'collections/papers' → 'collections/papers'."""
    if not name:
        raise ValueError("collection name must not be empty")
    return name if name.startswith("collections/") else f"collections/{name}"


def collection_id(name: str) -> str:
    return collection_name(name).removeprefix("collections/")


# ----------------------------------------------------------------------------------------- vectors


def pack_vectors(array: Any, what: str = "vectors") -> tpb.Vectors:
    """A (n_tokens, dim) array → packed little-endian float32 Vectors."""
    matrix = np.asarray(array)
    if matrix.ndim != 2:
        raise ValueError(f"{what} must be 2-D (n_tokens, dim), got shape {matrix.shape}")
    if matrix.shape[0] < 1 or matrix.shape[1] < 1:
        raise ValueError(f"{what} must have at least one token and one dimension, got shape {matrix.shape}")
    if not np.issubdtype(matrix.dtype, np.number) or np.iscomplexobj(matrix):
        raise ValueError(f"{what} must be real numbers, got dtype {matrix.dtype}")
    packed = np.ascontiguousarray(matrix, dtype="<f4")
    return tpb.Vectors(dtype=tpb.DTYPE_FLOAT32, shape=list(packed.shape), data=packed.tobytes())


def unpack_vectors(message: tpb.Vectors) -> np.ndarray:
    """Vectors (float32 or float16) → a float32 (n_tokens, dim) array."""
    wire = _WIRE.get(message.dtype)
    if wire is None:
        raise ValueError(f"server sent vectors of unknown dtype {message.dtype}")
    return np.frombuffer(message.data, dtype=wire).reshape(tuple(message.shape)).astype(np.float32)


# ----------------------------------------------------------------------------------------- requests


def create_collection_request(
    name: str, model: str | None, dim: int | None, params: Mapping[str, Any]
) -> cpb.CreateCollectionRequest:
    unknown = set(params) - _FDE_PARAMS - _HNSW_PARAMS - _OTHER_PARAMS
    if unknown:
        raise TypeError(f"create_collection() got unknown parameters {sorted(unknown)}")
    if model is None and dim is None:
        raise ValueError("a collection without a model (model=None) needs dim")
    storage = params.get("storage_dtype", "float16")
    if storage not in _STORAGE:
        raise ValueError(f"storage_dtype must be 'float16' or 'float32', got {storage!r}")
    collection = cpb.Collection(
        encoder=cpb.EncoderSpec(
            model=model or "",
            query_maxlen=params.get("query_maxlen") or 0,
            doc_maxlen=params.get("doc_maxlen") or 0,
        ),
        dim=dim or 0,
        fde=cpb.FdeParams(**{k: v for k, v in params.items() if k in _FDE_PARAMS and v is not None}),
        hnsw=cpb.HnswParams(**{k: v for k, v in params.items() if k in _HNSW_PARAMS and v is not None}),
        storage_dtype=_STORAGE[storage],
    )
    return cpb.CreateCollectionRequest(collection_id=collection_id(name), collection=collection)


def document_message(doc: Document) -> dpb.Document:
    if doc.text is None and doc.vectors is None:
        raise ValueError(f"document {doc.id!r}: set text, vectors or both")
    message = dpb.Document(id=doc.id)
    for key, value in doc.metadata.items():
        if not isinstance(key, str):
            raise ValueError(f"document {doc.id!r}: metadata keys are strings, got {key!r}")
        if isinstance(value, str):
            message.metadata[key] = value  # the string map: understood by every server
        else:
            message.typed_metadata[key].CopyFrom(
                metadata_value(value, f"document {doc.id!r} metadata[{key!r}]")
            )
    if doc.text is not None:
        message.text = doc.text
    if doc.vectors is not None:
        message.vectors.CopyFrom(pack_vectors(doc.vectors, f"document {doc.id!r} vectors"))
    return message


def batches(docs: Iterable[Document], size: int) -> Iterable[list[dpb.Document]]:
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    batch: list[dpb.Document] = []
    for doc in docs:
        batch.append(document_message(doc))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def query_message(query: str | Any) -> spb.Query:
    if isinstance(query, str):
        return spb.Query(text=query)
    return spb.Query(vectors=pack_vectors(query, "query"))


def search_request(
    collection: str,
    query: str | Any,
    top_k: int,
    candidates: int | None,
    ef: int | None,
    filter: Mapping[str, Any] | None,
    explain: bool,
    mode: str = "semantic",
    semantic_weight: float | None = None,
) -> spb.SearchRequest:
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(_MODES)}, got {mode!r}")
    request = spb.SearchRequest(
        collection=collection_name(collection),
        query=query_message(query),
        top_k=top_k,
        candidates=candidates or 0,
        ef=ef or 0,
        explain=explain,
        mode=_MODES[mode],
    )
    if filter:
        request.where.CopyFrom(filter_message(filter))
    if semantic_weight is not None:
        request.semantic_weight = semantic_weight
    return request


_MODES = {
    "semantic": spb.SEARCH_MODE_SEMANTIC,
    "keyword": spb.SEARCH_MODE_KEYWORD,
    "hybrid": spb.SEARCH_MODE_HYBRID,
}


def encode_request(texts: Sequence[str], kind: str, collection: str | None) -> spb.EncodeRequest:
    if kind not in _KINDS:
        raise ValueError(f"kind must be 'query' or 'document', got {kind!r}")
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not a single string")
    return spb.EncodeRequest(
        texts=list(texts), kind=_KINDS[kind], collection=collection_name(collection) if collection else ""
    )


# ---------------------------------------------------------------------------------------- responses


def collection_info(message: cpb.Collection, with_stats: bool) -> CollectionInfo:
    fde, hnsw, encoder = message.fde, message.hnsw, message.encoder
    stats = None
    if with_stats and message.HasField("stats"):
        stats = CollectionStats(
            documents=message.stats.documents,
            tokens=message.stats.tokens,
            indexed_documents=message.stats.indexed_documents,
            bytes_on_disk=dict(message.stats.bytes_on_disk),
            bytes_in_memory=dict(message.stats.bytes_in_memory),
            coded_documents=message.stats.coded_documents,
            codec_generation=message.stats.codec_generation,
            recoded_documents=message.stats.recoded_documents,
        )
    return CollectionInfo(
        name=collection_id(message.name),
        model=encoder.model or None,
        encoder_format=encoder.format or None,
        weights_sha256=encoder.weights_sha256 or None,
        query_maxlen=encoder.query_maxlen or None,
        doc_maxlen=encoder.doc_maxlen or None,
        dim=message.dim,
        fde=FdeParams(
            repetitions=fde.repetitions,
            k_sim=fde.k_sim,
            d_proj=fde.d_proj,
            fill_empty=fde.fill_empty,
            final_dim=fde.final_dim or None,
            seed=fde.seed,
            output_dim=fde.output_dim,
        ),
        hnsw=HnswParams(m=hnsw.m, ef_construction=hnsw.ef_construction, ef_search=hnsw.ef_search),
        storage_dtype="float32" if message.storage_dtype == tpb.DTYPE_FLOAT32 else "float16",
        stats=stats,
        create_time=message.create_time.ToDatetime() if message.HasField("create_time") else None,
    )


def upsert_results(statuses: Iterable[dpb.DocumentStatus]) -> list[UpsertResult]:
    return [
        UpsertResult(
            id=s.id,
            created=s.code == dpb.DOCUMENT_STATUS_CODE_CREATED,
            token_count=s.token_count,
            truncated=s.truncated,
        )
        for s in statuses
    ]


def batch_ack(message: dpb.StreamUpsertDocumentsResponse) -> BatchAck:
    return BatchAck(
        batch_index=message.batch_index,
        ok=message.ok,
        statuses=[
            DocumentStatus(
                id=s.id,
                code=dpb.DocumentStatusCode.Name(s.code).removeprefix("DOCUMENT_STATUS_CODE_"),
                message=s.message,
                token_count=s.token_count,
                truncated=s.truncated,
            )
            for s in message.statuses
        ],
    )


def metadata_value(value: Any, where: str) -> tpb.MetadataValue:
    """A Python value as a typed metadata value: str, int, float, bool or a list of strings; anything
    else is refused (ValueError naming ``where``) rather than turned into its string."""
    if isinstance(value, bool):
        return tpb.MetadataValue(bool_value=value)
    if isinstance(value, int):
        return tpb.MetadataValue(int_value=value)
    if isinstance(value, float):
        return tpb.MetadataValue(double_value=value)
    if isinstance(value, str):
        return tpb.MetadataValue(string_value=value)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tpb.MetadataValue(string_list_value=tpb.StringList(values=list(value)))
    raise ValueError(f"{where}: {value!r} is not a metadata value (str, int, float, bool or list of str)")


def python_value(message: tpb.MetadataValue) -> Any:
    kind = message.WhichOneof("kind")
    if kind == "string_list_value":
        return list(message.string_list_value.values)
    return None if kind is None else getattr(message, kind)


def read_metadata(strings: Mapping[str, str], typed: Mapping[str, tpb.MetadataValue]) -> dict[str, Any]:
    """A document's or hit's metadata with its types (typed entries from servers that send them)."""
    return {**strings, **{k: python_value(v) for k, v in typed.items()}}


_OPERATORS = {
    "$eq": tpb.FILTER_OPERATOR_EQ,
    "$ne": tpb.FILTER_OPERATOR_NE,
    "$gt": tpb.FILTER_OPERATOR_GT,
    "$gte": tpb.FILTER_OPERATOR_GTE,
    "$lt": tpb.FILTER_OPERATOR_LT,
    "$lte": tpb.FILTER_OPERATOR_LTE,
    "$in": tpb.FILTER_OPERATOR_IN,
    "$nin": tpb.FILTER_OPERATOR_NIN,
    "$exists": tpb.FILTER_OPERATOR_EXISTS,
}


def filter_message(spec: Mapping[str, Any], path: str = "filter") -> tpb.Filter:
    """The filter language of Pinecone and Chroma (MongoDB's) as a Filter message:
    ``{"venue": "NeurIPS", "year": {"$gte": 2020}, "$or": [{...}, {...}], "$not": {...}}``; several
    entries in one dict must all hold. ValueError names the path of what is not understood."""
    if not isinstance(spec, Mapping) or not spec:
        raise ValueError(f"{path}: a filter is a non-empty dict, got {spec!r}")
    parts = []
    for key, value in spec.items():
        if key in ("$and", "$or"):
            if not isinstance(value, list | tuple) or not value:
                raise ValueError(f"{path}.{key}: takes a non-empty list of filters")
            children = [filter_message(v, f"{path}.{key}[{i}]") for i, v in enumerate(value)]
            which = "all_of" if key == "$and" else "any_of"
            parts.append(tpb.Filter(**{which: tpb.FilterList(filters=children)}))
        elif key == "$not":
            parts.append(tpb.Filter(negation=filter_message(value, f"{path}.$not")))
        elif key.startswith("$"):
            known = "$and, $or, $not; on fields: " + ", ".join(_OPERATORS)
            raise ValueError(f"{path}: unknown operator {key!r} (known: {known})")
        else:
            parts += _conditions(key, value, f"{path}.{key}")
    return parts[0] if len(parts) == 1 else tpb.Filter(all_of=tpb.FilterList(filters=parts))


def _conditions(key: str, value: Any, path: str) -> list[tpb.Filter]:
    if not isinstance(value, Mapping):  # equality shorthand
        return [_condition(key, "$eq", value, path)]
    if not value:
        raise ValueError(f"{path}: an empty dict of operators")
    return [_condition(key, op, operand, f"{path}.{op}") for op, operand in value.items()]


def _condition(key: str, op: str, operand: Any, path: str) -> tpb.Filter:
    operator = _OPERATORS.get(op)
    if operator is None:
        raise ValueError(f"{path}: unknown operator {op!r} (known: {', '.join(_OPERATORS)})")
    condition = tpb.Condition(key=key, operator=operator)
    if op == "$exists":
        if not isinstance(operand, bool):
            raise ValueError(f"{path}: takes true or false, got {operand!r}")
        condition.exists = operand
    elif op in ("$in", "$nin"):
        if not isinstance(operand, list | tuple) or not operand:
            raise ValueError(f"{path}: takes a non-empty list of values, got {operand!r}")
        condition.values.extend(metadata_value(v, f"{path}[{i}]") for i, v in enumerate(operand))
    else:
        if isinstance(operand, list | tuple):
            raise ValueError(f"{path}: takes one value, got the list {operand!r} (use $in)")
        condition.value.CopyFrom(metadata_value(operand, path))
    return tpb.Filter(condition=condition)


def stored_document(message: dpb.Document) -> StoredDocument:
    return StoredDocument(
        id=message.id,
        text=message.text or None,
        metadata=read_metadata(message.metadata, message.typed_metadata),
        vectors=unpack_vectors(message.vectors) if message.HasField("vectors") else None,
        token_count=message.token_count,
        truncated=message.truncated,
    )


def delete_result(message: dpb.DeleteDocumentsResponse) -> DeleteResult:
    return DeleteResult(
        deleted=list(message.deleted_ids), not_found=list(message.not_found_ids), count=message.deleted_count
    )


def hits(message: spb.SearchResponse) -> list[Hit]:
    return [
        Hit(
            id=h.id,
            score=h.score,
            metadata=read_metadata(h.metadata, h.typed_metadata),
            explanation=[TokenMatch(m.query_token, m.document_token, m.score) for m in h.explanation]
            if h.explanation
            else None,
            semantic_rank=h.semantic_rank,
            semantic_score=h.semantic_score,
            keyword_rank=h.keyword_rank,
            keyword_score=h.keyword_score,
        )
        for h in message.hits
    ]


def encoded(message: spb.EncodeResponse) -> list[np.ndarray]:
    return [unpack_vectors(result.vectors) for result in message.results]


def snapshot_info(message: snpb.Snapshot) -> SnapshotInfo:
    return SnapshotInfo(
        name=message.name,
        create_time=message.create_time.ToDatetime(),
        size_bytes=message.size_bytes,
        document_count=message.document_count,
        sha256=message.sha256,
    )


def snapshot_name(name: str) -> str:
    if not name.startswith("collections/") or "/snapshots/" not in name:
        raise ValueError(f"{name!r} is not a snapshot name 'collections/{{collection}}/snapshots/{{id}}'")
    return name


UPLOAD_CHUNK = 1 << 20
NO_DEADLINE = 24 * 3600.0  # snapshots copy whole collections: no default deadline of seconds


def restore_requests(
    collection: str, path: str | Path | None, snapshot: str | None
) -> Iterator[snpb.RestoreSnapshotRequest]:
    """The request stream of RestoreSnapshot: a server-side snapshot's name, or the file's bytes."""
    if (path is None) == (snapshot is None):
        raise ValueError("give exactly one of path (a local snapshot file) and snapshot (a server-side name)")
    collection_id_ = collection_id(collection)
    if snapshot is not None:
        yield snpb.RestoreSnapshotRequest(collection_id=collection_id_, snapshot=snapshot_name(snapshot))
        return
    with Path(path).open("rb") as handle:  # type: ignore[arg-type]
        yield snpb.RestoreSnapshotRequest(collection_id=collection_id_, data=handle.read(UPLOAD_CHUNK))
        while chunk := handle.read(UPLOAD_CHUNK):
            yield snpb.RestoreSnapshotRequest(data=chunk)


class SnapshotDownload:
    """Writes DownloadSnapshot's chunks to ``path`` through a temporary file, checking order, size and
    SHA-256; the file appears only when :meth:`finish` found it whole. Use as a context manager."""

    def __init__(self, name: str, path: str | Path) -> None:
        self.name, self.target = name, Path(path)
        self.partial = self.target.with_name(f".{self.target.name}.partial")
        self.digest, self.size, self.info = hashlib.sha256(), 0, None
        self._handle = self.partial.open("wb")

    def add(self, chunk: snpb.DownloadSnapshotResponse) -> None:
        if self.info is None:
            self.info = snapshot_info(chunk.snapshot)
        if chunk.offset != self.size:
            raise OSError(f"snapshot chunk at offset {chunk.offset}, expected {self.size}")
        self._handle.write(chunk.data)
        self.digest.update(chunk.data)
        self.size += len(chunk.data)

    def finish(self) -> SnapshotInfo:
        self._handle.close()
        info = self.info
        if info is None or self.size != info.size_bytes or self.digest.hexdigest() != info.sha256:
            raise OSError(f"snapshot {self.name!r} arrived damaged or incomplete ({self.size} bytes)")
        self.partial.replace(self.target)
        return info

    def __enter__(self) -> SnapshotDownload:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()
        self.partial.unlink(missing_ok=True)


def delete_request(
    collection: str, ids: Sequence[str] | None, where: Mapping[str, Any] | None
) -> dpb.DeleteDocumentsRequest:
    if isinstance(ids, str):
        raise TypeError("ids must be a list of ids, not a single string")
    if ids is None and where is None:
        raise ValueError("give ids, a filter (where=...), or both")
    request = dpb.DeleteDocumentsRequest(parent=collection_name(collection), ids=list(ids or []))
    if where is not None:
        request.where.CopyFrom(filter_message(where, "where"))
    return request


def list_request(
    collection: str, page_size: int, token: str, include_vectors: bool, where: Mapping[str, Any] | None
) -> dpb.ListDocumentsRequest:
    request = dpb.ListDocumentsRequest(
        parent=collection_name(collection),
        page_size=page_size,
        page_token=token,
        include_vectors=include_vectors,
    )
    if where is not None:
        request.where.CopyFrom(filter_message(where, "where"))
    return request
