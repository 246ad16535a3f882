"""mvr.client: the Python client of the mvr retrieval server.

    from mvr.client import Client, Document

    with Client("127.0.0.1:50051") as mvr:
        mvr.create_collection("notes", model="default")
        mvr.upsert("notes", [Document("n1", text="late interaction scores every token")])
        hits = mvr.search("notes", "how are tokens scored?", top_k=5)

Numpy in and out, dataclasses for results, a default deadline on every call, gRPC-level retries on
UNAVAILABLE, and :class:`MvrError` subclasses for failures. :class:`AsyncClient` mirrors
:class:`Client` for asyncio. The generated protobuf modules are importable as ``mvr.v1``.
"""

from mvr.client._aio import AsyncClient
from mvr.client._client import Client
from mvr.client.errors import (
    AlreadyExistsError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    MvrError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
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

__all__ = [
    "AlreadyExistsError",
    "AsyncClient",
    "BatchAck",
    "Client",
    "CollectionInfo",
    "CollectionStats",
    "DeadlineExceededError",
    "DeleteResult",
    "Document",
    "DocumentStatus",
    "FailedPreconditionError",
    "FdeParams",
    "FieldViolation",
    "Hit",
    "HnswParams",
    "InvalidArgumentError",
    "MvrError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "SnapshotInfo",
    "StoredDocument",
    "TokenMatch",
    "UnauthenticatedError",
    "UnavailableError",
    "UpsertResult",
]
