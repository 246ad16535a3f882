import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from mvr.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Collection(_message.Message):
    __slots__ = ("name", "encoder", "dim", "fde", "hnsw", "storage_dtype", "stats", "create_time", "token_storage")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    FDE_FIELD_NUMBER: _ClassVar[int]
    HNSW_FIELD_NUMBER: _ClassVar[int]
    STORAGE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_STORAGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    encoder: EncoderSpec
    dim: int
    fde: FdeParams
    hnsw: HnswParams
    storage_dtype: _types_pb2.DType
    stats: CollectionStats
    create_time: _timestamp_pb2.Timestamp
    token_storage: TokenStorage
    def __init__(self, name: _Optional[str] = ..., encoder: _Optional[_Union[EncoderSpec, _Mapping]] = ..., dim: _Optional[int] = ..., fde: _Optional[_Union[FdeParams, _Mapping]] = ..., hnsw: _Optional[_Union[HnswParams, _Mapping]] = ..., storage_dtype: _Optional[_Union[_types_pb2.DType, str]] = ..., stats: _Optional[_Union[CollectionStats, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., token_storage: _Optional[_Union[TokenStorage, _Mapping]] = ...) -> None: ...

class TokenStorage(_message.Message):
    __slots__ = ("residual_bits", "disable_codes", "keep_vectors", "centroids", "train_after_tokens", "trained_centroids", "precision")
    RESIDUAL_BITS_FIELD_NUMBER: _ClassVar[int]
    DISABLE_CODES_FIELD_NUMBER: _ClassVar[int]
    KEEP_VECTORS_FIELD_NUMBER: _ClassVar[int]
    CENTROIDS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_AFTER_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRAINED_CENTROIDS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    residual_bits: int
    disable_codes: bool
    keep_vectors: bool
    centroids: int
    train_after_tokens: int
    trained_centroids: int
    precision: _types_pb2.TokenPrecision
    def __init__(self, residual_bits: _Optional[int] = ..., disable_codes: _Optional[bool] = ..., keep_vectors: _Optional[bool] = ..., centroids: _Optional[int] = ..., train_after_tokens: _Optional[int] = ..., trained_centroids: _Optional[int] = ..., precision: _Optional[_Union[_types_pb2.TokenPrecision, str]] = ...) -> None: ...

class EncoderSpec(_message.Message):
    __slots__ = ("model", "format", "weights_sha256", "dim", "query_maxlen", "doc_maxlen")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    QUERY_MAXLEN_FIELD_NUMBER: _ClassVar[int]
    DOC_MAXLEN_FIELD_NUMBER: _ClassVar[int]
    model: str
    format: str
    weights_sha256: str
    dim: int
    query_maxlen: int
    doc_maxlen: int
    def __init__(self, model: _Optional[str] = ..., format: _Optional[str] = ..., weights_sha256: _Optional[str] = ..., dim: _Optional[int] = ..., query_maxlen: _Optional[int] = ..., doc_maxlen: _Optional[int] = ...) -> None: ...

class FdeParams(_message.Message):
    __slots__ = ("repetitions", "k_sim", "d_proj", "fill_empty", "final_dim", "seed", "output_dim")
    REPETITIONS_FIELD_NUMBER: _ClassVar[int]
    K_SIM_FIELD_NUMBER: _ClassVar[int]
    D_PROJ_FIELD_NUMBER: _ClassVar[int]
    FILL_EMPTY_FIELD_NUMBER: _ClassVar[int]
    FINAL_DIM_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIM_FIELD_NUMBER: _ClassVar[int]
    repetitions: int
    k_sim: int
    d_proj: int
    fill_empty: bool
    final_dim: int
    seed: int
    output_dim: int
    def __init__(self, repetitions: _Optional[int] = ..., k_sim: _Optional[int] = ..., d_proj: _Optional[int] = ..., fill_empty: _Optional[bool] = ..., final_dim: _Optional[int] = ..., seed: _Optional[int] = ..., output_dim: _Optional[int] = ...) -> None: ...

class HnswParams(_message.Message):
    __slots__ = ("m", "ef_construction", "ef_search")
    M_FIELD_NUMBER: _ClassVar[int]
    EF_CONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    m: int
    ef_construction: int
    ef_search: int
    def __init__(self, m: _Optional[int] = ..., ef_construction: _Optional[int] = ..., ef_search: _Optional[int] = ...) -> None: ...

class CollectionStats(_message.Message):
    __slots__ = ("documents", "tokens", "indexed_documents", "bytes_on_disk", "bytes_in_memory", "coded_documents", "codec_generation", "recoded_documents")
    class BytesOnDiskEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class BytesInMemoryEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    INDEXED_DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    BYTES_ON_DISK_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_MEMORY_FIELD_NUMBER: _ClassVar[int]
    CODED_DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    CODEC_GENERATION_FIELD_NUMBER: _ClassVar[int]
    RECODED_DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    documents: int
    tokens: int
    indexed_documents: int
    bytes_on_disk: _containers.ScalarMap[str, int]
    bytes_in_memory: _containers.ScalarMap[str, int]
    coded_documents: int
    codec_generation: int
    recoded_documents: int
    def __init__(self, documents: _Optional[int] = ..., tokens: _Optional[int] = ..., indexed_documents: _Optional[int] = ..., bytes_on_disk: _Optional[_Mapping[str, int]] = ..., bytes_in_memory: _Optional[_Mapping[str, int]] = ..., coded_documents: _Optional[int] = ..., codec_generation: _Optional[int] = ..., recoded_documents: _Optional[int] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("collection_id", "collection")
    COLLECTION_ID_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection_id: str
    collection: Collection
    def __init__(self, collection_id: _Optional[str] = ..., collection: _Optional[_Union[Collection, _Mapping]] = ...) -> None: ...

class CreateCollectionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ...) -> None: ...

class GetCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetCollectionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections", "next_page_token")
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[Collection]
    next_page_token: str
    def __init__(self, collections: _Optional[_Iterable[_Union[Collection, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteCollectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
