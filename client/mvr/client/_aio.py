"""The asyncio mvr client: the same methods as :class:`mvr.client.Client`, as coroutines."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mvr.client import _convert as convert
from mvr.client.errors import from_rpc_error
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


class AsyncClient:
    """An asyncio connection to an mvr server (grpc.aio). Arguments and behaviour as :class:`Client`;
    use ``async with AsyncClient(target) as mvr:`` or ``await mvr.close()``."""

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
            grpc.aio, target, max_message_mb, tls, root_certificates, certificate_chain, private_key
        )
        self._collections = cgrpc.CollectionServiceStub(self._channel)
        self._documents = dgrpc.DocumentServiceStub(self._channel)
        self._search = sgrpc.SearchServiceStub(self._channel)
        self._snapshots = sngrpc.SnapshotServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            timeout = timeout or self.timeout
            return await method(
                request, timeout=timeout, metadata=convert.call_metadata(self._metadata, timeout)
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def health(self, timeout: float | None = None) -> str:
        response = await self._call(self._health.Check, health_pb2.HealthCheckRequest(), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    async def create_collection(
        self,
        name: str,
        model: str | None = "default",
        dim: int | None = None,
        *,
        timeout: float | None = None,
        **params: Any,
    ) -> CollectionInfo:
        request = convert.create_collection_request(name, model, dim, params)
        response = await self._call(self._collections.CreateCollection, request, timeout)
        return convert.collection_info(response.collection, with_stats=True)

    async def get_collection(self, name: str, *, timeout: float | None = None) -> CollectionInfo:
        request = cpb.GetCollectionRequest(name=convert.collection_name(name))
        response = await self._call(self._collections.GetCollection, request, timeout)
        return convert.collection_info(response.collection, with_stats=True)

    async def list_collections(
        self, *, page_size: int = 100, timeout: float | None = None
    ) -> list[CollectionInfo]:
        found, token = [], ""
        while True:
            request = cpb.ListCollectionsRequest(page_size=page_size, page_token=token)
            response = await self._call(self._collections.ListCollections, request, timeout)
            found += [convert.collection_info(c, with_stats=False) for c in response.collections]
            token = response.next_page_token
            if not token:
                return found

    async def delete_collection(self, name: str, *, timeout: float | None = None) -> None:
        request = cpb.DeleteCollectionRequest(name=convert.collection_name(name))
        await self._call(self._collections.DeleteCollection, request, timeout)

    async def upsert(
        self, collection: str, docs: Iterable[Document], *, batch_size: int = 64, timeout: float | None = None
    ) -> list[UpsertResult]:
        results: list[UpsertResult] = []
        parent = convert.collection_name(collection)
        for batch in convert.batches(docs, batch_size):
            request = dpb.UpsertDocumentsRequest(parent=parent, documents=batch)
            response = await self._call(self._documents.UpsertDocuments, request, timeout)
            results += convert.upsert_results(response.statuses)
        return results

    async def upsert_stream(
        self, collection: str, batches: Iterable[Sequence[Document]], *, timeout: float | None = None
    ) -> AsyncIterator[BatchAck]:
        parent = convert.collection_name(collection)
        requests = (
            dpb.StreamUpsertDocumentsRequest(
                parent=parent, documents=[convert.document_message(d) for d in batch]
            )
            for batch in batches
        )
        try:
            async for ack in self._documents.StreamUpsertDocuments(
                requests, timeout=timeout, metadata=self._metadata
            ):
                yield convert.batch_ack(ack)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error

    async def get(
        self,
        collection: str,
        id: str,
        *,
        include_vectors: bool = False,
        timeout: float | None = None,
    ) -> StoredDocument:
        name = f"{convert.collection_name(collection)}/documents/{id}"
        request = dpb.GetDocumentRequest(name=name, include_vectors=include_vectors)
        return convert.stored_document(
            (await self._call(self._documents.GetDocument, request, timeout)).document
        )

    async def delete(
        self,
        collection: str,
        ids: Sequence[str] | None = None,
        *,
        where: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> DeleteResult:
        request = convert.delete_request(collection, ids, where)
        return convert.delete_result(await self._call(self._documents.DeleteDocuments, request, timeout))

    async def list_documents(
        self,
        collection: str,
        *,
        page_size: int = 100,
        include_vectors: bool = False,
        where: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[StoredDocument]:
        token = ""
        while True:
            request = convert.list_request(collection, page_size, token, include_vectors, where)
            response = await self._call(self._documents.ListDocuments, request, timeout)
            for document in response.documents:
                yield convert.stored_document(document)
            token = response.next_page_token
            if not token:
                return

    async def search(
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
        request = convert.search_request(
            collection, query, top_k, candidates, ef, filter, explain, mode, semantic_weight
        )
        return convert.hits(await self._call(self._search.Search, request, timeout))

    async def batch_search(
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
        request = spb.BatchSearchRequest(
            searches=[
                convert.search_request(
                    collection, q, top_k, candidates, ef, filter, explain, mode, semantic_weight
                )
                for q in queries
            ]
        )
        response = await self._call(self._search.BatchSearch, request, timeout)
        return [convert.hits(result) for result in response.results]

    async def encode(
        self,
        texts: Sequence[str],
        kind: str = "query",
        *,
        collection: str | None = None,
        timeout: float | None = None,
    ) -> list[np.ndarray]:
        request = convert.encode_request(texts, kind, collection)
        return convert.encoded(await self._call(self._search.Encode, request, timeout))

    async def create_snapshot(self, collection: str, *, timeout: float | None = None) -> SnapshotInfo:
        request = snpb.CreateSnapshotRequest(parent=convert.collection_name(collection))
        response = await self._call(self._snapshots.CreateSnapshot, request, timeout or convert.NO_DEADLINE)
        return convert.snapshot_info(response.snapshot)

    async def list_snapshots(
        self, collection: str, *, page_size: int = 100, timeout: float | None = None
    ) -> list[SnapshotInfo]:
        found, token = [], ""
        while True:
            request = snpb.ListSnapshotsRequest(
                parent=convert.collection_name(collection), page_size=page_size, page_token=token
            )
            response = await self._call(self._snapshots.ListSnapshots, request, timeout)
            found += [convert.snapshot_info(s) for s in response.snapshots]
            token = response.next_page_token
            if not token:
                return found

    async def download_snapshot(
        self, name: str, path: str | Path, *, timeout: float | None = None
    ) -> SnapshotInfo:
        request = snpb.DownloadSnapshotRequest(name=convert.snapshot_name(name))
        try:
            with convert.SnapshotDownload(name, path) as download:
                async for chunk in self._snapshots.DownloadSnapshot(
                    request, timeout=timeout, metadata=self._metadata
                ):
                    download.add(chunk)
                return download.finish()
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error

    async def restore_snapshot(
        self,
        collection: str,
        *,
        path: str | Path | None = None,
        snapshot: str | None = None,
        timeout: float | None = None,
    ) -> CollectionInfo:
        requests = convert.restore_requests(collection, path, snapshot)
        response = await self._call(self._snapshots.RestoreSnapshot, requests, timeout or convert.NO_DEADLINE)
        return convert.collection_info(response.collection, with_stats=True)

    async def delete_snapshot(self, name: str, *, timeout: float | None = None) -> None:
        request = snpb.DeleteSnapshotRequest(name=convert.snapshot_name(name))
        await self._call(self._snapshots.DeleteSnapshot, request, timeout)
