"""Wire ↔ engine conversion: the only place that knows both protobuf messages and engine types.

Owns: parsing resource names and page tokens, unpacking and validating packed vectors, and turning
engine dataclasses (CollectionConfig, Document, Hit, ...) into mvr.v1 messages. Every validation error
is an :class:`~mvr.server.errors.InvalidArgument` naming the request field (``documents[3].vectors``),
so the service can hand the message to the client unchanged.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from mvr.server import metadata as meta
from mvr.server.config import CollectionConfig, HNSWParams
from mvr.server.errors import InvalidArgument
from mvr.server.fde import FDEConfig
from mvr.server.metadata import MetaValue
from mvr.server.snapshot import SnapshotInfo
from mvr.server.values import CollectionStats, Document, DocumentInput, Hit, UpsertResult
from mvr.v1 import collection_service_pb2 as cpb
from mvr.v1 import document_service_pb2 as dpb
from mvr.v1 import search_service_pb2 as spb
from mvr.v1 import snapshot_service_pb2 as snpb
from mvr.v1 import types_pb2 as tpb

_WIRE_DTYPES: dict[int, np.dtype] = {
    tpb.DTYPE_FLOAT32: np.dtype("<f4"),
    tpb.DTYPE_FLOAT16: np.dtype("<f2"),
}
_STORAGE_DTYPE_NAMES = {tpb.DTYPE_FLOAT32: "float32", tpb.DTYPE_FLOAT16: "float16"}
_COLLECTION_NAME = re.compile(r"^collections/([^/]+)$")
_DOCUMENT_NAME = re.compile(r"^collections/([^/]+)/documents/(.+)$", re.DOTALL)
_SNAPSHOT_NAME = re.compile(r"^collections/([^/]+)/snapshots/([^/]+)$")


# ---------------------------------------------------------------------------------------------------
# names and page tokens


def collection_id_from_name(name: str, field: str) -> str:
    """``collections/{id}`` → ``id``; the id's own syntax is checked by the engine."""
    if not name:
        raise InvalidArgument(field, "is required (a collection name, 'collections/{collection_id}')")
    match = _COLLECTION_NAME.match(name)
    if match is None:
        raise InvalidArgument(field, f"{name!r} is not a collection name of the form 'collections/{{id}}'")
    return match.group(1)


def document_name_parts(name: str, field: str) -> tuple[str, str]:
    """``collections/{c}/documents/{d}`` → ``(c, d)``; ``d`` is everything after ``/documents/``."""
    return _child_name_parts(_DOCUMENT_NAME, "document", name, field)


def snapshot_name_parts(name: str, field: str) -> tuple[str, str]:
    """``collections/{c}/snapshots/{s}`` → ``(c, s)``; the parts' own syntax is checked by the engine."""
    return _child_name_parts(_SNAPSHOT_NAME, "snapshot", name, field)


def _child_name_parts(pattern: re.Pattern[str], kind: str, name: str, field: str) -> tuple[str, str]:
    """The collection id and child id of a ``collections/{c}/{kind}s/{id}`` resource name."""
    match = pattern.match(name)
    if match is None:
        raise InvalidArgument(
            field, f"{name!r} is not a {kind} name of the form 'collections/{{c}}/{kind}s/{{id}}'"
        )
    return match.group(1), match.group(2)


def snapshot_to_proto(info: SnapshotInfo) -> snpb.Snapshot:
    created = Timestamp()
    created.FromNanoseconds(int(info.created * 1e9))
    return snpb.Snapshot(
        name=f"collections/{info.collection_id}/snapshots/{info.snapshot_id}",
        create_time=created,
        size_bytes=info.size_bytes,
        document_count=info.documents,
        sha256=info.sha256,
    )


def collection_name(collection_id: str) -> str:
    return f"collections/{collection_id}"


def encode_page_token(after: str) -> str:
    """Page tokens are opaque to clients: URL-safe base64 of a small JSON object."""
    return base64.urlsafe_b64encode(json.dumps({"after": after}).encode()).decode()


def decode_page_token(token: str, field: str = "page_token") -> str | None:
    if not token:
        return None
    try:
        after = json.loads(base64.urlsafe_b64decode(token.encode()))["after"]
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise InvalidArgument(field, f"{token!r} is not a page token returned by this server") from None
    if not isinstance(after, str):
        raise InvalidArgument(field, f"{token!r} is not a page token returned by this server")
    return after


def page_size(value: int, field: str = "page_size", default: int = 100, maximum: int = 1000) -> int:
    if value == 0:
        return default
    if not 1 <= value <= maximum:
        raise InvalidArgument(field, f"must be between 1 and {maximum} (or 0 for {default}), got {value}")
    return value


# ---------------------------------------------------------------------------------------------------
# vectors


def vectors_from_proto(message: tpb.Vectors, field: str) -> np.ndarray:
    """Unpacks a Vectors message into a C-contiguous float32 (n_tokens, dim) array, validated."""
    dtype = _WIRE_DTYPES.get(message.dtype)
    if dtype is None:
        raise InvalidArgument(
            f"{field}.dtype",
            f"must be DTYPE_FLOAT32 or DTYPE_FLOAT16, got {tpb.DType.Name(message.dtype) if message.dtype in tpb.DType.values() else message.dtype}",  # noqa: E501
        )
    shape = tuple(message.shape)
    if len(shape) != 2:
        raise InvalidArgument(
            f"{field}.shape", f"must have exactly 2 entries [n_tokens, dim], got {list(shape)}"
        )
    n_tokens, dim = shape
    if n_tokens < 1 or dim < 1:
        raise InvalidArgument(f"{field}.shape", f"entries must be >= 1, got {list(shape)}")
    expected = n_tokens * dim * dtype.itemsize
    if len(message.data) != expected:
        raise InvalidArgument(
            f"{field}.data",
            f"has {len(message.data)} bytes, but shape {list(shape)} of {dtype.name} needs {expected}",
        )
    array = np.frombuffer(message.data, dtype=dtype).reshape(shape).astype(np.float32)
    if not np.isfinite(array).all():
        row, col = np.argwhere(~np.isfinite(array))[0]
        raise InvalidArgument(
            f"{field}.data", f"element [{row}, {col}] is {array[row, col]}; vectors must be finite"
        )
    return np.ascontiguousarray(array)


def vectors_to_proto(array: np.ndarray, dtype: int = tpb.DTYPE_FLOAT32) -> tpb.Vectors:
    wire = _WIRE_DTYPES[dtype]
    return tpb.Vectors(
        dtype=dtype, shape=list(array.shape), data=np.ascontiguousarray(array, dtype=wire).tobytes()
    )


def storage_dtype_for_vectors(name: str) -> int:
    return tpb.DTYPE_FLOAT16 if name == "float16" else tpb.DTYPE_FLOAT32


# ---------------------------------------------------------------------------------------------------
# collections


@dataclass(frozen=True)
class CreateCollectionArgs:
    """A CreateCollectionRequest, unpacked into engine types; ``None`` means 'server default'."""

    collection_id: str
    model: str | None
    dim: int | None
    fde: dict[str, object]
    hnsw: dict[str, int]
    vector_dtype: str
    query_maxlen: int | None
    doc_maxlen: int | None
    tokens: dict[str, object]


def token_storage_args(message: cpb.TokenStorage) -> dict[str, object]:
    """The TokenStorage overrides a CreateCollection request sets (unset fields: server defaults)."""
    if message.trained_centroids or message.precision:
        field = "trained_centroids" if message.trained_centroids else "precision"
        raise InvalidArgument(f"collection.token_storage.{field}", "is output only; leave it unset")
    if message.disable_codes and message.residual_bits:
        raise InvalidArgument(
            "collection.token_storage.residual_bits",
            f"is {message.residual_bits}, but disable_codes is set: codes are off",
        )
    tokens: dict[str, object] = {}
    if message.disable_codes:
        tokens["residual_bits"] = 0
    elif message.residual_bits:
        tokens["residual_bits"] = message.residual_bits
    if message.keep_vectors:
        tokens["keep_vectors"] = True
    if message.centroids:
        tokens["centroids"] = message.centroids
    if message.train_after_tokens:
        tokens["train_after_tokens"] = message.train_after_tokens
    return tokens


_RESIDUAL_PRECISION = {
    1: tpb.TOKEN_PRECISION_RESIDUAL_1BIT,
    2: tpb.TOKEN_PRECISION_RESIDUAL_2BIT,
    4: tpb.TOKEN_PRECISION_RESIDUAL_4BIT,
    8: tpb.TOKEN_PRECISION_RESIDUAL_8BIT,
}
_PRECISION_BY_NAME = {
    "float32": tpb.TOKEN_PRECISION_FLOAT32,
    "float16": tpb.TOKEN_PRECISION_FLOAT16,
    **{f"residual{bits}": value for bits, value in _RESIDUAL_PRECISION.items()},
}


def precision_to_proto(name: str) -> int:
    return _PRECISION_BY_NAME[name]


def token_storage_to_proto(config: CollectionConfig, trained_centroids: int) -> cpb.TokenStorage:
    storage = config.tokens
    if not storage.coded or storage.keep_vectors:
        precision = precision_to_proto(config.vector_dtype)
    else:
        precision = _RESIDUAL_PRECISION[storage.residual_bits]
    return cpb.TokenStorage(
        residual_bits=storage.residual_bits,
        disable_codes=not storage.coded,
        keep_vectors=storage.keep_vectors,
        centroids=storage.centroids,
        train_after_tokens=storage.train_after_tokens,
        trained_centroids=trained_centroids,
        precision=precision,
    )


def create_collection_args(request: cpb.CreateCollectionRequest) -> CreateCollectionArgs:
    collection = request.collection
    fde: dict[str, object] = {}
    if collection.fde.repetitions:
        fde["repetitions"] = collection.fde.repetitions
    if collection.fde.HasField("k_sim"):
        fde["k_sim"] = collection.fde.k_sim
    if collection.fde.d_proj:
        fde["d_proj"] = collection.fde.d_proj
    if collection.fde.HasField("fill_empty"):
        fde["fill_empty"] = collection.fde.fill_empty
    if collection.fde.final_dim:
        fde["final_dim"] = collection.fde.final_dim
    if collection.fde.HasField("seed"):
        fde["seed"] = collection.fde.seed
    hnsw = {
        key: value
        for key, value in (
            ("m", collection.hnsw.m),
            ("ef_construction", collection.hnsw.ef_construction),
            ("ef_search", collection.hnsw.ef_search),
        )
        if value
    }
    if collection.storage_dtype == tpb.DTYPE_UNSPECIFIED:
        vector_dtype = "float16"
    elif collection.storage_dtype in _STORAGE_DTYPE_NAMES:
        vector_dtype = _STORAGE_DTYPE_NAMES[collection.storage_dtype]
    else:
        raise InvalidArgument(
            "collection.storage_dtype",
            f"must be DTYPE_FLOAT16 or DTYPE_FLOAT32, got {collection.storage_dtype}",
        )
    return CreateCollectionArgs(
        collection_id=request.collection_id,
        model=collection.encoder.model or None,
        dim=collection.dim or None,
        fde=fde,
        hnsw=hnsw,
        vector_dtype=vector_dtype,
        query_maxlen=collection.encoder.query_maxlen or None,
        doc_maxlen=collection.encoder.doc_maxlen or None,
        tokens=token_storage_args(collection.token_storage),
    )


def fde_to_proto(config: FDEConfig, output_dim: int) -> cpb.FdeParams:
    return cpb.FdeParams(
        repetitions=config.repetitions,
        k_sim=config.k_sim,
        d_proj=config.d_proj,
        fill_empty=config.fill_empty,
        final_dim=config.final_dim or 0,
        seed=config.seed,
        output_dim=output_dim,
    )


def hnsw_to_proto(params: HNSWParams) -> cpb.HnswParams:
    return cpb.HnswParams(m=params.m, ef_construction=params.ef_construction, ef_search=params.ef_search)


def encoder_spec_to_proto(spec) -> cpb.EncoderSpec:  # spec: mvr.server.encoder.EncoderSpec | None
    if spec is None:
        return cpb.EncoderSpec()
    return cpb.EncoderSpec(
        model=spec.model,
        format=spec.format,
        weights_sha256=spec.weights_sha256,
        dim=spec.dim,
        query_maxlen=spec.query_maxlen,
        doc_maxlen=spec.doc_maxlen,
    )


def stats_to_proto(stats: CollectionStats) -> cpb.CollectionStats:
    return cpb.CollectionStats(
        documents=stats.documents,
        tokens=stats.tokens,
        indexed_documents=stats.indexed,
        bytes_on_disk=stats.bytes_on_disk,
        bytes_in_memory=stats.bytes_in_memory,
        coded_documents=stats.coded,
        codec_generation=stats.codec_generation,
        recoded_documents=stats.recoded,
    )


def collection_to_proto(
    config: CollectionConfig,
    fde_output_dim: int,
    stats: CollectionStats | None = None,
    trained_centroids: int = 0,
) -> cpb.Collection:
    message = cpb.Collection(
        name=collection_name(config.name),
        encoder=encoder_spec_to_proto(config.encoder),
        dim=config.dim,
        fde=fde_to_proto(config.fde, fde_output_dim),
        hnsw=hnsw_to_proto(config.hnsw),
        storage_dtype=storage_dtype_for_vectors(config.vector_dtype),
        token_storage=token_storage_to_proto(config, trained_centroids),
    )
    created = getattr(config, "created_at", None)
    if created:
        timestamp = Timestamp()
        timestamp.FromNanoseconds(int(float(created) * 1e9))
        message.create_time.CopyFrom(timestamp)
    if stats is not None:
        message.stats.CopyFrom(stats_to_proto(stats))
    return message


# ---------------------------------------------------------------------------------------------------
# documents


def document_inputs_from_proto(messages: Sequence[dpb.Document]) -> list[DocumentInput]:
    """A batch's documents, each refused by its field ``documents[i]...``."""
    return [document_input_from_proto(d, f"documents[{i}]") for i, d in enumerate(messages)]


def document_input_from_proto(message: dpb.Document, field: str) -> DocumentInput:
    has_text = bool(message.text)
    has_vectors = message.HasField("vectors")
    if not has_text and not has_vectors:
        raise InvalidArgument(field, "set 'text', 'vectors' or both")
    if not message.id:
        raise InvalidArgument(f"{field}.id", "is required")
    if has_text and not message.text.strip():
        raise InvalidArgument(f"{field}.text", "must not be empty or only whitespace")
    vectors = vectors_from_proto(message.vectors, f"{field}.vectors") if has_vectors else None
    metadata: dict[str, object] = dict(message.metadata)
    for key, value in message.typed_metadata.items():
        if key in metadata:
            raise InvalidArgument(f"{field}.typed_metadata[{key!r}]", "is also set in metadata: use one map")
        metadata[key] = metadata_value_from_proto(value, f"{field}.typed_metadata[{key!r}]")
    return DocumentInput(
        id=message.id,
        text=message.text if has_text else None,
        vectors=vectors,
        metadata=metadata,  # type: ignore[arg-type]  # checked and typed by the engine
    )


# ---------------------------------------------------------------------------------------------------
# metadata and filters


def metadata_value_from_proto(message: tpb.MetadataValue, field: str) -> MetaValue:
    kind = message.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument(field, "has no value: set one of string_value, int_value, double_value, ...")
    if kind == "string_list_value":
        return tuple(message.string_list_value.values)
    return getattr(message, kind)


def metadata_value_to_proto(value: MetaValue) -> tpb.MetadataValue:
    if isinstance(value, bool):
        return tpb.MetadataValue(bool_value=value)
    if isinstance(value, int):
        return tpb.MetadataValue(int_value=value)
    if isinstance(value, float):
        return tpb.MetadataValue(double_value=value)
    if isinstance(value, str):
        return tpb.MetadataValue(string_value=value)
    return tpb.MetadataValue(string_list_value=tpb.StringList(values=list(value)))


def string_metadata(metadata: Mapping[str, MetaValue]) -> dict[str, str]:
    """The string-valued entries: what the string map carries."""
    return {k: v for k, v in metadata.items() if isinstance(v, str)}


def typed_metadata(metadata: Mapping[str, MetaValue]) -> dict[str, tpb.MetadataValue]:
    return {k: metadata_value_to_proto(v) for k, v in metadata.items()}


_OPERATORS = {
    tpb.FILTER_OPERATOR_EQ: "eq",
    tpb.FILTER_OPERATOR_NE: "ne",
    tpb.FILTER_OPERATOR_GT: "gt",
    tpb.FILTER_OPERATOR_GTE: "gte",
    tpb.FILTER_OPERATOR_LT: "lt",
    tpb.FILTER_OPERATOR_LTE: "lte",
    tpb.FILTER_OPERATOR_IN: "in",
    tpb.FILTER_OPERATOR_NIN: "nin",
    tpb.FILTER_OPERATOR_EXISTS: "exists",
}


def where_of(
    request: spb.SearchRequest | dpb.ListDocumentsRequest | dpb.DeleteDocumentsRequest,
) -> meta.Filter | None:
    """A request's optional ``where`` filter."""
    return filter_from_proto(request.where, "where") if request.HasField("where") else None


def filter_from_proto(message: tpb.Filter, field: str) -> meta.Filter:
    """A Filter message as the engine's filter tree; INVALID_ARGUMENT naming the path of what is
    malformed (operand types against the collection are checked by the engine)."""
    kind = message.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument(field, "is empty: set condition, all_of, any_of or negation")
    if kind == "negation":
        return meta.Not(filter_from_proto(message.negation, f"{field}.negation"))
    if kind in ("all_of", "any_of"):
        parts = getattr(message, kind).filters
        children = tuple(filter_from_proto(f, f"{field}.{kind}.filters[{i}]") for i, f in enumerate(parts))
        return meta.AllOf(children) if kind == "all_of" else meta.AnyOf(children)
    condition, path = message.condition, f"{field}.condition"
    op = _OPERATORS.get(condition.operator)
    if op is None:
        raise InvalidArgument(
            f"{path}.operator",
            f"must be a FILTER_OPERATOR_* other than unspecified, got {condition.operator}",
        )
    value = None
    if condition.HasField("value"):
        value = metadata_value_from_proto(condition.value, f"{path}.value")
    values = tuple(
        metadata_value_from_proto(v, f"{path}.values[{i}]") for i, v in enumerate(condition.values)
    )
    exists = condition.exists if condition.HasField("exists") else None
    return meta.Condition(condition.key, op, value, values, exists)


def document_to_proto(
    collection_id: str, document: Document, storage_dtype: str, include_vectors: bool
) -> dpb.Document:
    message = dpb.Document(
        name=f"{collection_name(collection_id)}/documents/{document.id}",
        id=document.id,
        text=document.text or "",
        metadata=string_metadata(document.metadata),
        typed_metadata=typed_metadata(document.metadata),
        token_count=document.n_tokens,
        truncated=document.truncated,
    )
    if include_vectors and document.vectors is not None and document.vectors.size:
        message.vectors.CopyFrom(vectors_to_proto(document.vectors, storage_dtype_for_vectors(storage_dtype)))
    return message


def upsert_statuses(results: list[UpsertResult]) -> list[dpb.DocumentStatus]:
    return [
        dpb.DocumentStatus(
            id=result.id,
            code=dpb.DOCUMENT_STATUS_CODE_CREATED if result.created else dpb.DOCUMENT_STATUS_CODE_REPLACED,
            message="truncated at the encoder's doc_maxlen" if result.truncated else "",
            token_count=result.n_tokens,
            truncated=result.truncated,
        )
        for result in results
    ]


def failed_batch_statuses(ids: list[str], failed_index: int | None, message: str) -> list[dpb.DocumentStatus]:
    """Statuses for a batch that was not stored: the culprit INVALID, every other document ABORTED."""
    statuses = []
    for index, doc_id in enumerate(ids):
        if index == failed_index:
            statuses.append(
                dpb.DocumentStatus(id=doc_id, code=dpb.DOCUMENT_STATUS_CODE_INVALID, message=message)
            )
        else:
            statuses.append(
                dpb.DocumentStatus(
                    id=doc_id,
                    code=dpb.DOCUMENT_STATUS_CODE_ABORTED,
                    message="not stored: another document of the batch failed"
                    if failed_index is not None
                    else message,
                )
            )
    return statuses


# ---------------------------------------------------------------------------------------------------
# search


_SEARCH_MODES = {
    spb.SEARCH_MODE_UNSPECIFIED: "semantic",
    spb.SEARCH_MODE_SEMANTIC: "semantic",
    spb.SEARCH_MODE_KEYWORD: "keyword",
    spb.SEARCH_MODE_HYBRID: "hybrid",
}


def search_mode(value: int, field: str) -> str:
    mode = _SEARCH_MODES.get(value)
    if mode is None:
        raise InvalidArgument(
            field, f"must be SEARCH_MODE_SEMANTIC, SEARCH_MODE_KEYWORD or SEARCH_MODE_HYBRID, got {value}"
        )
    return mode


def hits_to_proto(hits: list[Hit]) -> list[spb.Hit]:
    messages = []
    for hit in hits:
        message = spb.Hit(
            id=hit.id,
            score=hit.score,
            metadata=string_metadata(hit.metadata),
            typed_metadata=typed_metadata(hit.metadata),
            precision=precision_to_proto(hit.precision) if hit.precision else tpb.TOKEN_PRECISION_UNSPECIFIED,
            semantic_rank=hit.semantic_rank,
            semantic_score=hit.semantic_score,
            keyword_rank=hit.keyword_rank,
            keyword_score=hit.keyword_score,
        )
        if hit.explanation is not None:
            message.explanation.extend(
                spb.TokenMatch(query_token=m.query_token, document_token=m.doc_token, score=m.score)
                for m in hit.explanation
            )
        messages.append(message)
    return messages
