"""Crash safety: a real server is killed with SIGKILL while a client streams upserts; after a restart,
every acknowledged document is there, whole and searchable, and nothing half-written appears."""

from __future__ import annotations

import random
import threading
import time
import zlib
from pathlib import Path

import grpc
import numpy as np
import pytest
from mvr.v1 import collection_service_pb2 as cpb
from mvr.v1 import collection_service_pb2_grpc as cgrpc
from mvr.v1 import document_service_pb2 as dpb
from mvr.v1 import document_service_pb2_grpc as dgrpc
from mvr.v1 import search_service_pb2 as spb
from mvr.v1 import search_service_pb2_grpc as sgrpc
from mvr.v1 import types_pb2 as tpb

from tests.conftest import start_server, stop_server

DIM = 16
BATCH = 25


def vectors_for(doc_id: str) -> np.ndarray:
    """Each id's vectors are a pure function of the id, so the test can check them after a crash."""
    rng = np.random.default_rng(zlib.crc32(doc_id.encode()))
    x = rng.standard_normal((int(rng.integers(3, 30)), DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def pack(x: np.ndarray) -> tpb.Vectors:
    return tpb.Vectors(dtype=tpb.DTYPE_FLOAT32, shape=list(x.shape), data=x.astype("<f4").tobytes())


def stream_until_killed(target: str, round_index: int, acknowledged: list[str]) -> None:
    def batches():
        for b in range(10_000):
            ids = [f"r{round_index}-b{b}-{i}" for i in range(BATCH)]
            yield dpb.StreamUpsertDocumentsRequest(
                parent="collections/crash",
                documents=[dpb.Document(id=i, vectors=pack(vectors_for(i))) for i in ids],
            )

    try:
        with grpc.insecure_channel(target) as channel:
            for ack in dgrpc.DocumentServiceStub(channel).StreamUpsertDocuments(batches(), timeout=120):
                assert ack.ok
                acknowledged.extend(s.id for s in ack.statuses)
    except grpc.RpcError:
        pass  # the server was killed mid-stream


def check_everything_acknowledged_is_intact(target: str, acknowledged: list[str]) -> None:
    with grpc.insecure_channel(target) as channel:
        documents = dgrpc.DocumentServiceStub(channel)
        search = sgrpc.SearchServiceStub(channel)
        stored: dict[str, int] = {}
        token = ""
        while True:
            page = documents.ListDocuments(
                dpb.ListDocumentsRequest(parent="collections/crash", page_size=1000, page_token=token),
                timeout=60,
            )
            stored.update({d.id: d.token_count for d in page.documents})
            token = page.next_page_token
            if not token:
                break
        missing = [i for i in acknowledged if i not in stored]
        assert not missing, f"{len(missing)} acknowledged documents lost, e.g. {missing[:3]}"
        # nothing half-written: every stored document (acknowledged or not) has exactly its vectors
        for doc_id in random.Random(0).sample(sorted(stored), min(150, len(stored))):
            got = documents.GetDocument(
                dpb.GetDocumentRequest(name=f"collections/crash/documents/{doc_id}", include_vectors=True),
                timeout=60,
            ).document
            expected = vectors_for(doc_id)
            assert got.token_count == len(expected)
            stored_vectors = np.frombuffer(got.vectors.data, "<f2").reshape(tuple(got.vectors.shape))
            np.testing.assert_allclose(stored_vectors, expected, atol=2e-3)
        for doc_id in random.Random(1).sample(acknowledged, min(30, len(acknowledged))):
            hits = search.Search(
                spb.SearchRequest(
                    collection="collections/crash",
                    query=spb.Query(vectors=pack(vectors_for(doc_id))),
                    top_k=1,
                ),
                timeout=60,
            ).hits
            assert hits[0].id == doc_id


def coded_documents(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        collection = cgrpc.CollectionServiceStub(channel).GetCollection(
            cpb.GetCollectionRequest(name="collections/crash"), timeout=60
        )
    return collection.collection.stats.coded_documents


@pytest.mark.parametrize(
    "token_storage",
    [
        cpb.TokenStorage(disable_codes=True),
        # the codec is trained within the first second and documents are coded while the kills land
        cpb.TokenStorage(residual_bits=4, train_after_tokens=1024, centroids=64),
    ],
    ids=["vectors", "codes"],
)
def test_acknowledged_documents_survive_kill_9(tmp_path: Path, token_storage: cpb.TokenStorage) -> None:
    data_dir = tmp_path / "data"
    server = start_server(data_dir, "none", tmp_path / "server-0.log")
    with grpc.insecure_channel(server.target) as channel:
        cgrpc.CollectionServiceStub(channel).CreateCollection(
            cpb.CreateCollectionRequest(
                collection_id="crash", collection=cpb.Collection(dim=DIM, token_storage=token_storage)
            ),
            timeout=60,
        )
    acknowledged: list[str] = []
    rng = random.Random(42)
    for round_index in range(3):
        writer = threading.Thread(target=stream_until_killed, args=(server.target, round_index, acknowledged))
        writer.start()
        time.sleep(rng.uniform(0.8, 2.5))  # a different kill point each round
        server.process.kill()
        server.process.wait(30)
        writer.join(60)
        assert acknowledged, "nothing was acknowledged before the kill"
        server = start_server(data_dir, "none", tmp_path / f"server-{round_index + 1}.log")
        check_everything_acknowledged_is_intact(server.target, acknowledged)
    if not token_storage.disable_codes:
        deadline = time.monotonic() + 60
        while coded_documents(server.target) < len(acknowledged) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert coded_documents(server.target) >= len(acknowledged)  # and still intact once coded:
        check_everything_acknowledged_is_intact(server.target, acknowledged)
    assert stop_server(server) == 0
