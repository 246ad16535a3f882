from mvr.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DocumentStatusCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DOCUMENT_STATUS_CODE_UNSPECIFIED: _ClassVar[DocumentStatusCode]
    DOCUMENT_STATUS_CODE_CREATED: _ClassVar[DocumentStatusCode]
    DOCUMENT_STATUS_CODE_REPLACED: _ClassVar[DocumentStatusCode]
    DOCUMENT_STATUS_CODE_INVALID: _ClassVar[DocumentStatusCode]
    DOCUMENT_STATUS_CODE_ABORTED: _ClassVar[DocumentStatusCode]
DOCUMENT_STATUS_CODE_UNSPECIFIED: DocumentStatusCode
DOCUMENT_STATUS_CODE_CREATED: DocumentStatusCode
DOCUMENT_STATUS_CODE_REPLACED: DocumentStatusCode
DOCUMENT_STATUS_CODE_INVALID: DocumentStatusCode
DOCUMENT_STATUS_CODE_ABORTED: DocumentStatusCode

class Document(_message.Message):
    __slots__ = ("name", "id", "text", "vectors", "metadata", "token_count", "truncated", "typed_metadata")
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
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    TYPED_METADATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    id: str
    text: str
    vectors: _types_pb2.Vectors
    metadata: _containers.ScalarMap[str, str]
    token_count: int
    truncated: bool
    typed_metadata: _containers.MessageMap[str, _types_pb2.MetadataValue]
    def __init__(self, name: _Optional[str] = ..., id: _Optional[str] = ..., text: _Optional[str] = ..., vectors: _Optional[_Union[_types_pb2.Vectors, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., token_count: _Optional[int] = ..., truncated: _Optional[bool] = ..., typed_metadata: _Optional[_Mapping[str, _types_pb2.MetadataValue]] = ...) -> None: ...

class DocumentStatus(_message.Message):
    __slots__ = ("id", "code", "message", "token_count", "truncated")
    ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    id: str
    code: DocumentStatusCode
    message: str
    token_count: int
    truncated: bool
    def __init__(self, id: _Optional[str] = ..., code: _Optional[_Union[DocumentStatusCode, str]] = ..., message: _Optional[str] = ..., token_count: _Optional[int] = ..., truncated: _Optional[bool] = ...) -> None: ...

class UpsertDocumentsRequest(_message.Message):
    __slots__ = ("parent", "documents")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    parent: str
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    def __init__(self, parent: _Optional[str] = ..., documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ...) -> None: ...

class UpsertDocumentsResponse(_message.Message):
    __slots__ = ("statuses",)
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    statuses: _containers.RepeatedCompositeFieldContainer[DocumentStatus]
    def __init__(self, statuses: _Optional[_Iterable[_Union[DocumentStatus, _Mapping]]] = ...) -> None: ...

class StreamUpsertDocumentsRequest(_message.Message):
    __slots__ = ("parent", "documents")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    parent: str
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    def __init__(self, parent: _Optional[str] = ..., documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ...) -> None: ...

class StreamUpsertDocumentsResponse(_message.Message):
    __slots__ = ("batch_index", "ok", "statuses")
    BATCH_INDEX_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    batch_index: int
    ok: bool
    statuses: _containers.RepeatedCompositeFieldContainer[DocumentStatus]
    def __init__(self, batch_index: _Optional[int] = ..., ok: _Optional[bool] = ..., statuses: _Optional[_Iterable[_Union[DocumentStatus, _Mapping]]] = ...) -> None: ...

class GetDocumentRequest(_message.Message):
    __slots__ = ("name", "include_vectors")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    name: str
    include_vectors: bool
    def __init__(self, name: _Optional[str] = ..., include_vectors: _Optional[bool] = ...) -> None: ...

class GetDocumentResponse(_message.Message):
    __slots__ = ("document",)
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    document: Document
    def __init__(self, document: _Optional[_Union[Document, _Mapping]] = ...) -> None: ...

class DeleteDocumentsRequest(_message.Message):
    __slots__ = ("parent", "ids", "where")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    WHERE_FIELD_NUMBER: _ClassVar[int]
    parent: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    where: _types_pb2.Filter
    def __init__(self, parent: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., where: _Optional[_Union[_types_pb2.Filter, _Mapping]] = ...) -> None: ...

class DeleteDocumentsResponse(_message.Message):
    __slots__ = ("deleted_ids", "not_found_ids", "deleted_count")
    DELETED_IDS_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_IDS_FIELD_NUMBER: _ClassVar[int]
    DELETED_COUNT_FIELD_NUMBER: _ClassVar[int]
    deleted_ids: _containers.RepeatedScalarFieldContainer[str]
    not_found_ids: _containers.RepeatedScalarFieldContainer[str]
    deleted_count: int
    def __init__(self, deleted_ids: _Optional[_Iterable[str]] = ..., not_found_ids: _Optional[_Iterable[str]] = ..., deleted_count: _Optional[int] = ...) -> None: ...

class ListDocumentsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token", "include_vectors", "where")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    WHERE_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    include_vectors: bool
    where: _types_pb2.Filter
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., include_vectors: _Optional[bool] = ..., where: _Optional[_Union[_types_pb2.Filter, _Mapping]] = ...) -> None: ...

class ListDocumentsResponse(_message.Message):
    __slots__ = ("documents", "next_page_token")
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    next_page_token: str
    def __init__(self, documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
