"""The gRPC service layer: mvr.v1 CollectionService, DocumentService, SearchService, SnapshotService.

Owns: request validation that is about the wire (names, page tokens, limits on batch sizes), the
mapping of engine errors to gRPC status codes, and nothing else. Every RPC unpacks its request with
:mod:`mvr.server.convert`, calls the engine (:class:`~mvr.server.manager.CollectionManager`), and
packs the answer. gRPC types never go below this module.

Status codes (one engine error class each, see :mod:`mvr.server.errors`):
INVALID_ARGUMENT (with a google.rpc.BadRequest detail naming the field), NOT_FOUND, ALREADY_EXISTS,
FAILED_PRECONDITION, RESOURCE_EXHAUSTED, UNAVAILABLE (not started yet / shutting down), DEADLINE_EXCEEDED
(the call's deadline passed: the engine stops between stages, see :func:`deadline_of`); anything
unexpected is logged with its traceback and answered INTERNAL.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc
import numpy as np
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from mvr.server import convert
from mvr.server import snapshot as snapshot_format
from mvr.server.collection import Collection
from mvr.server.encoder import Encoder
from mvr.server.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    MvrError,
    NotFound,
    ResourceExhausted,
    Unavailable,
    check_deadline,
    document_index,
)
from mvr.server.limits import Limits
from mvr.server.manager import CollectionManager
from mvr.server.search import SearchParams
from mvr.v1 import collection_service_pb2 as cpb
from mvr.v1 import collection_service_pb2_grpc as cgrpc
from mvr.v1 import document_service_pb2 as dpb
from mvr.v1 import document_service_pb2_grpc as dgrpc
from mvr.v1 import search_service_pb2 as spb
from mvr.v1 import search_service_pb2_grpc as sgrpc
from mvr.v1 import snapshot_service_pb2 as snpb
from mvr.v1 import snapshot_service_pb2_grpc as sngrpc
from mvr.v1 import types_pb2 as tpb

log = logging.getLogger("mvr.service")

DEFAULT_TOP_K = 10
RETRY_STREAM_S = 1.0

_CODES: list[tuple[type[MvrError], grpc.StatusCode]] = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
]


class Engine:
    """What the servicers share: the collection manager and the default encoder, once loaded.

    The server starts answering (health NOT_SERVING, RPCs UNAVAILABLE) before the model and the
    collections are loaded; :meth:`ready` flips it to serving.
    """

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._open_streams = threading.BoundedSemaphore(self.limits.max_upsert_streams)
        self._manager: CollectionManager | None = None
        self._default_encoder: Encoder | None = None
        self._draining = False
        self._lock = threading.Lock()

    def ready(self, manager: CollectionManager, default_encoder: Encoder | None) -> None:
        with self._lock:
            self._manager = manager
            self._default_encoder = default_encoder

    def stream_slot(self) -> threading.BoundedSemaphore:
        """Taken (without waiting) by each StreamUpsertDocuments call while it is open: a stream holds
        a worker thread for as long as its client keeps it open, so their number is bounded."""
        if not self._open_streams.acquire(blocking=False):
            raise ResourceExhausted(
                f"{self.limits.max_upsert_streams} upsert streams are open; the limit is "
                f"{self.limits.max_upsert_streams} (max_upsert_streams): retry when one has ended",
                retry_after_s=RETRY_STREAM_S,
            )
        return self._open_streams

    def drain(self) -> None:
        """Refuse new calls with UNAVAILABLE (shutdown has begun); calls in flight finish."""
        self._draining = True

    @property
    def manager(self) -> CollectionManager:
        if self._draining:
            raise Unavailable("the server is shutting down; retry against another replica or after restart")
        if self._manager is None:
            raise Unavailable("the server is still loading its model and collections; retry shortly")
        return self._manager

    def collection(self, name: str, field: str) -> Collection:
        return self.manager.get(convert.collection_id_from_name(name, field))

    @property
    def default_encoder(self) -> Encoder:
        self.manager  # noqa: B018 — raises UNAVAILABLE while loading or shutting down
        if self._default_encoder is None:
            raise FailedPrecondition(
                "this server was started without a default model (--model none): name a collection with an "
                "encoder in 'collection'"
            )
        return self._default_encoder


def abort_with(context: grpc.ServicerContext, error: MvrError) -> None:
    """Ends the call with the status code of ``error``; INVALID_ARGUMENT carries a BadRequest detail."""
    code = next(code for cls, code in _CODES if isinstance(error, cls))
    message = str(error)
    if isinstance(error, InvalidArgument):
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=error.field, description=message)
                ]
            )
        )
        status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message, details=[detail])
        context.abort_with_status(rpc_status.to_status(status))
    if isinstance(error, ResourceExhausted) and error.retry_after_s is not None:
        detail = any_pb2.Any()
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(int(error.retry_after_s * 1e9))
        detail.Pack(retry)
        status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=message, details=[detail])
        context.abort_with_status(rpc_status.to_status(status))
    context.abort(code, message)


T = TypeVar("T")


def rpc(method: Callable[..., T]) -> Callable[..., T]:
    """Wraps a unary servicer method: engine errors become their status codes, bugs become INTERNAL."""

    @functools.wraps(method)
    def wrapper(self, request, context: grpc.ServicerContext):  # type: ignore[no-untyped-def]
        try:
            return method(self, request, context)
        except MvrError as error:
            abort_with(context, error)
        except Exception:
            log.exception("internal error", extra={"rpc": method.__name__})
            context.abort(
                grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}; see the server log"
            )
        raise AssertionError("unreachable: context.abort raises")

    return wrapper


def deadline_of(context: grpc.ServicerContext) -> float | None:
    """The call's deadline as a ``time.monotonic()`` instant (None: the client set none): the engine
    stops its work there instead of computing a result nobody waits for."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def check_count(count: int, field: str, maximum: int) -> None:
    if count == 0:
        raise InvalidArgument(field, "must not be empty")
    if count > maximum:
        raise ResourceExhausted(f"{field}: {count} entries, more than the limit of {maximum} per call")


# ---------------------------------------------------------------------------------------------------


class CollectionService(cgrpc.CollectionServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @rpc
    def CreateCollection(self, request, context):
        args = convert.create_collection_args(request)
        if not args.collection_id:
            raise InvalidArgument("collection_id", "is required")
        config = self.engine.manager.create(
            args.collection_id,
            model=args.model,
            dim=args.dim,
            fde=args.fde,
            hnsw=args.hnsw,
            vector_dtype=args.vector_dtype,
            query_maxlen=args.query_maxlen,
            doc_maxlen=args.doc_maxlen,
            tokens=args.tokens,
        )
        collection = self.engine.manager.get(config.name)
        return cpb.CreateCollectionResponse(collection=describe(collection, with_stats=True))

    @rpc
    def GetCollection(self, request, context):
        collection = self.engine.collection(request.name, "name")
        return cpb.GetCollectionResponse(collection=describe(collection, with_stats=True))

    @rpc
    def ListCollections(self, request, context):
        size = convert.page_size(request.page_size)
        after = convert.decode_page_token(request.page_token)
        configs = [c for c in self.engine.manager.list() if after is None or c.name > after]
        page = configs[:size]
        next_token = convert.encode_page_token(page[-1].name) if len(configs) > size else ""
        collections = [describe(self.engine.manager.get(c.name), with_stats=False) for c in page]
        return cpb.ListCollectionsResponse(collections=collections, next_page_token=next_token)

    @rpc
    def DeleteCollection(self, request, context):
        self.engine.manager.delete(convert.collection_id_from_name(request.name, "name"))
        return cpb.DeleteCollectionResponse()


def describe(collection: Collection, *, with_stats: bool) -> cpb.Collection:
    stats = collection.stats() if with_stats else None
    codec = collection.store.codec
    return convert.collection_to_proto(
        collection.config, collection.fde.output_dim, stats, 0 if codec is None else codec.n_centroids
    )


# ---------------------------------------------------------------------------------------------------


class DocumentService(dgrpc.DocumentServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @rpc
    def UpsertDocuments(self, request, context):
        collection = self.engine.collection(request.parent, "parent")
        check_count(len(request.documents), "documents", self.engine.limits.max_batch_documents)
        docs = convert.document_inputs_from_proto(request.documents)
        results = collection.upsert(docs, deadline_of(context))
        return dpb.UpsertDocumentsResponse(statuses=convert.upsert_statuses(results))

    def StreamUpsertDocuments(
        self, request_iterator: Iterator[dpb.StreamUpsertDocumentsRequest], context: grpc.ServicerContext
    ) -> Iterator[dpb.StreamUpsertDocumentsResponse]:
        """Each batch is stored atomically and acknowledged in order once durable.

        A batch with a bad document is answered ok=false with per-document statuses and the stream
        goes on; an error about the stream itself (no or another parent, unknown collection, server
        shutting down) ends it with that status. At most ``max_upsert_streams`` are open at once.
        """
        try:
            slot = self.engine.stream_slot()
        except MvrError as error:
            abort_with(context, error)
        released = threading.Lock()

        def release() -> None:  # once: when the call ends (also on cancellation), or the generator closes
            if released.acquire(blocking=False):
                slot.release()

        context.add_callback(release)
        try:
            yield from self._stream_batches(request_iterator, context)
        finally:
            release()

    def _stream_batches(
        self, request_iterator: Iterator[dpb.StreamUpsertDocumentsRequest], context: grpc.ServicerContext
    ) -> Iterator[dpb.StreamUpsertDocumentsResponse]:
        collection: Collection | None = None
        parent = ""
        for index, request in enumerate(request_iterator):
            try:
                if collection is None:
                    parent = request.parent
                    collection = self.engine.collection(parent, "parent")
                elif request.parent and request.parent != parent:
                    raise InvalidArgument(
                        "parent", f"{request.parent!r} differs from the stream's collection {parent!r}"
                    )
                self.engine.manager  # noqa: B018 — raises UNAVAILABLE once shutdown has begun
                check_count(len(request.documents), "documents", self.engine.limits.max_batch_documents)
                response = self._store_batch(collection, request, index, deadline_of(context))
            except MvrError as error:
                # about the stream, not one document (those are answered in the batch's response): the
                # stream ends with the status, e.g. a full indexing backlog with its retry delay; the
                # batches acknowledged before it are durable
                abort_with(context, error)
            except Exception:
                log.exception("internal error", extra={"rpc": "StreamUpsertDocuments"})
                context.abort(
                    grpc.StatusCode.INTERNAL, "internal error in StreamUpsertDocuments; see the server log"
                )
            yield response

    @staticmethod
    def _store_batch(
        collection: Collection,
        request: dpb.StreamUpsertDocumentsRequest,
        index: int,
        deadline: float | None,
    ) -> dpb.StreamUpsertDocumentsResponse:
        ids = [d.id for d in request.documents]
        try:
            docs = convert.document_inputs_from_proto(request.documents)
            results = collection.upsert(docs, deadline)
        except (InvalidArgument, FailedPrecondition) as error:
            culprit = document_index(error)
            return dpb.StreamUpsertDocumentsResponse(
                batch_index=index, ok=False, statuses=convert.failed_batch_statuses(ids, culprit, str(error))
            )
        return dpb.StreamUpsertDocumentsResponse(
            batch_index=index, ok=True, statuses=convert.upsert_statuses(results)
        )

    @rpc
    def GetDocument(self, request, context):
        collection_id, document_id = convert.document_name_parts(request.name, "name")
        collection = self.engine.manager.get(collection_id)
        document = collection.get(document_id)
        return dpb.GetDocumentResponse(
            document=convert.document_to_proto(
                collection_id, document, collection.config.vector_dtype, request.include_vectors
            )
        )

    @rpc
    def DeleteDocuments(self, request, context):
        collection = self.engine.collection(request.parent, "parent")
        where = convert.where_of(request)
        if where is None or request.ids:
            check_count(len(request.ids), "ids", self.engine.limits.max_delete_ids)
        for i, doc_id in enumerate(request.ids):
            if not doc_id:
                raise InvalidArgument(f"ids[{i}]", "must not be empty")
        ids = list(request.ids) if request.ids else None
        existed, count = collection.delete_matching(ids, where)
        listed = list(request.ids)
        return dpb.DeleteDocumentsResponse(
            deleted_ids=[i for i, found in zip(listed, existed, strict=False) if found],
            not_found_ids=[i for i, found in zip(listed, existed, strict=False) if not found],
            deleted_count=count,
        )

    @rpc
    def ListDocuments(self, request, context):
        collection = self.engine.collection(request.parent, "parent")
        size = convert.page_size(request.page_size)
        after = convert.decode_page_token(request.page_token)
        where = convert.where_of(request)
        documents, next_after = collection.list_documents(
            size, after, include_vectors=request.include_vectors, where=where
        )
        collection_id = collection.config.name
        return dpb.ListDocumentsResponse(
            documents=[
                convert.document_to_proto(
                    collection_id, d, collection.config.vector_dtype, request.include_vectors
                )
                for d in documents
            ],
            next_page_token=convert.encode_page_token(next_after) if next_after is not None else "",
        )


# ---------------------------------------------------------------------------------------------------


class SearchService(sgrpc.SearchServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @rpc
    def Search(self, request, context):
        return self._search(request, "", deadline_of(context))

    @rpc
    def BatchSearch(self, request, context):
        check_count(len(request.searches), "searches", self.engine.limits.max_batch_searches)
        deadline = deadline_of(context)
        return spb.BatchSearchResponse(
            results=[
                self._search(search, f"searches[{i}].", deadline) for i, search in enumerate(request.searches)
            ]
        )

    def _search(self, request: spb.SearchRequest, prefix: str, deadline: float | None) -> spb.SearchResponse:
        collection = self.engine.collection(request.collection, f"{prefix}collection")
        top_k = request.top_k or DEFAULT_TOP_K
        knobs = {
            "candidates": request.candidates or None,
            "ef": request.ef or None,
            "probe": request.probe or None,
            "centroid_candidates": request.centroid_candidates or None,
            "explain": request.explain,
        }
        try:
            # the engine's own check, here before a text query is encoded (the engine checks again)
            SearchParams(top_k, **knobs).check(self.engine.limits)
            mode = convert.search_mode(request.mode, "mode")
            weight = request.semantic_weight if request.HasField("semantic_weight") else None
            where = convert.where_of(request)
            query = self._query(request.query, f"{prefix}query")
            text = query if isinstance(query, str) else None
            if text is not None and mode != "keyword":  # encoded here: the response counts its tokens
                check_deadline(deadline, "encoding the query")
                query = collection.encode_query(text)
            hits = collection.search(
                query,
                top_k,
                filter=dict(request.filter) or None,
                where=where,
                deadline=deadline,
                mode=mode,
                semantic_weight=weight,
                keyword_query=text,
                **knobs,
            )
        except InvalidArgument as error:  # the engine names the field within one search
            if not prefix or error.field.startswith(prefix):
                raise
            raise InvalidArgument(prefix + error.field, str(error).split(": ", 1)[-1]) from error
        tokens = 0 if isinstance(query, str) else query.shape[0]
        return spb.SearchResponse(hits=convert.hits_to_proto(hits), query_token_count=tokens)

    @staticmethod
    def _query(query: spb.Query, field: str) -> np.ndarray | str:
        kind = query.WhichOneof("kind")
        if kind is None:
            raise InvalidArgument(field, "is required: set query.text or query.vectors")
        if kind == "text":
            if not query.text.strip():
                raise InvalidArgument(f"{field}.text", "must not be empty or only whitespace")
            return query.text
        return convert.vectors_from_proto(query.vectors, f"{field}.vectors")

    @rpc
    def Encode(self, request, context):
        check_count(len(request.texts), "texts", self.engine.limits.max_encode_texts)
        if request.kind == spb.ENCODE_KIND_UNSPECIFIED or request.kind not in spb.EncodeKind.values():
            raise InvalidArgument(
                "kind", f"must be ENCODE_KIND_QUERY or ENCODE_KIND_DOCUMENT, got {request.kind}"
            )
        dtype = request.dtype or tpb.DTYPE_FLOAT32
        if dtype not in (tpb.DTYPE_FLOAT32, tpb.DTYPE_FLOAT16):
            raise InvalidArgument("dtype", f"must be DTYPE_FLOAT32 or DTYPE_FLOAT16, got {request.dtype}")
        for i, text in enumerate(request.texts):
            if not text.strip():
                raise InvalidArgument(f"texts[{i}]", "must not be empty or only whitespace")
        if request.collection:
            encoder = self.engine.collection(request.collection, "collection").text_encoder()
        else:
            encoder = self.engine.default_encoder
        texts = list(request.texts)
        if request.kind == spb.ENCODE_KIND_QUERY:
            encoded = encoder.encode_queries(texts)
        else:
            encoded = encoder.encode_documents(texts)
        return spb.EncodeResponse(
            results=[
                spb.EncodedText(
                    vectors=convert.vectors_to_proto(e.vectors, dtype),
                    input_token_count=e.n_input_tokens,
                    truncated=e.truncated,
                )
                for e in encoded
            ],
            encoder=convert.encoder_spec_to_proto(encoder.spec),
        )


# ---------------------------------------------------------------------------------------------------


class SnapshotService(sngrpc.SnapshotServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @rpc
    def CreateSnapshot(self, request, context):
        collection_id = convert.collection_id_from_name(request.parent, "parent")
        info = self.engine.manager.create_snapshot(collection_id)
        return snpb.CreateSnapshotResponse(snapshot=convert.snapshot_to_proto(info))

    @rpc
    def ListSnapshots(self, request, context):
        collection_id = convert.collection_id_from_name(request.parent, "parent")
        self.engine.manager.check_name(collection_id, "parent")
        size = convert.page_size(request.page_size)
        after = convert.decode_page_token(request.page_token)
        infos = [
            i
            for i in self.engine.manager.snapshots.list(collection_id)
            if after is None or i.snapshot_id > after
        ]
        page = infos[:size]
        next_token = convert.encode_page_token(page[-1].snapshot_id) if len(infos) > size else ""
        return snpb.ListSnapshotsResponse(
            snapshots=[convert.snapshot_to_proto(i) for i in page], next_page_token=next_token
        )

    def DownloadSnapshot(self, request, context) -> Iterator[snpb.DownloadSnapshotResponse]:
        """The file in chunks of CHUNK_BYTES; errors before the first chunk end the call with their
        status. The open file stays readable if the snapshot is deleted meanwhile."""
        try:
            collection_id, snapshot_id = convert.snapshot_name_parts(request.name, "name")
            path, info = self.engine.manager.snapshots.get(collection_id, snapshot_id, "name")
            handle = path.open("rb")
        except FileNotFoundError:  # deleted between the lookup and the open
            abort_with(context, NotFound(f"snapshot {request.name!r} not found"))
        except MvrError as error:
            abort_with(context, error)
        with handle:
            offset, first = 0, convert.snapshot_to_proto(info)
            while chunk := handle.read(snapshot_format.CHUNK_BYTES):
                yield snpb.DownloadSnapshotResponse(offset=offset, data=chunk, snapshot=first)
                offset, first = offset + len(chunk), None

    @rpc
    def RestoreSnapshot(self, request_iterator, context):
        manager = self.engine.manager
        first = next(request_iterator, None)
        if first is None or not first.collection_id:
            raise InvalidArgument("collection_id", "is required in the stream's first message")
        manager.check_restorable(first.collection_id)  # before any upload: fail fast
        if first.snapshot:
            return self._restore_kept(first, request_iterator)
        upload = manager.snapshots.upload_path()
        try:
            with upload.open("wb") as handle:
                handle.write(first.data)
                for message in request_iterator:
                    handle.write(message.data)
            manager.restore(first.collection_id, upload, "data")
        finally:
            upload.unlink(missing_ok=True)
        return snpb.RestoreSnapshotResponse(
            collection=describe(manager.get(first.collection_id), with_stats=True)
        )

    def _restore_kept(
        self, first: snpb.RestoreSnapshotRequest, rest: Iterator[snpb.RestoreSnapshotRequest]
    ) -> snpb.RestoreSnapshotResponse:
        """Restores a snapshot this server keeps: the stream holds no file bytes."""
        if first.data or any(message.data for message in rest):
            raise InvalidArgument("data", "must be empty when 'snapshot' names a server-side snapshot")
        collection_id, snapshot_id = convert.snapshot_name_parts(first.snapshot, "snapshot")
        path, _ = self.engine.manager.snapshots.get(collection_id, snapshot_id, "snapshot")
        self.engine.manager.restore(first.collection_id, path, "snapshot")
        collection = self.engine.manager.get(first.collection_id)
        return snpb.RestoreSnapshotResponse(collection=describe(collection, with_stats=True))

    @rpc
    def DeleteSnapshot(self, request, context):
        collection_id, snapshot_id = convert.snapshot_name_parts(request.name, "name")
        self.engine.manager.snapshots.delete(collection_id, snapshot_id, "name")
        return snpb.DeleteSnapshotResponse()


def register(server: grpc.Server, engine: Engine) -> None:
    cgrpc.add_CollectionServiceServicer_to_server(CollectionService(engine), server)
    dgrpc.add_DocumentServiceServicer_to_server(DocumentService(engine), server)
    sgrpc.add_SearchServiceServicer_to_server(SearchService(engine), server)
    sngrpc.add_SnapshotServiceServicer_to_server(SnapshotService(engine), server)


SERVICE_NAMES = (
    cpb.DESCRIPTOR.services_by_name["CollectionService"].full_name,
    dpb.DESCRIPTOR.services_by_name["DocumentService"].full_name,
    spb.DESCRIPTOR.services_by_name["SearchService"].full_name,
    snpb.DESCRIPTOR.services_by_name["SnapshotService"].full_name,
)
