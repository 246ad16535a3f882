"""Sharded serving on Ray Serve behind the unchanged mvr.v1 API.

Two kinds of deployment:

* :class:`ShardReplica`, one deployment per copy of a shard: opens a data directory with the engine
  ``mvr serve`` uses and answers mvr.v1 calls with ``mvr serve``'s own servicers (the same validation,
  the same errors), through :meth:`ShardReplica.call`. A shard has ``replicas`` copies, each the only
  writer of its own directory (copied from the shard's at the first start): the router sends every
  write to all of them and each read to one, in turn. Copies that applied the same writes agree on
  :meth:`ShardReplica.fingerprint`, which :func:`start` checks before serving.
* :class:`Router`, the ingress: Ray Serve's gRPC proxy hands it every mvr.v1 call by method name. It
  fans a Search out to every shard with the caller's remaining deadline and merges the shards' top_k by
  score (semantic scores are exact MaxSim, so the merge is exact; keyword and hybrid scores are each
  shard's own BM25 / fusion, merged as they are), routes upserts, gets and deletes by the id's shard
  (:func:`mvr.cluster.sharding.shard_of`), and merges pages of ids in order.

A batch of upserts (UpsertDocuments, each message of StreamUpsertDocuments) is split by shard and
written in two phases: every shard first validates and encodes its share, keeping it under a ticket
(:meth:`ShardReplica.prepare_upsert`); only when every share was accepted does each shard store its
own (:meth:`ShardReplica.commit_upsert`). A refused document therefore leaves nothing of the batch
stored, as on one server; what two phases cannot cover is a shard failing between the phases (then
UNAVAILABLE names it: the other shards may have stored their shares, and re-sending the batch is safe,
an upsert replaces by id).

Errors keep their codes: a shard's INVALID_ARGUMENT, NOT_FOUND ... come back as they are (a field
``documents[j]`` of a shard's share renamed to the caller's index); a shard that does not answer is
UNAVAILABLE naming the shard. Snapshots are not served by a cluster yet (UNIMPLEMENTED, saying what
to use instead).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from mvr.cluster.sharding import Layout, group_by_shard, read_layout, shard_of

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
# How a semantic text query is encoded: "once" by one shard and sent to all as vectors (one encoding's
# CPU per query, one more hop), or "per-shard", each shard encoding the text itself (no extra hop; N
# encodings: cheaper in latency only when the shards have idle cores of their own)
QUERY_ENCODINGS = ("once", "per-shard")
# The call's timeout in milliseconds, as mvr's Python client sends it beside gRPC's own deadline (which
# Ray Serve's proxy does not pass on): mvr.client._convert.TIMEOUT_HEADER
TIMEOUT_HEADER = "mvr-timeout-ms"
MAX_REPLICAS = 16
PREPARED_TTL_S = 600.0  # a prepared share no commit came for (its router died) is dropped after this


@dataclass(frozen=True)
class Failure:
    """A call a shard answered with an error status (its servicer aborted)."""

    code: str  # grpc.StatusCode name
    details: str
    status_details: bytes | None = None  # google.rpc.Status with details, as gRPC sends it
    in_batch: bool = False  # a refused document of an upsert batch (not the call itself)


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


class ShardReplica:
    """One shard's engine (a Ray Serve deployment's replica)."""

    def __init__(self, directory: str, model: str | None) -> None:
        from mvr.server.encoder import EncoderCache
        from mvr.server.manager import CollectionManager
        from mvr.server.service import CollectionService, DocumentService, Engine, SearchService

        loader = EncoderCache(threads=1)
        self._manager = CollectionManager(Path(directory), encoder_loader=loader)
        self._engine = engine = Engine()
        engine.ready(self._manager, loader(model) if model else None)
        self._services = {
            "collection": CollectionService(engine),
            "document": DocumentService(engine),
            "search": SearchService(engine),
        }
        self._prepared: dict[str, tuple[float, object, object]] = {}  # ticket: (when, collection, batch)
        self._prepared_lock = threading.Lock()

    def call(self, service: str, method: str, request, timeout_s: float | None):
        """The servicer's answer to ``request``, or the :class:`Failure` it aborted with."""
        try:
            return getattr(self._services[service], method)(request, _ShardContext(timeout_s))
        except _Aborted as aborted:
            return aborted.failure

    def prepare_upsert(self, request, timeout_s: float | None):
        """Phase one of a batch's upsert: this shard's share (an UpsertDocumentsRequest) validated and
        encoded, nothing stored; a ticket for :meth:`commit_upsert`, or the :class:`Failure` (with
        ``in_batch`` when a document was refused rather than the call)."""
        from mvr.server import convert
        from mvr.server.errors import FailedPrecondition, InvalidArgument, MvrError
        from mvr.server.service import check_count, deadline_of

        context = _ShardContext(timeout_s)
        self._drop_expired()
        try:
            collection = self._engine.collection(request.parent, "parent")
            check_count(len(request.documents), "documents", self._engine.limits.max_batch_documents)
            try:
                docs = convert.document_inputs_from_proto(request.documents)
                batch = collection.prepare_upsert(docs, deadline_of(context))
            except (InvalidArgument, FailedPrecondition) as refused:
                return _failure(refused, context, in_batch=True)
        except MvrError as error:
            return _failure(error, context)
        ticket = uuid.uuid4().hex
        with self._prepared_lock:
            self._prepared[ticket] = (time.monotonic(), collection, batch)
        return ticket

    def commit_upsert(self, ticket: str, timeout_s: float | None):
        """Phase two: stores the share prepared under ``ticket`` durably; an UpsertDocumentsResponse,
        or the :class:`Failure` (UNAVAILABLE when this replica no longer holds the ticket: it was
        restarted or the ticket expired, so nothing of the share was stored here)."""
        from mvr.server import convert
        from mvr.server.errors import MvrError, Unavailable
        from mvr.server.service import deadline_of
        from mvr.v1 import document_service_pb2 as dpb

        context = _ShardContext(timeout_s)
        with self._prepared_lock:
            prepared = self._prepared.pop(ticket, None)
        try:
            if prepared is None:
                raise Unavailable(
                    "this shard lost its prepared share of the batch (restarted, or no commit within "
                    f"{PREPARED_TTL_S:.0f} s): nothing of it was stored here"
                )
            _, collection, batch = prepared
            results = collection.commit_upsert(batch, deadline_of(context), admitted=True)
        except MvrError as error:
            return _failure(error, context)
        return dpb.UpsertDocumentsResponse(statuses=convert.upsert_statuses(results))

    def encode_query(self, collection_name: str, text: str):
        """``text`` encoded as a query by the collection's encoder (float32 rows), exactly as a text
        Search encodes it, or the :class:`Failure` of the refusal."""
        from mvr.server.errors import MvrError

        try:
            return self._engine.collection(collection_name, "collection").encode_query(text)
        except MvrError as error:
            return _failure(error, _ShardContext(None))

    def fingerprint(self) -> dict[str, tuple[int, int]]:
        """Per collection: (live documents, next label). Labels are handed out in write order, so two
        copies of a shard that applied the same writes give the same pair."""
        collections = (self._manager.get(config.name) for config in self._manager.list())
        return {c.config.name: (len(c.store.by_label), c.store.next_label) for c in collections}

    def discard(self, ticket: str) -> None:
        """Forgets a prepared share (another shard refused the batch)."""
        with self._prepared_lock:
            self._prepared.pop(ticket, None)

    def _drop_expired(self) -> None:
        oldest = time.monotonic() - PREPARED_TTL_S
        with self._prepared_lock:
            for ticket in [t for t, (when, _, _) in self._prepared.items() if when < oldest]:
                del self._prepared[ticket]

    def __del__(self) -> None:
        manager = getattr(self, "_manager", None)
        if manager is not None:
            manager.close()


def _failure(error, context: _ShardContext, in_batch: bool = False) -> Failure:
    """The status mvr serve would answer ``error`` (an engine error) with, as a :class:`Failure`."""
    from mvr.server.service import abort_with

    try:
        abort_with(context, error)
    except _Aborted as aborted:
        failure = aborted.failure
        return Failure(failure.code, failure.details, failure.status_details, in_batch)
    raise AssertionError("unreachable: abort_with raises")


class ClusterError(Exception):
    """A call the router answers with an error status (``shard``: the shard that answered it)."""

    def __init__(
        self,
        code: str,
        details: str,
        status_details: bytes | None = None,
        shard: int | None = None,
        in_batch: bool = False,
    ) -> None:
        super().__init__(details)
        self.code, self.details, self.status_details, self.shard = code, details, status_details, shard
        self.in_batch = in_batch  # a refused document of an upsert batch

    def __reduce__(self):  # Ray pickles it when it ends a stream (the default would lose the code)
        return ClusterError, (self.code, self.details, self.status_details, self.shard, self.in_batch)

    def document_index(self) -> int | None:
        """The i of the first ``documents[i]`` the message names (None: it names none)."""
        match = _DOCUMENT_INDEX.search(self.details)
        return None if match is None else int(match.group(1))

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
        return ClusterError(self.code, rename(self.details), details, self.shard, self.in_batch)


class Router:
    """The gRPC ingress: every mvr.v1 method by name (Ray Serve's gRPC proxy calls them so)."""

    def __init__(
        self,
        layout: Layout,
        shards: list,
        query_encoding: str = "once",
        request_timeout_s: float | None = None,
    ) -> None:
        if query_encoding not in QUERY_ENCODINGS:
            raise ValueError(f"query_encoding must be one of {QUERY_ENCODINGS}, got {query_encoding!r}")
        self._layout = layout
        self._shards = shards  # per shard, its replicas' handles
        self._turns = [0] * len(shards)  # the replica the next read of each shard goes to
        self._encode_once = query_encoding == "once"
        self._request_timeout_s = request_timeout_s

    # ------------------------------------------------------------------------------ plumbing

    async def _call(
        self,
        shard: int,
        service: str,
        method: str,
        request,
        timeout_s: float | None,
        everywhere: bool = False,
    ):
        """Shard ``shard``'s servicer's answer to ``request`` (a :class:`ClusterError` if it refused):
        a read from one replica, a write ``everywhere`` (every replica applies it; the first one's
        answer)."""
        if everywhere:
            answers = await self._everywhere(shard, method, "call", service, method, request, timeout_s)
            return answers[0]
        return await self._ask(shard, method, "call", service, method, request, timeout_s)

    def _next_replica(self, shard: int) -> int:
        replica = self._turns[shard]
        self._turns[shard] = (replica + 1) % len(self._shards[shard])
        return replica

    async def _everywhere(self, shard: int, what: str, replica_method: str, *args) -> list:
        """``replica_method(*args)`` on every replica of the shard; the answers in replica order."""
        replicas = range(len(self._shards[shard]))
        return await asyncio.gather(
            *(self._ask(shard, what, replica_method, *args, replica=r) for r in replicas)
        )

    def _name(self, shard: int, replica: int) -> str:
        name = self._layout.shard_dir(Path("."), shard).name
        copies = len(self._shards[shard])
        return name if copies == 1 else f"{name}, replica {replica} of {copies}"

    async def _ask(self, shard: int, what: str, replica_method: str, *args, replica: int | None = None):
        """``replica_method(*args)`` on one replica of shard ``shard`` (``replica``, else the next in
        turn); ``what``: the call, for errors."""
        from ray.exceptions import RayTaskError

        replica = self._next_replica(shard) if replica is None else replica
        name = self._name(shard, replica)
        try:
            answer = await getattr(self._shards[shard][replica], replica_method).remote(*args)
        except RayTaskError as error:  # the replica answered, with an exception outside the servicers
            log.error("shard %s (%s) failed %s: %s", shard, name, what, error)
            raise ClusterError(
                "INTERNAL", f"shard {shard} ({name}) failed {what}; see the cluster's logs", shard=shard
            ) from error
        except Exception as error:  # the replica died, is restarting, or never started
            raise ClusterError(
                "UNAVAILABLE",
                f"shard {shard} of {self._layout.shards} ({name}) did not answer {what}: "
                f"{type(error).__name__}; retry shortly",
                shard=shard,
            ) from error
        if isinstance(answer, Failure):
            raise ClusterError(answer.code, answer.details, answer.status_details, shard, answer.in_batch)
        return answer

    async def _all(
        self, service: str, method: str, requests, timeout_s: float | None, everywhere: bool = False
    ) -> list:
        """One call per shard (``requests``: one request for all, or a {shard: request} map)."""
        every = range(self._layout.shards)
        targets = requests if isinstance(requests, dict) else {s: requests for s in every}
        answers = await asyncio.gather(
            *(self._call(s, service, method, r, timeout_s, everywhere) for s, r in targets.items())
        )
        return answers

    def _timeout(self, grpc_context) -> float | None:
        """The time the shards get for a call: the caller's remaining time where the context knows it.
        Ray Serve's gRPC context does not carry the client's deadline, so otherwise the smaller of the
        timeout the client sent as ``mvr-timeout-ms`` metadata (mvr's Python client and CLI send it)
        and the cluster's request timeout (``mvr cluster serve --request-timeout-s``, which Serve's
        proxy also enforces), or none: a search past the client's deadline then runs to its end."""
        remaining = getattr(grpc_context, "time_remaining", None)
        if remaining is not None:
            return remaining()
        bounds = [t for t in (_sent_timeout(grpc_context), self._request_timeout_s) if t is not None]
        return min(bounds) if bounds else None

    async def _answer(self, grpc_context, run, empty):
        """Runs ``run()``; an error becomes the call's status (and an empty response, which the proxy
        does not send)."""
        try:
            return await run()
        except ClusterError as error:
            self._fail(grpc_context, error)
            return empty

    @staticmethod
    def _fail(grpc_context, error: ClusterError) -> None:
        """Sets ``error`` as the call's status."""
        import grpc

        grpc_context.set_code(getattr(grpc.StatusCode, error.code))
        grpc_context.set_details(error.details)
        if error.status_details is not None:
            grpc_context.set_trailing_metadata([(_STATUS_DETAILS, error.status_details)])

    # ------------------------------------------------------------------------------ search

    async def Search(self, request, grpc_context=None):
        from mvr.v1 import search_service_pb2 as spb

        async def run():
            shared = await self._encoded_once(request)
            answers = await self._all("search", "Search", shared, self._timeout(grpc_context))
            return merge_search(answers, request.top_k or DEFAULT_TOP_K)

        return await self._answer(grpc_context, run, spb.SearchResponse())

    async def BatchSearch(self, request, grpc_context=None):
        from mvr.v1 import search_service_pb2 as spb

        async def run():
            shared = spb.BatchSearchRequest(
                searches=await asyncio.gather(*(self._encoded_once(search) for search in request.searches))
            )
            answers = await self._all("search", "BatchSearch", shared, self._timeout(grpc_context))
            return spb.BatchSearchResponse(
                results=[
                    merge_search([a.results[i] for a in answers], search.top_k or DEFAULT_TOP_K)
                    for i, search in enumerate(request.searches)
                ]
            )

        return await self._answer(grpc_context, run, spb.BatchSearchResponse())

    async def _encoded_once(self, request):
        """A semantic search by text with its query encoded once, by one shard (chosen by the text's
        hash, spreading the encodings), and sent to every shard as vectors: the shards score the same
        vectors they would have encoded each. Any other search, or a text the shard refuses to encode,
        goes as it came (the shards then answer the refusal naming the request's own fields, as one
        server does)."""
        from mvr.server import convert
        from mvr.v1 import search_service_pb2 as spb
        from mvr.v1 import types_pb2 as tpb

        semantic = request.mode in (spb.SEARCH_MODE_UNSPECIFIED, spb.SEARCH_MODE_SEMANTIC)
        by_text = request.query.WhichOneof("kind") == "text" and request.query.text.strip()
        if not (self._encode_once and semantic and by_text):
            return request
        text = request.query.text
        try:
            vectors = await self._ask(
                shard_of(text, self._layout.shards), "Search", "encode_query", request.collection, text
            )
        except ClusterError:
            return request
        shared = spb.SearchRequest()
        shared.CopyFrom(request)
        shared.query.vectors.CopyFrom(convert.vectors_to_proto(vectors, tpb.DTYPE_FLOAT32))
        return shared

    async def Encode(self, request, grpc_context=None):
        from mvr.v1 import search_service_pb2 as spb

        async def run():
            return await self._call(0, "search", "Encode", request, self._timeout(grpc_context))

        return await self._answer(grpc_context, run, spb.EncodeResponse())

    # ------------------------------------------------------------------------------ documents

    async def UpsertDocuments(self, request, grpc_context=None):
        from mvr.v1 import document_service_pb2 as dpb

        async def run():
            statuses = await self._upsert(request.parent, request.documents, self._timeout(grpc_context))
            return dpb.UpsertDocumentsResponse(statuses=statuses)

        return await self._answer(grpc_context, run, dpb.UpsertDocumentsResponse())

    async def _upsert(self, parent: str, documents, timeout_s: float | None) -> list:
        """Stores one batch over its shards in two phases (module docstring); the DocumentStatuses in
        the caller's order. A refusal is the :class:`ClusterError` of the caller's first refused
        document (its ``documents[i]`` renamed to the caller's index)."""
        from mvr.server.errors import MvrError
        from mvr.server.limits import Limits
        from mvr.server.service import check_count
        from mvr.v1 import document_service_pb2 as dpb

        try:  # the whole batch against the limit each shard checks its share against
            check_count(len(documents), "documents", Limits().max_batch_documents)
        except MvrError as error:
            failure = _failure(error, _ShardContext(None))
            raise ClusterError(failure.code, failure.details, failure.status_details) from error
        positions = self._by_shard([d.id for d in documents])
        shares = {
            s: dpb.UpsertDocumentsRequest(parent=parent, documents=[documents[i] for i in members])
            for s, members in positions.items()
        }
        copies = [(s, r) for s in shares for r in range(len(self._shards[s]))]
        tickets = await asyncio.gather(
            *(
                self._ask(s, "UpsertDocuments", "prepare_upsert", shares[s], timeout_s, replica=r)
                for s, r in copies
            ),
            return_exceptions=True,
        )
        refusals = [t for t in tickets if isinstance(t, BaseException)]
        if refusals:
            for (shard, replica), ticket in zip(copies, tickets, strict=True):
                if isinstance(ticket, str):
                    self._shards[shard][replica].discard.remote(ticket)
            raise _first_refusal(refusals, positions)
        committed = await asyncio.gather(
            *(
                # every share is ready: no copy may refuse its commit for time while another stores its own
                self._ask(s, "UpsertDocuments", "commit_upsert", t, None, replica=r)
                for (s, r), t in zip(copies, tickets, strict=True)
            )
        )
        first = {s: answer for (s, r), answer in zip(copies, committed, strict=True) if r == 0}
        answers = [first[s] for s in positions]
        statuses = [None] * len(documents)
        for members, answer in zip(positions.values(), answers, strict=True):
            for i, status in zip(members, answer.statuses, strict=True):
                statuses[i] = status
        return statuses

    async def StreamUpsertDocuments(self, request_stream, grpc_context=None):
        """Each message is one batch, stored as :meth:`UpsertDocuments` stores one and acknowledged in
        order; a refused document answers its batch ok=false (nothing of it stored) and the stream
        goes on; an error about the stream itself (no or another parent, an unknown collection, a shard
        that does not answer) ends it with that status, as ``mvr serve`` does."""
        from mvr.server import convert
        from mvr.v1 import document_service_pb2 as dpb

        parent = None
        index = 0
        async for request in request_stream:
            ids = [d.id for d in request.documents]
            try:
                if parent is None:
                    parent = request.parent
                elif request.parent and request.parent != parent:
                    raise ClusterError(
                        "INVALID_ARGUMENT",
                        f"parent: {request.parent!r} differs from the stream's collection {parent!r}",
                    )
                statuses = await self._upsert(parent, request.documents, None)
                yield dpb.StreamUpsertDocumentsResponse(batch_index=index, ok=True, statuses=statuses)
            except ClusterError as error:
                if not error.in_batch:
                    self._fail(grpc_context, error)
                    raise
                statuses = convert.failed_batch_statuses(ids, error.document_index(), error.details)
                yield dpb.StreamUpsertDocumentsResponse(batch_index=index, ok=False, statuses=statuses)
            index += 1

    def _by_shard(self, ids: list[str]) -> dict[int, list[int]]:
        return group_by_shard(ids, self._layout.shards)

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
            answers = await self._all(
                "document", "DeleteDocuments", shares, self._timeout(grpc_context), everywhere=True
            )
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

    # ------------------------------------------------------------------------------ collections

    async def CreateCollection(self, request, grpc_context=None):
        from mvr.v1 import collection_service_pb2 as cpb

        async def run():
            answers = await self._all(
                "collection", "CreateCollection", request, self._timeout(grpc_context), everywhere=True
            )
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
            await self._all(
                "collection", "DeleteCollection", request, self._timeout(grpc_context), everywhere=True
            )
            return cpb.DeleteCollectionResponse()

        return await self._answer(grpc_context, run, cpb.DeleteCollectionResponse())

    # ------------------------------------------------------------------------------ the rest

    async def Check(self, request, grpc_context=None):
        """grpc.health.v1: SERVING once every replica of every shard answers."""
        from grpc_health.v1 import health_pb2
        from mvr.v1 import collection_service_pb2 as cpb

        try:
            probe = cpb.ListCollectionsRequest(page_size=1)
            await self._all("collection", "ListCollections", probe, 5.0, everywhere=True)  # writes need all
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


def _sent_timeout(grpc_context) -> float | None:
    """The call's timeout the client sent as TIMEOUT_HEADER metadata, in seconds (None: not sent)."""
    metadata = dict(grpc_context.invocation_metadata()) if grpc_context is not None else {}
    sent = metadata.get(TIMEOUT_HEADER)
    if sent is None:
        return None
    if not sent.isdigit() or int(sent) == 0:
        raise ClusterError(
            "INVALID_ARGUMENT",
            f"metadata {TIMEOUT_HEADER}: must be a positive integer of milliseconds, got {sent!r}",
        )
    return int(sent) / 1000


def _first_refusal(refusals: list[BaseException], positions: dict[int, list[int]]) -> BaseException:
    """Of the shards' refusals of one batch, the one the caller sees: an error about the call itself
    (unknown collection, a shard down) before one about a document, then the caller's first refused
    document; ``documents[j]`` of a share renamed to the caller's index."""
    errors = [r for r in refusals if isinstance(r, ClusterError)]
    if len(errors) < len(refusals):  # not a refusal: a bug in the router, raised as it is
        return next(r for r in refusals if not isinstance(r, ClusterError))
    renamed = [e.renumbered(positions[e.shard]) if e.shard in positions else e for e in errors]

    def order(error: ClusterError) -> tuple[bool, int]:
        index = error.document_index()
        return (error.in_batch, -1 if index is None else index)

    return min(renamed, key=order)


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


def replica_dir(shards_dir: Path, layout: Layout, shard: int, replica: int) -> Path:
    """Where replica ``replica`` of a shard keeps its copy (replica 0: the shard's own directory)."""
    own = layout.shard_dir(shards_dir, shard)
    return own if replica == 0 else Path(shards_dir) / "replicas" / f"{own.name}.{replica}"


class ReplicasDiffer(Exception):
    """Copies of a shard that did not apply the same writes; serving them would answer by chance."""


def start(
    shards_dir: Path,
    port: int,
    query_encoding: str = "once",
    request_timeout_s: float | None = None,
    replicas: int = 1,
) -> Layout:
    """Starts the deployments on the running Ray cluster (``ray.init`` first) and Serve's gRPC
    ingress on ``port``; returns the layout served. ``query_encoding``: see QUERY_ENCODINGS;
    ``request_timeout_s``: every call's bound (Serve's proxy answers DEADLINE_EXCEEDED past it, and
    the shards stop a search there), streams included; none by default. ``replicas``: copies of each
    shard (reads spread over them, writes go to all); a copy that does not exist yet is copied from
    the shard's directory first, so start it while nothing writes there (no ingest running).
    :class:`ReplicasDiffer` (Serve shut down again) when the copies of a shard disagree."""
    import shutil

    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    if not 1 <= replicas <= MAX_REPLICAS:
        raise ValueError(f"replicas must be 1 to {MAX_REPLICAS}, got {replicas}")
    layout = read_layout(shards_dir)
    for s in range(layout.shards):
        for r in range(1, replicas):
            copy = replica_dir(shards_dir, layout, s, r)
            if not copy.exists():
                log.info("copying %s to %s", layout.shard_dir(shards_dir, s), copy)
                partial = copy.with_name(copy.name + ".copying")
                shutil.rmtree(partial, ignore_errors=True)
                shutil.copytree(layout.shard_dir(shards_dir, s), partial)
                partial.rename(copy)  # a crash mid-copy leaves only the .copying directory
    serve.start(
        grpc_options=gRPCOptions(
            port=port, grpc_servicer_functions=SERVICERS, request_timeout_s=request_timeout_s
        ),
        http_options=HTTPOptions(host="127.0.0.1", port=0),
    )
    deployment = serve.deployment(ShardReplica, num_replicas=1, ray_actor_options={"num_cpus": 0})
    shards = [
        [
            deployment.options(name=f"shard-{s}" if r == 0 else f"shard-{s}-replica-{r}").bind(
                str(replica_dir(shards_dir, layout, s, r)), layout.model
            )
            for r in range(replicas)
        ]
        for s in range(layout.shards)
    ]
    router = serve.deployment(Router, name="router", ray_actor_options={"num_cpus": 0})
    serve.run(router.bind(layout, shards, query_encoding, request_timeout_s), name=APP, route_prefix="/")
    if replicas > 1:
        _check_replicas_agree(layout, shards_dir, replicas)
    return layout


def _check_replicas_agree(layout: Layout, shards_dir: Path, replicas: int) -> None:
    from ray import serve

    for s in range(layout.shards):
        names = [f"shard-{s}" if r == 0 else f"shard-{s}-replica-{r}" for r in range(replicas)]
        prints = [serve.get_deployment_handle(n, app_name=APP).fingerprint.remote().result() for n in names]
        if any(p != prints[0] for p in prints[1:]):
            serve.shutdown()
            found = "; ".join(f"{replica_dir(shards_dir, layout, s, r)}: {p}" for r, p in enumerate(prints))
            raise ReplicasDiffer(
                f"the copies of shard {s} differ ((live documents, next label) per collection: {found}); "
                "delete the stale copies under replicas/ to copy them afresh from the shard's directory"
            )
