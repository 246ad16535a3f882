"""End-to-end tests of every mvr.v1 RPC and every error code, through raw generated stubs against a
real server on loopback (the `mvr_server` fixture: `mvr serve` in a subprocess, tiny random model)."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from mvr.v1 import collection_service_pb2 as cpb
from mvr.v1 import collection_service_pb2_grpc as cgrpc
from mvr.v1 import document_service_pb2 as dpb
from mvr.v1 import document_service_pb2_grpc as dgrpc
from mvr.v1 import search_service_pb2 as spb
from mvr.v1 import search_service_pb2_grpc as sgrpc
from mvr.v1 import types_pb2 as tpb

from tests.conftest import SERVER_MAX_MESSAGE_MB

DIM = 16
TIMEOUT = 60


def pack(array: np.ndarray, dtype: int = tpb.DTYPE_FLOAT32) -> tpb.Vectors:
    wire = "<f4" if dtype == tpb.DTYPE_FLOAT32 else "<f2"
    return tpb.Vectors(dtype=dtype, shape=list(array.shape), data=np.ascontiguousarray(array, wire).tobytes())


def unpack(vectors: tpb.Vectors) -> np.ndarray:
    wire = "<f4" if vectors.dtype == tpb.DTYPE_FLOAT32 else "<f2"
    return np.frombuffer(vectors.data, wire).reshape(tuple(vectors.shape)).astype(np.float32)


def unit_rows(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def chamfer(query: np.ndarray, doc: np.ndarray) -> float:
    return float((query @ doc.T).max(axis=1).sum())


def expect_error(code: grpc.StatusCode, call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, timeout=TIMEOUT, **kwargs)
    assert caught.value.code() == code, caught.value.details()
    return caught.value


@pytest.fixture
def stubs(channel: grpc.Channel):
    return (
        cgrpc.CollectionServiceStub(channel),
        dgrpc.DocumentServiceStub(channel),
        sgrpc.SearchServiceStub(channel),
    )


@pytest.fixture
def vector_collection(stubs, unique_name: str) -> str:
    collections, _, _ = stubs
    collections.CreateCollection(
        cpb.CreateCollectionRequest(
            collection_id=unique_name,
            collection=cpb.Collection(dim=DIM, storage_dtype=tpb.DTYPE_FLOAT32),
        ),
        timeout=TIMEOUT,
    )
    return f"collections/{unique_name}"


@pytest.fixture
def corpus(stubs, vector_collection: str) -> dict[str, np.ndarray]:
    """40 documents of 3–12 random unit tokens, upserted; returns id → vectors."""
    _, documents, _ = stubs
    rng = np.random.default_rng(7)
    docs = {f"doc-{i:02d}": unit_rows(rng, int(rng.integers(3, 13))) for i in range(40)}
    request = dpb.UpsertDocumentsRequest(
        parent=vector_collection,
        documents=[
            dpb.Document(id=doc_id, vectors=pack(v), metadata={"parity": str(i % 2), "n": str(i)})
            for i, (doc_id, v) in enumerate(docs.items())
        ],
    )
    response = documents.UpsertDocuments(request, timeout=TIMEOUT)
    assert [s.code for s in response.statuses] == [dpb.DOCUMENT_STATUS_CODE_CREATED] * 40
    return docs


# ------------------------------------------------------------------------------------------- health


def test_health_is_serving_and_reflection_lists_the_services(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "mvr.v1.SearchService", "mvr.v1.DocumentService", "mvr.v1.CollectionService"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {
        "mvr.v1.CollectionService",
        "mvr.v1.DocumentService",
        "mvr.v1.SearchService",
        "grpc.health.v1.Health",
    } <= names


# --------------------------------------------------------------------------------------- collections


def test_create_collection_echoes_defaults_and_get_reports_stats(stubs, unique_name: str) -> None:
    collections, _, _ = stubs
    created = collections.CreateCollection(
        cpb.CreateCollectionRequest(collection_id=unique_name, collection=cpb.Collection(dim=DIM)),
        timeout=TIMEOUT,
    ).collection
    assert created.name == f"collections/{unique_name}"
    assert created.dim == DIM
    assert created.fde.repetitions > 0 and created.fde.d_proj > 0
    expected_dim = (
        created.fde.final_dim or created.fde.repetitions * 2**created.fde.k_sim * created.fde.d_proj
    )
    assert created.fde.output_dim == expected_dim
    assert (
        created.hnsw.m > 0 and created.hnsw.ef_construction >= created.hnsw.m and created.hnsw.ef_search > 0
    )
    assert created.storage_dtype == tpb.DTYPE_FLOAT16
    assert created.encoder.model == ""
    assert created.create_time.seconds > 0
    storage = created.token_storage
    assert (storage.residual_bits, storage.disable_codes, storage.keep_vectors) == (8, False, False)
    assert storage.train_after_tokens > 0 and storage.trained_centroids == 0
    assert storage.precision == tpb.TOKEN_PRECISION_RESIDUAL_8BIT
    got = collections.GetCollection(cpb.GetCollectionRequest(name=created.name), timeout=TIMEOUT).collection
    assert got.stats.documents == 0 and got.stats.coded_documents == 0 and got.stats.codec_generation == 0
    assert got.fde == created.fde


def test_coded_collection_over_grpc_reports_codec_and_precision(stubs, unique_name: str) -> None:
    collections, documents, search = stubs
    storage = cpb.TokenStorage(residual_bits=2, train_after_tokens=1024, centroids=16)
    created = collections.CreateCollection(
        cpb.CreateCollectionRequest(
            collection_id=unique_name, collection=cpb.Collection(dim=DIM, token_storage=storage)
        ),
        timeout=TIMEOUT,
    ).collection
    assert created.token_storage.precision == tpb.TOKEN_PRECISION_RESIDUAL_2BIT
    rng = np.random.default_rng(4)
    docs = {f"d{i}": unit_rows(rng, 20) for i in range(80)}  # 1,600 tokens: enough to train
    documents.UpsertDocuments(
        dpb.UpsertDocumentsRequest(
            parent=created.name, documents=[dpb.Document(id=i, vectors=pack(v)) for i, v in docs.items()]
        ),
        timeout=TIMEOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got = collections.GetCollection(
            cpb.GetCollectionRequest(name=created.name), timeout=TIMEOUT
        ).collection
        if got.stats.coded_documents == len(docs):
            break
        time.sleep(0.2)
    assert got.stats.coded_documents == len(docs) and got.token_storage.trained_centroids == 16
    assert (got.stats.codec_generation, got.stats.recoded_documents) == (1, 0)
    assert got.stats.bytes_on_disk["codes"] == 1600 * (2 + 2 + DIM * 2 // 8)  # id, norm, residual
    hits = search.Search(
        spb.SearchRequest(collection=created.name, query=spb.Query(vectors=pack(docs["d3"])), top_k=3),
        timeout=TIMEOUT,
    ).hits
    assert hits[0].id == "d3" and hits[0].precision == tpb.TOKEN_PRECISION_RESIDUAL_2BIT


def test_create_collection_rejects_bad_token_storage(stubs, unique_name: str) -> None:
    collections, _, _ = stubs
    for storage, field in [
        (cpb.TokenStorage(residual_bits=3), "collection.token_storage.residual_bits"),
        (cpb.TokenStorage(disable_codes=True, residual_bits=2), "collection.token_storage.residual_bits"),
        (cpb.TokenStorage(trained_centroids=5), "collection.token_storage.trained_centroids"),
    ]:
        err = expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            collections.CreateCollection,
            cpb.CreateCollectionRequest(
                collection_id=unique_name, collection=cpb.Collection(dim=DIM, token_storage=storage)
            ),
        )
        assert field in err.details()


def test_create_collection_with_explicit_parameters(stubs, unique_name: str) -> None:
    collections, _, _ = stubs
    created = collections.CreateCollection(
        cpb.CreateCollectionRequest(
            collection_id=unique_name,
            collection=cpb.Collection(
                dim=DIM,
                fde=cpb.FdeParams(repetitions=3, k_sim=2, d_proj=4, fill_empty=False, seed=11),
                hnsw=cpb.HnswParams(m=8, ef_construction=50, ef_search=40),
            ),
        ),
        timeout=TIMEOUT,
    ).collection
    assert (created.fde.repetitions, created.fde.k_sim, created.fde.d_proj) == (3, 2, 4)
    assert created.fde.fill_empty is False and created.fde.seed == 11
    assert created.fde.output_dim == 3 * 4 * 4
    assert (created.hnsw.m, created.hnsw.ef_construction, created.hnsw.ef_search) == (8, 50, 40)


def test_create_collection_with_model_takes_dim_from_encoder(stubs, unique_name, mvr_server) -> None:
    collections, _, _ = stubs
    created = collections.CreateCollection(
        cpb.CreateCollectionRequest(
            collection_id=unique_name,
            collection=cpb.Collection(encoder=cpb.EncoderSpec(model=str(mvr_server.model_dir))),
        ),
        timeout=TIMEOUT,
    ).collection
    assert created.encoder.dim == created.dim > 0
    assert len(created.encoder.weights_sha256) == 64
    assert created.encoder.format == "plain"


def test_create_collection_errors(stubs, vector_collection: str) -> None:
    collections, _, _ = stubs
    existing = vector_collection.split("/")[1]
    err = expect_error(
        grpc.StatusCode.ALREADY_EXISTS,
        collections.CreateCollection,
        cpb.CreateCollectionRequest(collection_id=existing, collection=cpb.Collection(dim=DIM)),
    )
    assert existing in err.details()
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        collections.CreateCollection,
        cpb.CreateCollectionRequest(collection_id="Bad Name!", collection=cpb.Collection(dim=DIM)),
    )
    assert "Bad Name!" in err.details()
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        collections.CreateCollection,
        cpb.CreateCollectionRequest(collection_id="no-dim-no-model", collection=cpb.Collection()),
    )
    assert "dim" in err.details()
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        collections.CreateCollection,
        cpb.CreateCollectionRequest(
            collection_id="bad-ksim", collection=cpb.Collection(dim=DIM, fde=cpb.FdeParams(k_sim=40))
        ),
    )
    assert "k_sim" in err.details() and "40" in err.details()
    err = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        collections.CreateCollection,
        cpb.CreateCollectionRequest(
            collection_id="missing-model",
            collection=cpb.Collection(encoder=cpb.EncoderSpec(model="/nonexistent/model-dir")),
        ),
    )
    assert "/nonexistent/model-dir" in err.details()


def test_list_collections_pages_and_delete(stubs, unique_name: str) -> None:
    collections, _, _ = stubs
    names = [f"{unique_name}-{i}" for i in range(5)]
    for name in names:
        collections.CreateCollection(
            cpb.CreateCollectionRequest(collection_id=name, collection=cpb.Collection(dim=4)), timeout=TIMEOUT
        )
    seen, token = [], ""
    while True:
        page = collections.ListCollections(
            cpb.ListCollectionsRequest(page_size=2, page_token=token), timeout=TIMEOUT
        )
        assert len(page.collections) <= 2
        seen += [c.name for c in page.collections]
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(seen)
    assert [f"collections/{n}" for n in names] == [
        s for s in seen if s.startswith(f"collections/{unique_name}")
    ]
    for name in names:
        collections.DeleteCollection(cpb.DeleteCollectionRequest(name=f"collections/{name}"), timeout=TIMEOUT)
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        collections.GetCollection,
        cpb.GetCollectionRequest(name=f"collections/{names[0]}"),
    )
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        collections.DeleteCollection,
        cpb.DeleteCollectionRequest(name=f"collections/{names[0]}"),
    )
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        collections.ListCollections,
        cpb.ListCollectionsRequest(page_token="garbage"),
    )
    assert "page_token" in err.details()
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, collections.GetCollection, cpb.GetCollectionRequest(name="papers")
    )
    assert "name" in err.details() and "papers" in err.details()


# ---------------------------------------------------------------------------------------- documents


def test_get_list_delete_documents(stubs, vector_collection: str, corpus) -> None:
    _, documents, _ = stubs
    got = documents.GetDocument(
        dpb.GetDocumentRequest(name=f"{vector_collection}/documents/doc-03", include_vectors=True),
        timeout=TIMEOUT,
    ).document
    assert got.id == "doc-03" and got.name == f"{vector_collection}/documents/doc-03"
    assert got.metadata == {"parity": "1", "n": "3"}
    assert got.token_count == corpus["doc-03"].shape[0]
    np.testing.assert_array_equal(unpack(got.vectors), corpus["doc-03"])  # float32 storage: exact

    ids, token = [], ""
    while True:
        page = documents.ListDocuments(
            dpb.ListDocumentsRequest(parent=vector_collection, page_size=7, page_token=token), timeout=TIMEOUT
        )
        ids += [d.id for d in page.documents]
        assert all(not d.HasField("vectors") for d in page.documents)
        token = page.next_page_token
        if not token:
            break
    assert ids == sorted(corpus)

    deleted = documents.DeleteDocuments(
        dpb.DeleteDocumentsRequest(parent=vector_collection, ids=["doc-00", "doc-01", "nope"]),
        timeout=TIMEOUT,
    )
    assert list(deleted.deleted_ids) == ["doc-00", "doc-01"]
    assert list(deleted.not_found_ids) == ["nope"]
    err = expect_error(
        grpc.StatusCode.NOT_FOUND,
        documents.GetDocument,
        dpb.GetDocumentRequest(name=f"{vector_collection}/documents/doc-00"),
    )
    assert "doc-00" in err.details()


def test_upsert_replaces_atomically_and_reports_replaced(stubs, vector_collection: str) -> None:
    _, documents, search = stubs
    rng = np.random.default_rng(1)
    first, second = unit_rows(rng, 4), unit_rows(rng, 6)
    documents.UpsertDocuments(
        dpb.UpsertDocumentsRequest(
            parent=vector_collection, documents=[dpb.Document(id="a/b c", vectors=pack(first))]
        ),
        timeout=TIMEOUT,
    )
    response = documents.UpsertDocuments(
        dpb.UpsertDocumentsRequest(
            parent=vector_collection,
            documents=[dpb.Document(id="a/b c", vectors=pack(second), metadata={"v": "2"})],
        ),
        timeout=TIMEOUT,
    )
    assert response.statuses[0].code == dpb.DOCUMENT_STATUS_CODE_REPLACED
    assert response.statuses[0].token_count == 6
    got = documents.GetDocument(
        dpb.GetDocumentRequest(name=f"{vector_collection}/documents/a/b c", include_vectors=True),
        timeout=TIMEOUT,
    ).document
    assert got.metadata == {"v": "2"}
    np.testing.assert_allclose(unpack(got.vectors), second, atol=1e-3)  # float16 storage
    hits = search.Search(
        spb.SearchRequest(collection=vector_collection, query=spb.Query(vectors=pack(second)), top_k=5),
        timeout=TIMEOUT,
    ).hits
    assert [h.id for h in hits] == ["a/b c"]


def test_upsert_errors_name_the_field(stubs, vector_collection: str) -> None:
    _, documents, _ = stubs
    rng = np.random.default_rng(2)
    good = dpb.Document(id="ok", vectors=pack(unit_rows(rng, 3)))

    def upsert(*docs: dpb.Document):
        return dpb.UpsertDocumentsRequest(parent=vector_collection, documents=list(docs))

    nan = unit_rows(rng, 3)
    nan[1, 2] = np.nan
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        documents.UpsertDocuments,
        upsert(good, dpb.Document(id="x", vectors=pack(nan))),
    )
    assert "documents[1].vectors" in err.details() and "nan" in err.details().lower()
    violations = error_details_pb2.BadRequest()
    rpc_status.from_call(err).details[0].Unpack(violations)
    assert violations.field_violations[0].field == "documents[1].vectors.data"

    wrong_dim = dpb.Document(id="w", vectors=pack(unit_rows(rng, 3, DIM + 1)))
    err = expect_error(grpc.StatusCode.FAILED_PRECONDITION, documents.UpsertDocuments, upsert(wrong_dim))
    assert str(DIM + 1) in err.details() and str(DIM) in err.details()

    short = pack(unit_rows(rng, 3))
    short.data = short.data[:-4]
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        documents.UpsertDocuments,
        upsert(dpb.Document(id="s", vectors=short)),
    )
    assert "documents[0].vectors.data" in err.details()

    long_document = dpb.Document(id="long", vectors=pack(unit_rows(rng, 8193)))
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, documents.UpsertDocuments, upsert(good, long_document)
    )
    assert "documents[1].vectors" in err.details() and "8193 tokens; the limit is 8192" in err.details()

    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, documents.UpsertDocuments, upsert(dpb.Document(id="e"))
    )
    assert "documents[0]" in err.details()
    err = expect_error(grpc.StatusCode.INVALID_ARGUMENT, documents.UpsertDocuments, upsert(good, good))
    assert "documents[1].id" in err.details() and "ok" in err.details()
    err = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        documents.UpsertDocuments,
        upsert(dpb.Document(id="t", text="hello")),
    )
    assert "encoder" in err.details()
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, documents.UpsertDocuments, upsert())
    err = expect_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        documents.UpsertDocuments,
        upsert(*[dpb.Document(id=f"d{i}", vectors=pack(unit_rows(rng, 1))) for i in range(1001)]),
    )
    assert "1000" in err.details()
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        documents.UpsertDocuments,
        dpb.UpsertDocumentsRequest(parent="collections/does-not-exist", documents=[good]),
    )
    # nothing of the failed batches was stored
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        documents.GetDocument,
        dpb.GetDocumentRequest(name=f"{vector_collection}/documents/ok"),
    )


def test_message_larger_than_the_limit_is_resource_exhausted(stubs, vector_collection: str) -> None:
    _, documents, _ = stubs
    rows = (SERVER_MAX_MESSAGE_MB + 1) * 1024 * 1024 // (4 * DIM)
    big = dpb.Document(id="big", vectors=pack(np.ones((rows, DIM), np.float32)))
    expect_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        documents.UpsertDocuments,
        dpb.UpsertDocumentsRequest(parent=vector_collection, documents=[big]),
    )


def test_stream_upsert_acknowledges_each_batch_and_survives_a_bad_one(stubs, vector_collection: str) -> None:
    _, documents, _ = stubs
    rng = np.random.default_rng(3)

    def batch(start: int, parent: str = "", bad: bool = False) -> dpb.StreamUpsertDocumentsRequest:
        docs = [dpb.Document(id=f"s{start + i}", vectors=pack(unit_rows(rng, 2))) for i in range(3)]
        if bad:
            docs[1].vectors.shape[:] = [2, DIM + 3]
        return dpb.StreamUpsertDocumentsRequest(parent=parent, documents=docs)

    requests = [batch(0, vector_collection), batch(3, bad=True), batch(6, vector_collection)]
    acks = list(documents.StreamUpsertDocuments(iter(requests), timeout=TIMEOUT))
    assert [a.batch_index for a in acks] == [0, 1, 2]
    assert [a.ok for a in acks] == [True, False, True]
    assert [s.code for s in acks[1].statuses] == [
        dpb.DOCUMENT_STATUS_CODE_ABORTED,
        dpb.DOCUMENT_STATUS_CODE_INVALID,
        dpb.DOCUMENT_STATUS_CODE_ABORTED,
    ]
    assert "documents[1]" in acks[1].statuses[1].message
    listed = documents.ListDocuments(dpb.ListDocumentsRequest(parent=vector_collection), timeout=TIMEOUT)
    assert [d.id for d in listed.documents] == ["s0", "s1", "s2", "s6", "s7", "s8"]

    with pytest.raises(grpc.RpcError) as caught:
        list(documents.StreamUpsertDocuments(iter([batch(0, "collections/nope")]), timeout=TIMEOUT))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as caught:
        list(
            documents.StreamUpsertDocuments(
                iter([batch(0, vector_collection), batch(0, "collections/x")]), timeout=TIMEOUT
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# ------------------------------------------------------------------------------------------- search


def test_search_by_vectors_returns_exact_chamfer_ranking(stubs, vector_collection: str, corpus) -> None:
    _, _, search = stubs
    rng = np.random.default_rng(11)
    query = unit_rows(rng, 5)
    response = search.Search(
        spb.SearchRequest(
            collection=vector_collection, query=spb.Query(vectors=pack(query)), top_k=5, candidates=40
        ),
        timeout=TIMEOUT,
    )
    expected = sorted(corpus, key=lambda d: -chamfer(query, corpus[d]))[:5]
    assert [h.id for h in response.hits] == expected
    for hit in response.hits:
        assert hit.score == pytest.approx(chamfer(query, corpus[hit.id]), abs=1e-4)
    assert response.query_token_count == 5


def test_search_filter_explain_and_batch(stubs, vector_collection: str, corpus) -> None:
    _, _, search = stubs
    query = corpus["doc-07"][:3]
    request = spb.SearchRequest(
        collection=vector_collection,
        query=spb.Query(vectors=pack(query)),
        top_k=10,
        filter={"parity": "0"},
        explain=True,
    )
    hits = search.Search(request, timeout=TIMEOUT).hits
    assert len(hits) == 10
    assert all(h.metadata["parity"] == "0" for h in hits)
    evens = [d for i, d in enumerate(corpus) if i % 2 == 0]
    assert [h.id for h in hits] == sorted(evens, key=lambda d: -chamfer(query, corpus[d]))[:10]
    for hit in hits:
        assert [m.query_token for m in hit.explanation] == [0, 1, 2]
        assert sum(m.score for m in hit.explanation) == pytest.approx(hit.score, abs=1e-4)
        doc = corpus[hit.id]
        for match in hit.explanation:
            assert match.score == pytest.approx(
                float(query[match.query_token] @ doc[match.document_token]), abs=1e-5
            )

    unfiltered = spb.SearchRequest(
        collection=vector_collection, query=spb.Query(vectors=pack(query)), top_k=1
    )
    batch = search.BatchSearch(spb.BatchSearchRequest(searches=[unfiltered, request]), timeout=TIMEOUT)
    assert [h.id for h in batch.results[0].hits] == ["doc-07"]
    assert [h.id for h in batch.results[1].hits] == [h.id for h in hits]


def test_search_errors(stubs, vector_collection: str, corpus) -> None:
    _, _, search = stubs
    query = spb.Query(vectors=pack(corpus["doc-01"]))

    def request(**kwargs) -> spb.SearchRequest:
        kwargs.setdefault("collection", vector_collection)
        kwargs.setdefault("query", query)
        return spb.SearchRequest(**kwargs)

    err = expect_error(grpc.StatusCode.INVALID_ARGUMENT, search.Search, request(top_k=5000))
    assert "top_k" in err.details() and "5000" in err.details()
    err = expect_error(grpc.StatusCode.INVALID_ARGUMENT, search.Search, request(top_k=20, candidates=5))
    assert "candidates" in err.details()
    err = expect_error(grpc.StatusCode.INVALID_ARGUMENT, search.Search, request(query=spb.Query()))
    assert "query" in err.details()
    err = expect_error(grpc.StatusCode.INVALID_ARGUMENT, search.Search, request(query=spb.Query(text="   ")))
    assert "query.text" in err.details()
    bad = np.ones((2, DIM), np.float32)
    bad[0, 0] = np.inf
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, search.Search, request(query=spb.Query(vectors=pack(bad)))
    )
    assert "query.vectors" in err.details()
    long_query = unit_rows(np.random.default_rng(5), 1025)  # one over the limit: bounds the rerank's memory
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, search.Search, request(query=spb.Query(vectors=pack(long_query)))
    )
    assert "query.vectors" in err.details() and "1025 tokens; the limit is 1024" in err.details()
    err = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        search.Search,
        request(query=spb.Query(vectors=pack(np.ones((2, DIM + 2), np.float32)))),
    )
    assert str(DIM + 2) in err.details()
    err = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION, search.Search, request(query=spb.Query(text="hello"))
    )
    assert "encoder" in err.details()
    expect_error(grpc.StatusCode.NOT_FOUND, search.Search, request(collection="collections/nope"))
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        search.BatchSearch,
        spb.BatchSearchRequest(searches=[request(), request(top_k=5000)]),
    )
    assert "searches[1].top_k" in err.details()
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        search.BatchSearch,
        spb.BatchSearchRequest(searches=[request(), request(probe=65)]),
    )
    assert "searches[1].probe" in err.details() and "65" in err.details()
    err = expect_error(grpc.StatusCode.INVALID_ARGUMENT, search.Search, request(centroid_candidates=200_000))
    assert "centroid_candidates" in err.details()
    err = expect_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        search.BatchSearch,
        spb.BatchSearchRequest(searches=[request()] * 101),
    )
    assert "100" in err.details()


def test_text_documents_search_and_encode(stubs, unique_name: str, mvr_server) -> None:
    collections, documents, search = stubs
    name = collections.CreateCollection(
        cpb.CreateCollectionRequest(
            collection_id=unique_name,
            collection=cpb.Collection(encoder=cpb.EncoderSpec(model=str(mvr_server.model_dir))),
        ),
        timeout=TIMEOUT,
    ).collection.name
    texts = {
        "cats": "the cat sat on the mat with another cat",
        "stocks": "market prices fell as investors sold stocks",
        "rain": "heavy rain and wind are expected tomorrow",
    }
    response = documents.UpsertDocuments(
        dpb.UpsertDocumentsRequest(
            parent=name, documents=[dpb.Document(id=k, text=v) for k, v in texts.items()]
        ),
        timeout=TIMEOUT,
    )
    assert all(s.token_count > 0 for s in response.statuses)
    got = documents.GetDocument(
        dpb.GetDocumentRequest(name=f"{name}/documents/cats"), timeout=TIMEOUT
    ).document
    assert got.text == texts["cats"]

    encoded = search.Encode(
        spb.EncodeRequest(texts=[texts["stocks"]], kind=spb.ENCODE_KIND_DOCUMENT, collection=name),
        timeout=TIMEOUT,
    )
    doc_vectors = unpack(encoded.results[0].vectors)
    np.testing.assert_allclose(np.linalg.norm(doc_vectors, axis=1), 1.0, atol=1e-5)
    assert encoded.encoder.model == str(mvr_server.model_dir)

    # a text query that repeats a document exactly ranks that document first
    hits = search.Search(
        spb.SearchRequest(collection=name, query=spb.Query(text=texts["stocks"]), top_k=3), timeout=TIMEOUT
    ).hits
    assert hits[0].id == "stocks"
    query_vectors = unpack(
        search.Encode(spb.EncodeRequest(texts=[texts["stocks"]], kind=spb.ENCODE_KIND_QUERY), timeout=TIMEOUT)
        .results[0]
        .vectors
    )
    by_vectors = search.Search(
        spb.SearchRequest(collection=name, query=spb.Query(vectors=pack(query_vectors)), top_k=3),
        timeout=TIMEOUT,
    ).hits
    assert [(h.id, round(h.score, 4)) for h in by_vectors] == [(h.id, round(h.score, 4)) for h in hits]

    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        documents.UpsertDocuments,
        dpb.UpsertDocumentsRequest(parent=name, documents=[dpb.Document(id="x", text="  \n ")]),
    )
    assert "documents[0].text" in err.details()
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        search.Encode,
        spb.EncodeRequest(texts=["ok", ""], kind=spb.ENCODE_KIND_QUERY),
    )
    assert "texts[1]" in err.details()
    err = expect_error(grpc.StatusCode.INVALID_ARGUMENT, search.Encode, spb.EncodeRequest(texts=["ok"]))
    assert "kind" in err.details()


def test_a_transient_resource_exhausted_carries_its_retry_delay_to_the_client() -> None:
    """abort_with packs RetryInfo for a queue that will drain; the client reads it back as
    retry_after_s (the status travels exactly as gRPC sends it: code, message, trailer)."""
    from mvr.client.errors import ResourceExhaustedError, from_rpc_error
    from mvr.server.errors import ResourceExhausted
    from mvr.server.service import abort_with

    class Aborted(Exception):
        pass

    class Context:
        status = code = None

        def abort_with_status(self, status):
            self.status = status
            raise Aborted

        def abort(self, code, message):
            self.code = code
            raise Aborted

    transient, permanent = Context(), Context()
    with pytest.raises(Aborted):
        abort_with(transient, ResourceExhausted("documents: the backlog is full", retry_after_s=1.5))
    with pytest.raises(Aborted):
        abort_with(permanent, ResourceExhausted("documents: 3 entries, more than the limit of 2 per call"))
    assert permanent.status is None and permanent.code == grpc.StatusCode.RESOURCE_EXHAUSTED

    class Failed(grpc.RpcError):
        def code(self):
            return transient.status.code

        def details(self):
            return transient.status.details

        def trailing_metadata(self):
            return transient.status.trailing_metadata

    error = from_rpc_error(Failed())
    assert isinstance(error, ResourceExhaustedError)
    assert error.retry_after_s == 1.5 and error.message == "documents: the backlog is full"
