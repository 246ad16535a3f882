from mvr.v1 import collection_service_pb2 as _collection_service_pb2
from mvr.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SearchMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_MODE_UNSPECIFIED: _ClassVar[SearchMode]
    SEARCH_MODE_SEMANTIC: _ClassVar[SearchMode]
    SEARCH_MODE_KEYWORD: _ClassVar[SearchMode]
    SEARCH_MODE_HYBRID: _ClassVar[SearchMode]

class EncodeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENCODE_KIND_UNSPECIFIED: _ClassVar[EncodeKind]
    ENCODE_KIND_QUERY: _ClassVar[EncodeKind]
    ENCODE_KIND_DOCUMENT: _ClassVar[EncodeKind]
SEARCH_MODE_UNSPECIFIED: SearchMode
SEARCH_MODE_SEMANTIC: SearchMode
SEARCH_MODE_KEYWORD: SearchMode
SEARCH_MODE_HYBRID: SearchMode
ENCODE_KIND_UNSPECIFIED: EncodeKind
ENCODE_KIND_QUERY: EncodeKind
ENCODE_KIND_DOCUMENT: EncodeKind

class Query(_message.Message):
    __slots__ = ("text", "vectors")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    text: str
    vectors: _types_pb2.Vectors
    def __init__(self, text: _Optional[str] = ..., vectors: _Optional[_Union[_types_pb2.Vectors, _Mapping]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "query", "top_k", "candidates", "ef", "filter", "explain", "probe", "centroid_candidates", "mode", "semantic_weight", "where")
    class FilterEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    EF_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    PROBE_FIELD_NUMBER: _ClassVar[int]
    CENTROID_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    WHERE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    query: Query
    top_k: int
    candidates: int
    ef: int
    filter: _containers.ScalarMap[str, str]
    explain: bool
    probe: int
    centroid_candidates: int
    mode: SearchMode
    semantic_weight: float
    where: _types_pb2.Filter
    def __init__(self, collection: _Optional[str] = ..., query: _Optional[_Union[Query, _Mapping]] = ..., top_k: _Optional[int] = ..., candidates: _Optional[int] = ..., ef: _Optional[int] = ..., filter: _Optional[_Mapping[str, str]] = ..., explain: _Optional[bool] = ..., probe: _Optional[int] = ..., centroid_candidates: _Optional[int] = ..., mode: _Optional[_Union[SearchMode, str]] = ..., semantic_weight: _Optional[float] = ..., where: _Optional[_Union[_types_pb2.Filter, _Mapping]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "query_token_count")
    HITS_FIELD_NUMBER: _ClassVar[int]
    QUERY_TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    query_token_count: int
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., query_token_count: _Optional[int] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("id", "score", "metadata", "explanation", "precision", "semantic_rank", "semantic_score", "keyword_rank", "keyword_score", "typed_metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class TypedMetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _types_pb2.MetadataValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_types_pb2.MetadataValue, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_RANK_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_SCORE_FIELD_NUMBER: _ClassVar[int]
    KEYWORD_RANK_FIELD_NUMBER: _ClassVar[int]
    KEYWORD_SCORE_FIELD_NUMBER: _ClassVar[int]
    TYPED_METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    metadata: _containers.ScalarMap[str, str]
    explanation: _containers.RepeatedCompositeFieldContainer[TokenMatch]
    precision: _types_pb2.TokenPrecision
    semantic_rank: int
    semantic_score: float
    keyword_rank: int
    keyword_score: float
    typed_metadata: _containers.MessageMap[str, _types_pb2.MetadataValue]
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., metadata: _Optional[_Mapping[str, str]] = ..., explanation: _Optional[_Iterable[_Union[TokenMatch, _Mapping]]] = ..., precision: _Optional[_Union[_types_pb2.TokenPrecision, str]] = ..., semantic_rank: _Optional[int] = ..., semantic_score: _Optional[float] = ..., keyword_rank: _Optional[int] = ..., keyword_score: _Optional[float] = ..., typed_metadata: _Optional[_Mapping[str, _types_pb2.MetadataValue]] = ...) -> None: ...

class TokenMatch(_message.Message):
    __slots__ = ("query_token", "document_token", "score")
    QUERY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    query_token: int
    document_token: int
    score: float
    def __init__(self, query_token: _Optional[int] = ..., document_token: _Optional[int] = ..., score: _Optional[float] = ...) -> None: ...

class BatchSearchRequest(_message.Message):
    __slots__ = ("searches",)
    SEARCHES_FIELD_NUMBER: _ClassVar[int]
    searches: _containers.RepeatedCompositeFieldContainer[SearchRequest]
    def __init__(self, searches: _Optional[_Iterable[_Union[SearchRequest, _Mapping]]] = ...) -> None: ...

class BatchSearchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResponse, _Mapping]]] = ...) -> None: ...

class EncodeRequest(_message.Message):
    __slots__ = ("texts", "kind", "collection", "dtype")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    kind: EncodeKind
    collection: str
    dtype: _types_pb2.DType
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., kind: _Optional[_Union[EncodeKind, str]] = ..., collection: _Optional[str] = ..., dtype: _Optional[_Union[_types_pb2.DType, str]] = ...) -> None: ...

class EncodedText(_message.Message):
    __slots__ = ("vectors", "input_token_count", "truncated")
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    vectors: _types_pb2.Vectors
    input_token_count: int
    truncated: bool
    def __init__(self, vectors: _Optional[_Union[_types_pb2.Vectors, _Mapping]] = ..., input_token_count: _Optional[int] = ..., truncated: _Optional[bool] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("results", "encoder")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[EncodedText]
    encoder: _collection_service_pb2.EncoderSpec
    def __init__(self, results: _Optional[_Iterable[_Union[EncodedText, _Mapping]]] = ..., encoder: _Optional[_Union[_collection_service_pb2.EncoderSpec, _Mapping]] = ...) -> None: ...
