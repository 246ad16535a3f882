"""Snapshots: consistent under concurrent writes, self-contained, restored with identical results; the
file format refuses damaged or foreign files; the gRPC service, the client and the CLI round trip."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mvr.client import Client, Document
from mvr.client.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from mvr.server import collection as collection_module
from mvr.server.errors import AlreadyExists, InvalidArgument, NotFound
from mvr.server.manager import CollectionManager
from mvr.server.store import NO_OFFSET, ByteRanges
from mvr.server.values import DocumentInput
from mvr.v1 import snapshot_service_pb2 as snpb
from mvr.v1 import snapshot_service_pb2_grpc as sngrpc

from tests.conftest import subprocess_env
from tests.test_collection import CODED, DIM, clustered_corpus, paraphrases


@pytest.fixture
def manager(tmp_path: Path):
    manager = CollectionManager(tmp_path / "data", save_interval_s=3600)
    yield manager
    manager.close()


def fill(manager: CollectionManager, name: str, docs: dict[str, np.ndarray]) -> object:
    manager.create(name, model=None, dim=DIM, tokens=CODED)
    collection = manager.get(name)
    items = list(docs.items())
    for start in range(0, len(items), 50):
        collection.upsert(
            [DocumentInput(i, vectors=v, metadata={"n": i[-1]}) for i, v in items[start : start + 50]]
        )
    return collection


def results(collection, queries) -> list[list[tuple[str, float]]]:
    return [[(h.id, h.score) for h in collection.search(q, 10)] for q in queries]


def test_restored_snapshot_answers_exactly_as_the_collection_did(manager: CollectionManager) -> None:
    docs = clustered_corpus(400, seed=11)
    source = fill(manager, "src", docs)
    source.flush(timeout_s=120)
    source.delete(["d0001", "d0002"])
    source.upsert([DocumentInput("d0003", vectors=docs["d0004"], metadata={"n": "replaced"})])
    # settled first: searched while the indexer still inserts d0003, the graph answers from another
    # state than the one the snapshot holds (seen: a graph candidate missing after the restore)
    source.flush(timeout_s=120)
    assert source.stats().coded > 0  # the codes, their codec and the graph travel too
    queries = paraphrases(docs, 15, seed=2)
    before = results(source, queries)

    info = manager.create_snapshot("src")
    assert info.documents == 398
    restored_config = manager.restore("copy", manager.snapshots.get("src", info.snapshot_id, "s")[0], "s")
    restored = manager.get("copy")
    assert restored_config.name == "copy" and restored.config.fde == source.config.fde

    assert results(restored, queries) == before
    assert restored.stats().documents == 398 and restored.stats().coded == source.stats().coded
    # the snapshot holds what a compaction keeps: no dead versions, no float vectors of coded documents
    assert restored.store.dead_bytes() == 0 < source.store.dead_bytes()
    source.compact()
    for doc_id in ("d0000", "d0003", "d0399"):
        a, b = source.get(doc_id), restored.get(doc_id)
        assert (a.metadata, a.n_tokens) == (b.metadata, b.n_tokens)
        np.testing.assert_array_equal(a.vectors, b.vectors)
    with pytest.raises(NotFound):
        restored.get("d0001")
    # the two collections are independent from here on
    restored.upsert([DocumentInput("new", vectors=docs["d0005"])])
    with pytest.raises(NotFound):
        source.get("new")
    # and a restarted server opens the restored collection as it left it
    manager.close()
    reopened = CollectionManager(manager.root.parent, save_interval_s=3600)
    try:
        assert results(reopened.get("copy"), queries[:3])[0][0][0] in {h[0] for h in before[0]} | {"new"}
        assert reopened.get("copy").get("new").n_tokens == len(docs["d0005"])
    finally:
        reopened.close()


def test_snapshot_under_concurrent_writes_holds_every_write_acknowledged_before_it(
    manager: CollectionManager,
) -> None:
    docs = clustered_corpus(1000, seed=4)
    collection = fill(manager, "busy", dict(list(docs.items())[:100]))
    acknowledged: list[tuple[float, float, str, str]] = []  # (issued, acknowledged, op, id)
    stop = threading.Event()

    def writer() -> None:
        rng = np.random.default_rng(0)
        for n, (doc_id, vectors) in enumerate(list(docs.items())[100:]):
            if stop.is_set():
                return
            issued = time.monotonic()
            collection.upsert([DocumentInput(doc_id, vectors=vectors)])
            acknowledged.append((issued, time.monotonic(), "upsert", doc_id))
            if n % 5 == 4:  # deletes too, of documents loaded before (never written again)
                victim, issued = f"d{int(rng.integers(100)):04d}", time.monotonic()
                collection.delete([victim])
                acknowledged.append((issued, time.monotonic(), "delete", victim))

    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(0.3)
    began = time.monotonic()
    info = manager.create_snapshot("busy")
    ended = time.monotonic()
    time.sleep(0.2)
    stop.set()
    thread.join()
    assert any(issued > ended for issued, _, _, _ in acknowledged), "the writer went on after the snapshot"

    manager.restore("restored", manager.snapshots.get("busy", info.snapshot_id, "s")[0], "s")
    restored = manager.get("restored")
    # in the snapshot: every write acknowledged before the call began; not in it: every write issued
    # after the call returned (one in flight meanwhile may be either)
    must_have = {i for _, t, op, i in acknowledged if t < began and op == "upsert"}
    must_have |= {f"d{n:04d}" for n in range(100)} - {i for s, _, _, i in acknowledged if s < ended}
    must_lack = {i for _, t, op, i in acknowledged if t < began and op == "delete"}
    must_lack |= {i for s, _, op, i in acknowledged if s > ended and op == "upsert"}
    assert len(must_have) > 50 and len(must_lack) > 5
    for doc_id in must_have:  # the same tokens (of coded documents, their decoded 8-bit codes)
        stored, written = restored.get(doc_id).vectors, docs[doc_id]
        assert stored.shape == written.shape
        similarities = (stored / np.linalg.norm(stored, axis=1, keepdims=True)) @ written.T
        assert np.array_equal(similarities.argmax(axis=1), np.arange(len(written)))  # each its own token
        cosines = np.diag(similarities)
        # 8-bit codes read back at ~0.99999, but the 8-bit range clips each dimension's rarest tails
        # (up to 0.1% of the training residuals) and such a token reads back at ~0.99
        assert cosines.min() > 0.95 and cosines.mean() > 0.995, (doc_id, cosines.min(), cosines.mean())
    assert not must_lack & set(restored.store.records)
    assert info.documents == len(restored.store.records)
    restored.flush(timeout_s=120)
    assert restored.stats().indexed == len(restored.store.records)


def test_graph_saved_after_the_instant_is_reconciled_on_restore(
    manager: CollectionManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The graph is saved just after the snapshot's instant: a version deleted in between is live in the
    snapshot's catalog but marked deleted in its graph (revived on restore); a version written in
    between is in the graph but not the catalog (marked deleted, its label never handed out again)."""
    docs = clustered_corpus(120, seed=8)
    collection = fill(manager, "race", dict(list(docs.items())[:100]))
    collection.flush(timeout_s=120)
    original_view = collection.store.view
    late_writes: list[threading.Thread] = []

    def view_then_write():
        view = original_view()  # the instant; the writes below wait for the write lock

        def write() -> None:
            collection.delete(["d0007"])
            collection.upsert([DocumentInput("late", vectors=docs["d0110"])])
            collection.flush(timeout_s=60)  # "late" reaches the graph before it is saved

        late_writes.append(threading.Thread(target=write))
        late_writes[0].start()
        return view

    real_scratch = collection_module.tempfile.TemporaryDirectory

    def scratch_after_the_writes(*args, **kwargs):
        late_writes[0].join()
        return real_scratch(*args, **kwargs)

    monkeypatch.setattr(collection.store, "view", view_then_write)
    monkeypatch.setattr(collection_module.tempfile, "TemporaryDirectory", scratch_after_the_writes)
    info = manager.create_snapshot("race")
    monkeypatch.undo()

    manager.restore("reconciled", manager.snapshots.get("race", info.snapshot_id, "s")[0], "s")
    restored = manager.get("reconciled")
    assert "late" not in restored.store.records and "d0007" in restored.store.records
    assert restored.backlog() == 0, "the revived version is in the graph, not replayed"
    label = restored.store.records["d0007"].label
    assert label in restored.index.labels() and restored.index.count == 100
    assert restored.search(docs["d0007"], 1)[0].id == "d0007"
    assert restored.store.next_label > collection.store.records["late"].label
    restored.upsert([DocumentInput("after", vectors=docs["d0111"])])
    restored.flush(timeout_s=60)
    assert restored.search(docs["d0111"], 1)[0].id == "after"


def test_damaged_or_foreign_files_are_refused_with_the_field_named(
    manager: CollectionManager, tmp_path: Path
) -> None:
    fill(manager, "src", clustered_corpus(60, seed=1))
    info = manager.create_snapshot("src")
    path, _ = manager.snapshots.get("src", info.snapshot_id, "s")
    data = bytearray(path.read_bytes())

    flipped = tmp_path / "flipped.tar"
    position = data.index(b"catalog.sqlite") + 4096  # inside the catalog's bytes
    data[position] ^= 0xFF
    flipped.write_bytes(bytes(data))
    cases = {
        flipped: "altered or damaged",
        tmp_path / "cut.tar": "cut short|not a readable|lacks",
        tmp_path / "noise.tar": "not a readable",
    }
    (tmp_path / "cut.tar").write_bytes(path.read_bytes()[: len(data) // 2])
    (tmp_path / "noise.tar").write_bytes(np.random.default_rng(0).bytes(10_000))
    foreign = tmp_path / "foreign.tar"
    with tarfile.open(foreign, "w") as tar:
        tar.add(__file__, arcname="../../etc/passwd")
    cases[foreign] = "unexpected entry"
    for bad, reason in cases.items():
        with pytest.raises(InvalidArgument, match=reason) as raised:
            manager.restore("bad", bad, "data")
        assert raised.value.field == "data"
        assert "bad" not in {c.name for c in manager.list()}
    assert not list(manager.root.glob(".restoring-*")), "a refused restore leaves nothing behind"
    with pytest.raises(AlreadyExists):
        manager.restore("src", path, "s")
    with pytest.raises(NotFound):
        manager.snapshots.get("src", "20000101T000000000000Z-abcdef", "name")
    with pytest.raises(InvalidArgument, match="snapshot name"):
        manager.snapshots.get("src", "../../x", "name")


# ------------------------------------------------------------------------------------------ over gRPC


def test_snapshot_round_trip_through_the_client(mvr_server, unique_name: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    docs = [Document(f"doc-{i}", vectors=rng.standard_normal((8, 32)).astype(np.float32)) for i in range(40)]
    with Client(mvr_server.target) as client:
        client.create_collection(unique_name, model=None, dim=32)
        client.upsert(unique_name, docs)
        first = client.create_snapshot(unique_name)
        second = client.create_snapshot(unique_name)
        assert first.collection == unique_name and first.document_count == 40
        assert [s.name for s in client.list_snapshots(unique_name, page_size=1)] == [first.name, second.name]

        downloaded = client.download_snapshot(first.name, tmp_path / "backup.tar")
        assert (tmp_path / "backup.tar").stat().st_size == downloaded.size_bytes == first.size_bytes
        copy = f"{unique_name}-up"
        restored = client.restore_snapshot(copy, path=tmp_path / "backup.tar")
        assert restored.name == copy and restored.stats.documents == 40
        kept = client.restore_snapshot(f"{unique_name}-kept", snapshot=second.name)
        assert kept.stats.documents == 40
        query = docs[7].vectors
        expected = [(h.id, h.score) for h in client.search(unique_name, query, top_k=5)]
        for name in (copy, f"{unique_name}-kept"):
            assert [(h.id, h.score) for h in client.search(name, query, top_k=5)] == expected

        with pytest.raises(AlreadyExistsError):
            client.restore_snapshot(copy, path=tmp_path / "backup.tar")
        (tmp_path / "junk.tar").write_bytes(b"not a snapshot" * 100)
        with pytest.raises(InvalidArgumentError) as raised:
            client.restore_snapshot(f"{unique_name}-junk", path=tmp_path / "junk.tar")
        assert raised.value.field_violations[0].field == "data"
        client.delete_snapshot(first.name)
        with pytest.raises(NotFoundError):
            client.download_snapshot(first.name, tmp_path / "gone.tar")
        assert not (tmp_path / "gone.tar").exists()
        assert [s.name for s in client.list_snapshots(unique_name)] == [second.name]
        # a deleted collection comes back from its snapshot
        client.delete_collection(unique_name)
        client.restore_snapshot(unique_name, snapshot=second.name)
        assert client.get_collection(unique_name).stats.documents == 40


def test_snapshot_requests_that_are_wrong_get_precise_codes(channel, unique_name: str) -> None:
    stub = sngrpc.SnapshotServiceStub(channel)
    calls = [
        (lambda: stub.CreateSnapshot(snpb.CreateSnapshotRequest(parent="nope")), "INVALID_ARGUMENT"),
        (
            lambda: stub.CreateSnapshot(snpb.CreateSnapshotRequest(parent=f"collections/{unique_name}")),
            "NOT_FOUND",
        ),
        (
            lambda: stub.DeleteSnapshot(snpb.DeleteSnapshotRequest(name="collections/a/snapshots/..")),
            "INVALID_ARGUMENT",
        ),
        (lambda: list(stub.DownloadSnapshot(snpb.DownloadSnapshotRequest(name="x"))), "INVALID_ARGUMENT"),
        (
            lambda: list(
                stub.DownloadSnapshot(
                    snpb.DownloadSnapshotRequest(
                        name=f"collections/{unique_name}/snapshots/20260101T000000000000Z-000000"
                    )
                )
            ),
            "NOT_FOUND",
        ),
        (lambda: stub.RestoreSnapshot(iter([])), "INVALID_ARGUMENT"),
        (
            lambda: stub.RestoreSnapshot(iter([snpb.RestoreSnapshotRequest(collection_id="Bad Name")])),
            "INVALID_ARGUMENT",
        ),
        (
            lambda: stub.RestoreSnapshot(
                iter([snpb.RestoreSnapshotRequest(collection_id=unique_name, snapshot="x", data=b"1")])
            ),
            "INVALID_ARGUMENT",
        ),
        (
            lambda: stub.ListSnapshots(snpb.ListSnapshotsRequest(parent="collections/x", page_token="@@")),
            "INVALID_ARGUMENT",
        ),
    ]
    for call, code in calls:
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert raised.value.code().name == code, raised.value.details()
    assert (
        list(stub.ListSnapshots(snpb.ListSnapshotsRequest(parent=f"collections/{unique_name}")).snapshots)
        == []
    )


def test_cli_snapshot_create_and_restore(mvr_server, unique_name: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    with Client(mvr_server.target) as client:
        client.create_collection(unique_name, model=None, dim=16)
        client.upsert(
            unique_name, [Document(f"x{i}", vectors=rng.standard_normal((4, 16))) for i in range(10)]
        )

    def mvr(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "mvr.client.cli", *args, "--target", mvr_server.target],
            capture_output=True,
            text=True,
            env=subprocess_env(),
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    out = json.loads(mvr("snapshot", "create", unique_name, "--out", str(tmp_path / "s.tar"), "--json"))
    assert out["document_count"] == 10 and (tmp_path / "s.tar").exists()
    mvr("snapshot", "restore", str(tmp_path / "s.tar"), "--as", f"{unique_name}-cli")
    listed = mvr("snapshot", "list", unique_name)
    assert out["name"] in listed
    with Client(mvr_server.target) as client:
        assert client.get_collection(f"{unique_name}-cli").stats.documents == 10


def test_async_client_snapshot_methods(mvr_server, unique_name: str, tmp_path: Path) -> None:
    from mvr.client import AsyncClient

    async def run() -> None:
        rng = np.random.default_rng(9)
        async with AsyncClient(mvr_server.target) as mvr:
            await mvr.create_collection(unique_name, model=None, dim=8)
            await mvr.upsert(
                unique_name, [Document(f"a{i}", vectors=rng.standard_normal((3, 8))) for i in range(5)]
            )
            info = await mvr.create_snapshot(unique_name)
            assert [s.name for s in await mvr.list_snapshots(unique_name)] == [info.name]
            downloaded = await mvr.download_snapshot(info.name, tmp_path / "a.tar")
            assert downloaded.sha256 == info.sha256
            restored = await mvr.restore_snapshot(f"{unique_name}-a", path=tmp_path / "a.tar")
            assert restored.stats.documents == 5
            await mvr.delete_snapshot(info.name)
            assert await mvr.list_snapshots(unique_name) == []

    asyncio.run(run())


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.booleans()), min_size=0, max_size=30), st.integers(1, 64))
def test_byte_ranges_stream_each_selected_range_once_in_file_order(rows, read_size) -> None:
    """Blocks laid out in a shuffled order with gaps (dead bytes), some rows not selected: the stream
    holds each selected block once, at the offset the row is given."""
    rng = np.random.default_rng(len(rows))
    lengths = np.array([n for n, _ in rows], dtype=np.int64)
    selected = np.array([keep for _, keep in rows], dtype=bool)
    order, offsets, content = rng.permutation(len(rows)), np.zeros(len(rows), np.int64), bytearray()
    for row in order:
        content += rng.bytes(int(rng.integers(0, 3)))  # a gap
        offsets[row] = len(content)
        content += rng.bytes(int(lengths[row]))
    with tempfile.TemporaryFile() as handle:
        handle.write(bytes(content))
        handle.flush()
        ranges = ByteRanges(handle, offsets, lengths, selected)
        stream = b"".join(iter(lambda: ranges.read(read_size), b""))
    assert len(stream) == ranges.size == lengths[selected].sum()
    for row in range(len(rows)):
        if selected[row]:
            new = ranges.new_offsets[row]
            assert stream[new : new + lengths[row]] == bytes(
                content[offsets[row] : offsets[row] + lengths[row]]
            )
        else:
            assert ranges.new_offsets[row] == NO_OFFSET
