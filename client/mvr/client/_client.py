"""The synchronous mvr client."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mvr.client import _convert as convert
from mvr.client.errors import UnavailableError, from_rpc_error
from mvr.client.types import (
    BatchAck,
    CollectionInfo,
    DeleteResult,
    Document,
    Hit,
    SnapshotInfo,
    StoredDocument,
    UpsertResult,
)
from mvr.v1 import collection_service_pb2 as cpb
from mvr.v1 import collection_service_pb2_grpc as cgrpc
from mvr.v1 import document_service_pb2 as dpb
from mvr.v1 import document_service_pb2_grpc as dgrpc
from mvr.v1 import search_service_pb2 as spb
from mvr.v1 import search_service_pb2_grpc as sgrpc
from mvr.v1 import snapshot_service_pb2 as snpb
from mvr.v1 import snapshot_service_pb2_grpc as sngrpc


class Client:
    """A connection to an mvr server.

    Args:
        target: ``host:port`` of the server, e.g. ``"127.0.0.1:50051"``.
        api_key: sent as ``authorization: Bearer <api_key>`` metadata on every call; a server started
            with ``--api-keys-file`` refuses calls without a key (UNAUTHENTICATED) or whose key's role
            lacks the right (PERMISSION_DENIED). Over plaintext the key crosses the network in the
            clear: use TLS beyond loopback.
        timeout: default deadline of every call, in seconds (each method also takes ``timeout=``).
        max_message_mb: largest message sent or received; match the server's ``--max-message-mb``.
        tls: connect with TLS, trusting the system's roots unless ``root_certificates`` is given.
        root_certificates: PEM (bytes, or a file path) of the CA that signed the server's certificate;
            giving it (or a client certificate) implies ``tls``.
        certificate_chain, private_key: PEM (bytes or paths) of a client certificate and its key, for a
            server started with ``--tls-client-ca`` (mutual TLS).

    Calls that fail with UNAVAILABLE (server restarting, loading) are retried by gRPC itself with
    exponential backoff (5 attempts, 0.1 s to 2 s). Failed calls raise :class:`mvr.client.MvrError`
    subclasses. Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        target: str,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_message_mb: int = 64,
        *,
        tls: bool = False,
        root_certificates: convert.PemSource | None = None,
        certificate_chain: convert.PemSource | None = None,
        private_key: convert.PemSource | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self._metadata = convert.auth_metadata(api_key)
        self._channel = convert.open_channel(
            grpc, target, max_message_mb, tls, root_certificates, certificate_chain, private_key
        )
        self._collections = cgrpc.CollectionServiceStub(self._channel)
        self._documents = dgrpc.DocumentServiceStub(self._channel)
        self._search = sgrpc.SearchServiceStub(self._channel)
        self._snapshots = sngrpc.SnapshotServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    # ------------------------------------------------------------------------------ plumbing

    def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            timeout = timeout or self.timeout
            return method(request, timeout=timeout, metadata=convert.call_metadata(self._metadata, timeout))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error

    def close(self) -> None:
        """Closes the channel; the client cannot be used afterwards."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ health

    def health(self, timeout: float | None = None) -> str:
        """The server's overall health: ``"SERVING"`` or ``"NOT_SERVING"`` (loading, shutting down)."""
        response = self._call(self._health.Check, health_pb2.HealthCheckRequest(), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def wait_until_serving(self, timeout: float = 300.0) -> None:
        """Blocks until the server reports SERVING; raises UnavailableError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        last = "unreachable"
        while time.monotonic() < deadline:
            try:
                last = self.health(timeout=min(5.0, max(0.1, deadline - time.monotonic())))
                if last == "SERVING":
                    return
            except Exception as error:
                last = str(error)
            time.sleep(0.25)
        raise UnavailableError(
            grpc.StatusCode.UNAVAILABLE, f"{self.target} not SERVING after {timeout} s ({last})"
        )

    # ------------------------------------------------------------------------------ collections

    def create_collection(
        self,
        name: str,
        model: str | None = "default",
        dim: int | None = None,
        *,
        timeout: float | None = None,
        **params: Any,
    ) -> CollectionInfo:
        """Creates a collection and returns its complete configuration (defaults filled in).

        Args:
            name: the collection id (1-63 of ``[a-z0-9_-]``) or ``"collections/{id}"``.
            model: ``"default"`` (the server's embedded all-MiniLM-L6-v2), a model directory on the
                server, or ``None`` for a collection of precomputed vectors only (then ``dim`` is needed).
            dim: token vector dimension; with a model it is taken from the model.
            params: FDE ``repetitions``, ``k_sim``, ``d_proj``, ``fill_empty``, ``final_dim``, ``seed``;
                HNSW ``m``, ``ef_construction``, ``ef_search``; ``storage_dtype`` ("float16" or
                "float32"); ``query_maxlen``, ``doc_maxlen``. Immutable after creation.
        """
        request = convert.create_collection_request(name, model, dim, params)
        response = self._call(self._collections.CreateCollection, request, timeout)
        return convert.collection_info(response.collection, with_stats=True)

    def get_collection(self, name: str, *, timeout: float | None = None) -> CollectionInfo:
        """A collection's configuration and current statistics."""
        request = cpb.GetCollectionRequest(name=convert.collection_name(name))
        return convert.collection_info(
            self._call(self._collections.GetCollection, request, timeout).collection, True
        )

    def list_collections(self, *, page_size: int = 100, timeout: float | None = None) -> list[CollectionInfo]:
        """Every collection, in name order (fetched page by page; without statistics)."""
        found, token = [], ""
        while True:
            request = cpb.ListCollectionsRequest(page_size=page_size, page_token=token)
            response = self._call(self._collections.ListCollections, request, timeout)
            found += [convert.collection_info(c, with_stats=False) for c in response.collections]
            token = response.next_page_token
            if not token:
                return found

    def delete_collection(self, name: str, *, timeout: float | None = None) -> None:
        """Deletes a collection and all its documents."""
        self._call(
            self._collections.DeleteCollection,
            cpb.DeleteCollectionRequest(name=convert.collection_name(name)),
            timeout,
        )

    # ------------------------------------------------------------------------------ documents

    def upsert(
        self, collection: str, docs: Iterable[Document], *, batch_size: int = 64, timeout: float | None = None
    ) -> list[UpsertResult]:
        """Inserts or replaces documents, ``batch_size`` per call; each call is atomic and durable.

        Returns one result per document, in order. On an error, the batches before the failing one
        are stored; the failing one is not.
        """
        results: list[UpsertResult] = []
        parent = convert.collection_name(collection)
        for batch in convert.batches(docs, batch_size):
            response = self._call(
                self._documents.UpsertDocuments,
                dpb.UpsertDocumentsRequest(parent=parent, documents=batch),
                timeout,
            )
            results += convert.upsert_results(response.statuses)
        return results

    def upsert_stream(
        self, collection: str, batches: Iterable[Sequence[Document]], *, timeout: float | None = None
    ) -> Iterator[BatchAck]:
        """Streams batches over one StreamUpsertDocuments call; yields each batch's acknowledgement,
        in order, once it is durable. A batch with a bad document yields ``ok=False`` (nothing of it
        stored) and the stream goes on. ``timeout`` bounds the whole stream (default: none)."""
        parent = convert.collection_name(collection)

        def requests() -> Iterator[dpb.StreamUpsertDocumentsRequest]:
            for batch in batches:
                yield dpb.StreamUpsertDocumentsRequest(
                    parent=parent, documents=[convert.document_message(d) for d in batch]
                )

        try:
            for ack in self._documents.StreamUpsertDocuments(
                requests(), timeout=timeout, metadata=self._metadata
            ):
                yield convert.batch_ack(ack)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error

    def get(
        self,
        collection: str,
        id: str,
        *,
        include_vectors: bool = False,
        timeout: float | None = None,
    ) -> StoredDocument:
        """Reads one document (its token vectors too with ``include_vectors``)."""
        name = f"{convert.collection_name(collection)}/documents/{id}"
        request = dpb.GetDocumentRequest(name=name, include_vectors=include_vectors)
        return convert.stored_document(self._call(self._documents.GetDocument, request, timeout).document)

    def delete(
        self,
        collection: str,
        ids: Sequence[str] | None = None,
        *,
        where: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> DeleteResult:
        """Deletes documents by id (those that did not exist are listed in ``not_found``), or every
        document matching the filter ``where`` (same language as search's ``filter``), or the listed
        ones that match it; one durable transaction. ``count``: documents deleted in all."""
        request = convert.delete_request(collection, ids, where)
        return convert.delete_result(self._call(self._documents.DeleteDocuments, request, timeout))

    def list_documents(
        self,
        collection: str,
        *,
        page_size: int = 100,
        include_vectors: bool = False,
        where: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Iterator[StoredDocument]:
        """Iterates over every document (matching the filter ``where``) in id order, a page at a time."""
        token = ""
        while True:
            request = convert.list_request(collection, page_size, token, include_vectors, where)
            response = self._call(self._documents.ListDocuments, request, timeout)
            yield from (convert.stored_document(d) for d in response.documents)
            token = response.next_page_token
            if not token:
                return

    # ------------------------------------------------------------------------------ search

    def search(
        self,
        collection: str,
        query: str | np.ndarray,
        top_k: int = 10,
        *,
        candidates: int | None = None,
        ef: int | None = None,
        filter: Mapping[str, Any] | None = None,
        explain: bool = False,
        mode: str = "semantic",
        semantic_weight: float | None = None,
        timeout: float | None = None,
    ) -> list[Hit]:
        """Searches a collection; hits best first.

        Args:
            query: text (encoded by the collection's model) or a float32 array (n_tokens, dim).
            top_k: hits to return (1..1000).
            candidates: first-stage candidates reranked exactly (default max(300, 10·top_k)).
            ef: HNSW search list size (default max(candidates, the collection's ef_search)).
            filter: metadata filter, in the language of Pinecone and Chroma: ``{"venue": "NeurIPS"}``
                (equality), ``{"year": {"$gte": 2020}}``, ``$eq $ne $gt $gte $lt $lte $in $nin
                $exists``, ``{"$and": [...]}``, ``{"$or": [...]}``, ``{"$not": {...}}``; a list field
                matches when any entry does. top_k hits whenever top_k documents match.
            explain: attach each query token's best document token and score to every hit.
            mode: "semantic" (exact MaxSim, the default), "keyword" (BM25 over the stored texts; a
                text query, no model needed) or "hybrid" (both, fused by reciprocal rank; a text
                query). Each hit carries its rank and score in each list.
            semantic_weight: hybrid only: the semantic list's weight in [0, 1] (default 0.5).
        """
        request = convert.search_request(
            collection, query, top_k, candidates, ef, filter, explain, mode, semantic_weight
        )
        return convert.hits(self._call(self._search.Search, request, timeout))

    def batch_search(
        self,
        collection: str,
        queries: Sequence[str | np.ndarray],
        top_k: int = 10,
        *,
        candidates: int | None = None,
        ef: int | None = None,
        filter: Mapping[str, Any] | None = None,
        explain: bool = False,
        mode: str = "semantic",
        semantic_weight: float | None = None,
        timeout: float | None = None,
    ) -> list[list[Hit]]:
        """Several searches of one collection in one call; one list of hits per query, in order."""
        request = spb.BatchSearchRequest(
            searches=[
                convert.search_request(
                    collection, q, top_k, candidates, ef, filter, explain, mode, semantic_weight
                )
                for q in queries
            ]
        )
        response = self._call(self._search.BatchSearch, request, timeout)
        return [convert.hits(result) for result in response.results]

    def encode(
        self,
        texts: Sequence[str],
        kind: str = "query",
        *,
        collection: str | None = None,
        timeout: float | None = None,
    ) -> list[np.ndarray]:
        """Token vectors of each text (float32, L2-normalised rows), as a ``"query"`` or ``"document"``,
        with a collection's model or, without ``collection``, the server's default model."""
        request = convert.encode_request(texts, kind, collection)
        return convert.encoded(self._call(self._search.Encode, request, timeout))

    # ------------------------------------------------------------------------------ snapshots

    def create_snapshot(self, collection: str, *, timeout: float | None = None) -> SnapshotInfo:
        """Takes a consistent snapshot of a collection on the server while it keeps serving; every write
        acknowledged before the call is in it. ``timeout`` default: none (it copies the collection)."""
        request = snpb.CreateSnapshotRequest(parent=convert.collection_name(collection))
        response = self._call(self._snapshots.CreateSnapshot, request, timeout or convert.NO_DEADLINE)
        return convert.snapshot_info(response.snapshot)

    def list_snapshots(
        self, collection: str, *, page_size: int = 100, timeout: float | None = None
    ) -> list[SnapshotInfo]:
        """The server's snapshots of a collection (which may have been deleted since), oldest first."""
        found, token = [], ""
        while True:
            request = snpb.ListSnapshotsRequest(
                parent=convert.collection_name(collection), page_size=page_size, page_token=token
            )
            response = self._call(self._snapshots.ListSnapshots, request, timeout)
            found += [convert.snapshot_info(s) for s in response.snapshots]
            token = response.next_page_token
            if not token:
                return found

    def download_snapshot(self, name: str, path: str | Path, *, timeout: float | None = None) -> SnapshotInfo:
        """Downloads snapshot ``name`` into the file ``path`` (written whole or not at all, checked
        against the snapshot's size and SHA-256)."""
        request = snpb.DownloadSnapshotRequest(name=convert.snapshot_name(name))
        try:
            with convert.SnapshotDownload(name, path) as download:
                for chunk in self._snapshots.DownloadSnapshot(
                    request, timeout=timeout, metadata=self._metadata
                ):
                    download.add(chunk)
                return download.finish()
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error

    def restore_snapshot(
        self,
        collection: str,
        *,
        path: str | Path | None = None,
        snapshot: str | None = None,
        timeout: float | None = None,
    ) -> CollectionInfo:
        """Creates collection ``collection`` from a snapshot: the local file ``path`` (uploaded), or the
        server's own snapshot ``snapshot`` ("collections/{c}/snapshots/{id}"). Exactly one of the two."""
        requests = convert.restore_requests(collection, path, snapshot)
        response = self._call(self._snapshots.RestoreSnapshot, requests, timeout or convert.NO_DEADLINE)
        return convert.collection_info(response.collection, with_stats=True)

    def delete_snapshot(self, name: str, *, timeout: float | None = None) -> None:
        """Deletes one of the server's snapshots."""
        request = snpb.DeleteSnapshotRequest(name=convert.snapshot_name(name))
        self._call(self._snapshots.DeleteSnapshot, request, timeout)
