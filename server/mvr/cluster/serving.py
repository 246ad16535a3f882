"""Sharded serving on Ray Serve behind the unchanged mvr.v1 API.

Two kinds of deployment:

* :class:`ShardReplica`, one deployment per shard: opens the shard's data directory with the engine
  ``mvr serve`` uses and answers mvr.v1 calls with ``mvr serve``'s own servicers (the same validation,
  the same errors), through :meth:`ShardReplica.call`. One replica per shard: a shard's files have one
  writer (read replicas would need a read-only engine mode, not built).
* :class:`Router`, the ingress: Ray Serve's gRPC proxy hands it every mvr.v1 call by method name. It
  fans a Search out to every shard with the caller's remaining deadline and merges the shards' top_k by
  score (semantic scores are exact MaxSim, so the merge is exact; keyword and hybrid scores are each
  shard's own BM25 / fusion, merged as they are), routes upserts, gets and deletes by the id's shard
  (:func:`mvr.cluster.sharding.shard_of`), and merges pages of ids in order.

Errors keep their codes: a shard's INVALID_ARGUMENT, NOT_FOUND ... come back as they are (a field
``documents[j]`` of a shard's share renamed to the caller's index); a shard that does not answer is
UNAVAILABLE naming the shard. Snapshots and the upsert stream are not served by a cluster yet
(UNIMPLEMENTED, saying what to use instead).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from mvr.cluster.sharding import Layout, read_layout, shard_of

log = logging.getLogger("mvr.cluster")

SERVICERS = [
    "mvr.v1.collection_service_pb2_grpc.add_CollectionServiceServicer_to_server",
    "mvr.v1.document_service_pb2_grpc.add_DocumentServiceServicer_to_server",
    "mvr.v1.search_service_pb2_grpc.add_SearchServiceServicer_to_server",
    "mvr.v1.snapshot_service_pb2_grpc.add_SnapshotServiceServicer_to_server",
    "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server",
]
APP = "mvr"
DEFAULT_TOP_K = 10
_DOCUMENT_INDEX = re.compile(r"documents\[(\d+)\]")
_STATUS_DETAILS = "grpc-status-details-bin"
_PER_SHARD = "mvr serve --data-dir on each shard's directory"


@dataclass(frozen=True)
class Failure:
    """A call a shard answered with an error status (its servicer aborted)."""

    code: str  # grpc.StatusCode name
    details: str
    status_details: bytes | None = None  # google.rpc.Status with details, as gRPC sends it


class _Aborted(Exception):
    def __init__(self, failure: Failure) -> None:
        self.failure = failure


class _ShardContext:
    """What mvr's servicers ask of a grpc.ServicerContext, for a call a router forwarded."""

    def __init__(self, timeout_s: float | None) -> None:
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def abort(self, code, details: str):
        raise _Aborted(Failure(code.name, details))

    def abort_with_status(self, status):
        metadata = dict(status.trailing_metadata or ())
        raise _Aborted(Failure(status.code.name, status.details, metadata.get(_STATUS_DETAILS)))

    def add_callback(self, callback) -> bool:
        return False


class ShardReplica:
    """One shard's engine (a Ray Serve deployment's replica)."""

    def __init__(self, directory: str, model: str | None) -> None:
        from mvr.server.encoder import EncoderCache
        from mvr.server.manager import CollectionManager
        from mvr.server.service import CollectionService, DocumentService, Engine, SearchService

        loader = EncoderCache(threads=1)
        self._manager = CollectionManager(Path(directory), encoder_loader=loader)
        engine = Engine()
        engine.ready(self._manager, loader(model) if model else None)
        self._services = {
            "collection": CollectionService(engine),
            "document": DocumentService(engine),
            "search": SearchService(engine),
        }

    def call(self, service: str, method: str, request, timeout_s: float | None):
        """The servicer's answer to ``request``, or the :class:`Failure` it aborted with."""
        try:
            return getattr(self._services[service], method)(request, _ShardContext(timeout_s))
        except _Aborted as aborted:
            return aborted.failure

    def __del__(self) -> None:
        manager = getattr(self, "_manager", None)
        if manager is not None:
            manager.close()


class ClusterError(Exception):
    """A call the router answers with an error status (``shard``: the shard that answered it)."""

    def __init__(
        self, code: str, details: str, status_details: bytes | None = None, shard: int | None = None
    ) -> None:
        super().__init__(details)
        self.code, self.details, self.status_details, self.shard = code, details, status_details, shard

    def renumbered(self, positions: list[int]) -> ClusterError:
        """This error with ``documents[j]`` of a shard's share named by the caller's index
        ``positions[j]``, in the message and in the BadRequest detail."""
        from google.rpc import error_details_pb2, status_pb2

        def caller_index(match: re.Match) -> str:
            j = int(match.group(1))
            return f"documents[{positions[j]}]" if j < len(positions) else match.group(0)

        def rename(text: str) -> str:
            return _DOCUMENT_INDEX.sub(caller_index, text)

        details = None
        if self.status_details is not None:
            status = status_pb2.Status.FromString(self.status_details)
            status.message = rename(status.message)
            for detail in status.details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    for violation in bad.field_violations:
                        violation.field = rename(violation.field)
                        violation.description = rename(violation.description)
                    detail.Pack(bad)
            details = status.SerializeToString()
        return ClusterError(self.code, rename(self.details), details, self.shard)


class Router:
    """The gRPC ingress: every mvr.v1 method by name (Ray Serve's gRPC proxy calls them so)."""

    def __init__(self, layout: Layout, shards: list) -> None:
        self._layout, self._shards = layout, shards

    # ------------------------------------------------------------------------------ plumbing

    async def _call(self, shard: int, service: str, method: str, request, timeout_s: float | None):
        from ray.exceptions import RayTaskError

        name = self._layout.shard_dir(Path("."), shard).name
        try:
            answer = await self._shards[shard].call.remote(service, method, request, timeout_s)
        except RayTaskError as error:  # the replica answered, with an exception outside the servicers
            log.error("shard %s failed %s: %s", shard, method, error)
            raise ClusterError(
                "INTERNAL", f"shard {shard} ({name}) failed {method}; see the cluster's logs", shard=shard
            ) from error
        except Exception as error:  # the replica died, is restarting, or never started
            raise ClusterError(
                "UNAVAILABLE",
                f"shard {shard} of {self._layout.shards} ({name}) did not answer {method}: "
                f"{type(error).__name__}; retry shortly",
                shard=shard,
            ) from error
        if isinstance(answer, Failure):
            raise ClusterError(answer.code, answer.details, answer.status_details, shard)
        return answer

    async def _all(self, service: str, method: str, requests, timeout_s: float | None) -> list:
        """One call per shard (``requests``: one request for all, or a {shard: request} map)."""
        every = range(self._layout.shards)
        targets = requests if isinstance(requests, dict) else {s: requests for s in every}
        answers = await asyncio.gather(
            *(self._call(s, service, method, r, timeout_s) for s, r in targets.items())
        )
        return answers

    @staticmethod
    def _timeout(grpc_context) -> float | None:
        """The caller's remaining time, where the context knows it. Ray Serve's gRPC context does not
        carry the deadline (its proxy bounds a call by gRPCOptions.request_timeout_s instead), so the
        shards see none and a search past the client's deadline runs to its end unseen."""
        remaining = getattr(grpc_context, "time_remaining", None)
        return None if remaining is None else remaining()

    async def _answer(self, grpc_context, run, empty):
        """Runs ``run()``; an error becomes the call's status (and an empty response, which the proxy
        does not send)."""
        try:
            return await run()
        except ClusterError as error:
            import grpc

            grpc_context.set_code(getattr(grpc.StatusCode, error.code))
            grpc_context.set_details(error.details)
            if error.status_details is not None:
                grpc_context.set_trailing_metadata([(_STATUS_DETAILS, error.status_details)])
            return empty

    # ------------------------------------------------------------------------------ search

    async def Search(self, request, grpc_context=None):
        from mvr.v1 import search_service_pb2 as spb

        async def run():
            answers = await self._all("search", "Search", request, self._timeout(grpc_context))
            return merge_search(answers, request.top_k or DEFAULT_TOP_K)

        return await self._answer(grpc_context, run, spb.SearchResponse())

    async def BatchSearch(self, request, grpc_context=None):
        from mvr.v1 import search_service_pb2 as spb

        async def run():
            answers = await self._all("search", "BatchSearch", request, self._timeout(grpc_context))
            return spb.BatchSearchResponse(
                results=[
                    merge_search([a.results[i] for a in answers], search.top_k or DEFAULT_TOP_K)
                    for i, search in enumerate(request.searches)
                ]
            )

        return await self._answer(grpc_context, run, spb.BatchSearchResponse())

    async def Encode(self, request, grpc_context=None):
        from mvr.v1 import search_service_pb2 as spb

        async def run():
            return await self._call(0, "search", "Encode", request, self._timeout(grpc_context))

        return await self._answer(grpc_context, run, spb.EncodeResponse())

    # ------------------------------------------------------------------------------ documents

    async def UpsertDocuments(self, request, grpc_context=None):
        from mvr.v1 import document_service_pb2 as dpb

        async def run():
            positions = self._by_shard([d.id for d in request.documents])
            shares = {
                s: dpb.UpsertDocumentsRequest(
                    parent=request.parent, documents=[request.documents[i] for i in members]
                )
                for s, members in positions.items()
            }
            answers = await self._renumbered(positions, "UpsertDocuments", shares, grpc_context)
            statuses = [None] * len(request.documents)
            for (_, members), answer in zip(positions.items(), answers, strict=True):
                for i, status in zip(members, answer.statuses, strict=True):
                    statuses[i] = status
            return dpb.UpsertDocumentsResponse(statuses=statuses)

        return await self._answer(grpc_context, run, dpb.UpsertDocumentsResponse())

    async def _renumbered(self, positions: dict[int, list[int]], method: str, shares: dict, grpc_context):
        """The shards' answers; an error naming ``documents[j]`` of a share names the caller's index."""
        try:
            return await self._all("document", method, shares, self._timeout(grpc_context))
        except ClusterError as error:
            if error.shard is None or error.shard not in positions:
                raise
            raise error.renumbered(positions[error.shard]) from error

    def _by_shard(self, ids: list[str]) -> dict[int, list[int]]:
        positions: dict[int, list[int]] = {}
        for i, doc_id in enumerate(ids):
            positions.setdefault(shard_of(doc_id, self._layout.shards), []).append(i)
        return positions

    async def GetDocument(self, request, grpc_context=None):
        from mvr.server.convert import document_name_parts
        from mvr.server.errors import InvalidArgument
        from mvr.v1 import document_service_pb2 as dpb

        async def run():
            try:
                _, document_id = document_name_parts(request.name, "name")
            except InvalidArgument:  # shard 0 refuses it as mvr serve does, with the field's detail
                document_id = ""
            shard = shard_of(document_id, self._layout.shards)
            return await self._call(shard, "document", "GetDocument", request, self._timeout(grpc_context))

        return await self._answer(grpc_context, run, dpb.GetDocumentResponse())

    async def DeleteDocuments(self, request, grpc_context=None):
        from mvr.v1 import document_service_pb2 as dpb

        async def run():
            if request.ids:  # each id to its shard (with the filter, if any, applied there)
                positions = self._by_shard(list(request.ids))
                shares = {}
                for s, members in positions.items():
                    share = dpb.DeleteDocumentsRequest()
                    share.CopyFrom(request)
                    del share.ids[:]
                    share.ids.extend(request.ids[i] for i in members)
                    shares[s] = share
            else:  # a filter alone: every shard
                shares = dict.fromkeys(range(self._layout.shards), request)
            answers = await self._all("document", "DeleteDocuments", shares, self._timeout(grpc_context))
            deleted = {i for a in answers for i in a.deleted_ids}
            return dpb.DeleteDocumentsResponse(
                deleted_ids=[i for i in request.ids if i in deleted],
                not_found_ids=[i for i in request.ids if i not in deleted],
                deleted_count=sum(a.deleted_count for a in answers),
            )

        return await self._answer(grpc_context, run, dpb.DeleteDocumentsResponse())

    async def ListDocuments(self, request, grpc_context=None):
        from mvr.server.convert import encode_page_token, page_size
        from mvr.v1 import document_service_pb2 as dpb

        async def run():
            answers = await self._all("document", "ListDocuments", request, self._timeout(grpc_context))
            size = page_size(request.page_size)  # the shards accepted it
            merged = sorted((d for a in answers for d in a.documents), key=lambda d: d.name.encode())
            more = len(merged) > size or any(a.next_page_token for a in answers)
            page = merged[:size]
            token = encode_page_token(page[-1].name.split("/documents/", 1)[1]) if more and page else ""
            return dpb.ListDocumentsResponse(documents=page, next_page_token=token)

        return await self._answer(grpc_context, run, dpb.ListDocumentsResponse())

    async def StreamUpsertDocuments(self, request, grpc_context=None):
        from mvr.v1 import document_service_pb2 as dpb

        return self._unimplemented(
            grpc_context, "StreamUpsertDocuments", "UpsertDocuments", dpb.StreamUpsertDocumentsResponse()
        )

    # ------------------------------------------------------------------------------ collections

    async def CreateCollection(self, request, grpc_context=None):
        from mvr.v1 import collection_service_pb2 as cpb

        async def run():
            answers = await self._all("collection", "CreateCollection", request, self._timeout(grpc_context))
            return merge_collection(answers, cpb.CreateCollectionResponse)

        return await self._answer(grpc_context, run, cpb.CreateCollectionResponse())

    async def GetCollection(self, request, grpc_context=None):
        from mvr.v1 import collection_service_pb2 as cpb

        async def run():
            answers = await self._all("collection", "GetCollection", request, self._timeout(grpc_context))
            return merge_collection(answers, cpb.GetCollectionResponse)

        return await self._answer(grpc_context, run, cpb.GetCollectionResponse())

    async def ListCollections(self, request, grpc_context=None):
        from mvr.v1 import collection_service_pb2 as cpb

        async def run():  # every shard holds the same collections: shard 0 lists them
            return await self._call(0, "collection", "ListCollections", request, self._timeout(grpc_context))

        return await self._answer(grpc_context, run, cpb.ListCollectionsResponse())

    async def DeleteCollection(self, request, grpc_context=None):
        from mvr.v1 import collection_service_pb2 as cpb

        async def run():
            await self._all("collection", "DeleteCollection", request, self._timeout(grpc_context))
            return cpb.DeleteCollectionResponse()

        return await self._answer(grpc_context, run, cpb.DeleteCollectionResponse())

    # ------------------------------------------------------------------------------ the rest

    async def Check(self, request, grpc_context=None):
        """grpc.health.v1: SERVING once every shard answers."""
        from grpc_health.v1 import health_pb2
        from mvr.v1 import collection_service_pb2 as cpb

        try:
            await self._all("collection", "ListCollections", cpb.ListCollectionsRequest(page_size=1), 5.0)
        except ClusterError:
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.NOT_SERVING)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    @staticmethod
    def _unimplemented(grpc_context, method: str, instead: str, empty):
        import grpc

        grpc_context.set_code(grpc.StatusCode.UNIMPLEMENTED)
        grpc_context.set_details(f"{method} is not served by an mvr cluster yet; use {instead}")
        return empty

    async def CreateSnapshot(self, request, grpc_context=None):
        from mvr.v1 import snapshot_service_pb2 as snpb

        return self._unimplemented(grpc_context, "CreateSnapshot", _PER_SHARD, snpb.CreateSnapshotResponse())

    async def ListSnapshots(self, request, grpc_context=None):
        from mvr.v1 import snapshot_service_pb2 as snpb

        return self._unimplemented(grpc_context, "ListSnapshots", _PER_SHARD, snpb.ListSnapshotsResponse())

    async def DeleteSnapshot(self, request, grpc_context=None):
        from mvr.v1 import snapshot_service_pb2 as snpb

        return self._unimplemented(grpc_context, "DeleteSnapshot", _PER_SHARD, snpb.DeleteSnapshotResponse())


def merge_search(answers: list, top_k: int):
    """The best ``top_k`` hits of all shards by score (ties by id, as one collection orders them)."""
    from mvr.v1 import search_service_pb2 as spb

    hits = sorted((h for a in answers for h in a.hits), key=lambda h: (-h.score, h.id))[:top_k]
    return spb.SearchResponse(hits=hits, query_token_count=answers[0].query_token_count if answers else 0)


def merge_collection(answers: list, response_class):
    """One collection from its shards: the first shard's description, the stats summed."""
    merged = response_class()
    merged.CopyFrom(answers[0])
    stats = merged.collection.stats
    for answer in answers[1:]:
        other = answer.collection.stats
        for field in ("documents", "tokens", "indexed_documents", "coded_documents", "recoded_documents"):
            setattr(stats, field, getattr(stats, field) + getattr(other, field))
        for name in ("bytes_on_disk", "bytes_in_memory"):
            for key, value in getattr(other, name).items():
                getattr(stats, name)[key] = getattr(stats, name)[key] + value
    return merged


def start(shards_dir: Path, port: int) -> Layout:
    """Starts the deployments on the running Ray cluster (``ray.init`` first) and Serve's gRPC
    ingress on ``port``; returns the layout served."""
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    layout = read_layout(shards_dir)
    serve.start(
        grpc_options=gRPCOptions(port=port, grpc_servicer_functions=SERVICERS),
        http_options=HTTPOptions(host="127.0.0.1", port=0),
    )
    replica = serve.deployment(ShardReplica, num_replicas=1, ray_actor_options={"num_cpus": 0})
    shards = [
        replica.options(name=f"shard-{s}").bind(str(layout.shard_dir(shards_dir, s)), layout.model)
        for s in range(layout.shards)
    ]
    router = serve.deployment(Router, name="router", ray_actor_options={"num_cpus": 0})
    serve.run(router.bind(layout, shards), name=APP, route_prefix="/")
    return layout
