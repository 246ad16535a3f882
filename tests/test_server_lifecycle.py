"""Server lifecycle: NOT_SERVING + UNAVAILABLE before loading, graceful SIGTERM with data kept."""

from __future__ import annotations

import ctypes
import json
import os
import platform
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mvr.server.app import Server, ServerConfig
from mvr.v1 import collection_service_pb2 as cpb
from mvr.v1 import collection_service_pb2_grpc as cgrpc
from mvr.v1 import document_service_pb2 as dpb
from mvr.v1 import document_service_pb2_grpc as dgrpc
from mvr.v1 import search_service_pb2 as spb
from mvr.v1 import search_service_pb2_grpc as sgrpc
from mvr.v1 import types_pb2 as tpb

from tests.conftest import free_port, start_server, stop_server


def test_before_loading_health_is_not_serving_and_calls_are_unavailable(tmp_path: Path) -> None:
    server = Server(ServerConfig(port=free_port(), data_dir=tmp_path, model="none"))
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            status = (
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
            )
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as caught:
                cgrpc.CollectionServiceStub(channel).ListCollections(cpb.ListCollectionsRequest(), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "loading" in caught.value.details()
    finally:
        server.grpc_server.stop(0)


def test_sigterm_exits_zero_and_acknowledged_documents_survive_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = start_server(data_dir, "none", tmp_path / "server.log")
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((50, 5, 8)).astype(np.float32)
    with grpc.insecure_channel(server.target) as channel:
        cgrpc.CollectionServiceStub(channel).CreateCollection(
            cpb.CreateCollectionRequest(collection_id="keep", collection=cpb.Collection(dim=8)), timeout=30
        )
        dgrpc.DocumentServiceStub(channel).UpsertDocuments(
            dpb.UpsertDocumentsRequest(
                parent="collections/keep",
                documents=[
                    dpb.Document(
                        id=f"d{i}",
                        vectors=tpb.Vectors(dtype=tpb.DTYPE_FLOAT32, shape=[5, 8], data=v.tobytes()),
                    )
                    for i, v in enumerate(vectors)
                ],
            ),
            timeout=30,
        )
    assert stop_server(server) == 0, server.log()[-3000:]
    (stopped,) = [entry for entry in log_entries(server.log()) if entry.get("message") == "stopped"]
    assert stopped["calls_finished_s"] >= 0 and stopped["collections_closed_s"] >= 0

    server = start_server(data_dir, "none", tmp_path / "server2.log")
    try:
        with grpc.insecure_channel(server.target) as channel:
            stats = (
                cgrpc.CollectionServiceStub(channel)
                .GetCollection(cpb.GetCollectionRequest(name="collections/keep"), timeout=30)
                .collection.stats
            )
            assert stats.documents == 50
            stub = cgrpc.CollectionServiceStub(channel)
            deadline = time.monotonic() + 60
            while stats.indexed_documents < 50 and time.monotonic() < deadline:  # replayed if need be
                time.sleep(0.2)
                stats = stub.GetCollection(
                    cpb.GetCollectionRequest(name="collections/keep"), timeout=30
                ).collection.stats
            assert stats.indexed_documents == 50
    finally:
        assert stop_server(server) == 0


def log_entries(text: str) -> list[dict]:
    """The server's JSON log lines (other output, such as a thread dump, skipped)."""
    entries = []
    for line in text.splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [entry for entry in entries if isinstance(entry, dict)]


def test_sigusr1_dumps_every_thread_and_the_server_serves_on(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", "none", tmp_path / "server.log")
    try:
        server.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 30  # the dump is written a thread at a time: wait for the main one
        while "mvr/server/app.py" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        dump = server.log()
        assert "most recent call first" in dump
        # (the signal may land on any thread: the dump says "Current thread" only when it is Python's)
        assert "thread 0x" in dump.lower()
        assert "mvr/server/app.py" in dump  # the main thread, waiting for a stop signal
        with grpc.insecure_channel(server.target) as channel:
            cgrpc.CollectionServiceStub(channel).ListCollections(cpb.ListCollectionsRequest(), timeout=30)
    finally:
        assert stop_server(server) == 0


def test_prometheus_metrics_count_calls_by_method_and_code(tmp_path: Path) -> None:
    import urllib.request

    metrics_port = free_port()
    server = start_server(
        tmp_path / "data", "none", tmp_path / "server.log", "--metrics-port", str(metrics_port)
    )
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = cgrpc.CollectionServiceStub(channel)
            stub.ListCollections(cpb.ListCollectionsRequest(), timeout=30)
            with pytest.raises(grpc.RpcError):
                stub.GetCollection(cpb.GetCollectionRequest(name="collections/missing"), timeout=30)
            dim, rows = 4, np.eye(4, dtype=np.float32)
            vectors = tpb.Vectors(dtype=tpb.DTYPE_FLOAT32, shape=[2, dim], data=rows[:2].tobytes())
            stub.CreateCollection(
                cpb.CreateCollectionRequest(collection_id="m", collection=cpb.Collection(dim=dim)), timeout=30
            )
            dgrpc.DocumentServiceStub(channel).UpsertDocuments(
                dpb.UpsertDocumentsRequest(
                    parent="collections/m", documents=[dpb.Document(id="a", vectors=vectors)]
                ),
                timeout=30,
            )
            search = spb.SearchRequest(collection="collections/m", query=spb.Query(vectors=vectors))
            for _ in range(3):
                assert len(sgrpc.SearchServiceStub(channel).Search(search, timeout=30).hits) == 1
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        assert 'mvr_rpc_calls_total{code="OK",method="/mvr.v1.CollectionService/ListCollections"} 1.0' in text
        assert 'code="NOT_FOUND",method="/mvr.v1.CollectionService/GetCollection"} 1.0' in text
        assert "mvr_rpc_latency_seconds_bucket" in text
        # per stage: a collection with fewer documents than candidates runs the exact stage alone
        assert 'mvr_search_stage_seconds_count{stage="exact"} 3.0' in text
        assert 'mvr_search_stage_seconds_count{stage="graph"}' not in text
        assert 'mvr_indexing_backlog_documents{collection="m"}' in text
        assert 'mvr_codec_drift_ratio{collection="m"} 0.0' in text  # no codec yet: nothing measured
    finally:
        assert stop_server(server) == 0


def test_limits_set_on_the_command_line_are_enforced_by_name(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import subprocess_env

    refused = subprocess.run(
        [sys.executable, "-m", "mvr.client.cli", "serve", "--model", "none", "--limit", "max_batch_docs=2"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
    )
    assert refused.returncode != 0 and "unknown limit 'max_batch_docs=2'" in refused.stderr
    server = start_server(
        tmp_path / "data",
        "none",
        tmp_path / "server.log",
        "--limit",
        "max_batch_documents=2",
        "--limit",
        "max_query_tokens=3",
        "--limit",
        "max_upsert_streams=1",
    )
    try:
        dim = 4
        rows = np.eye(dim, dtype=np.float32)

        def vectors(n: int) -> tpb.Vectors:
            return tpb.Vectors(dtype=tpb.DTYPE_FLOAT32, shape=[n, dim], data=rows[:n].tobytes())

        with grpc.insecure_channel(server.target) as channel:
            cgrpc.CollectionServiceStub(channel).CreateCollection(
                cpb.CreateCollectionRequest(collection_id="lim", collection=cpb.Collection(dim=dim)),
                timeout=30,
            )
            documents = dgrpc.DocumentServiceStub(channel)
            batch = [dpb.Document(id=f"d{i}", vectors=vectors(2)) for i in range(3)]
            with pytest.raises(grpc.RpcError) as raised:
                documents.UpsertDocuments(
                    dpb.UpsertDocumentsRequest(parent="collections/lim", documents=batch)
                )
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "documents: 3 entries, more than the limit of 2" in raised.value.details()
            documents.UpsertDocuments(
                dpb.UpsertDocumentsRequest(parent="collections/lim", documents=batch[:2])
            )
            search = sgrpc.SearchServiceStub(channel)
            request = spb.SearchRequest(collection="collections/lim", query=spb.Query(vectors=vectors(4)))
            with pytest.raises(grpc.RpcError) as raised:
                search.Search(request, timeout=30)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "query.vectors: has 4 tokens; the limit is 3" in raised.value.details()
            request.query.vectors.CopyFrom(vectors(3))
            assert len(search.Search(request, timeout=30).hits) == 2
            # one upsert stream at a time: a second is refused with a retry delay while the first is open
            release = threading.Event()

            def held_open(prefix: str):
                yield dpb.StreamUpsertDocumentsRequest(
                    parent="collections/lim", documents=[dpb.Document(id=f"{prefix}0", vectors=vectors(2))]
                )
                release.wait(30)

            first = documents.StreamUpsertDocuments(held_open("s"), timeout=60)
            assert next(first).ok
            with pytest.raises(grpc.RpcError) as raised:
                list(documents.StreamUpsertDocuments(held_open("t"), timeout=30))
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "1 upsert streams are open; the limit is 1 (max_upsert_streams)" in raised.value.details()
            release.set()
            assert list(first) == []  # the first ends normally, and frees its slot
            release.clear()
            threading.Timer(0.5, release.set).start()
            assert [ack.ok for ack in documents.StreamUpsertDocuments(held_open("u"), timeout=30)] == [True]
    finally:
        assert stop_server(server) == 0


def _tgkill(pid: int, tid: int, signum: int) -> None:
    """Sends ``signum`` to one thread of another process (Linux tgkill; os.kill signals the process,
    which the kernel may deliver to any thread)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(SYS_TGKILL, pid, tid, signum) != 0:
        raise OSError(ctypes.get_errno(), "tgkill failed")


SYS_TGKILL = 234  # x86-64


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64", reason="tgkill on x86-64")
def test_sigterm_delivered_to_another_thread_still_stops_the_server(tmp_path: Path) -> None:
    """The kernel may hand a process's SIGTERM to any of its threads; CPython only runs the handler
    on the main thread, which must therefore not block for good (it did: the server ran on)."""
    server = start_server(tmp_path / "data", "none", tmp_path / "server.log")
    pid = server.process.pid
    others = [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid]
    assert others, "the server runs gRPC and indexer threads beside the main one"
    _tgkill(pid, others[0], signal.SIGTERM)
    try:
        code = server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        pytest.fail(
            f"SIGTERM on thread {others[0]} did not stop the server; its log:\n{server.log()[-3000:]}"
        )
    assert code == 0, server.log()[-3000:]
    assert "signal received" in server.log()
