"""Sharded serving on Ray Serve (issue 16, part 2) on a local Ray: a corpus ingested into 3 shards and
served through the router answers the Python client exactly as a brute-force search over every
document does (small shards: every document is a candidate), with filters, for text and vector
queries; upserts, gets, deletes and pages go to the right shards and errors keep their codes and name
the caller's fields; a batch with a refused document leaves nothing on any shard (two phases), also in
a stream, and `mvr ingest` and the generated Go and TypeScript clients work against the cluster's
address; a killed shard replica is restarted by Serve and no acknowledged write is lost; copies of a
shard (--replicas) all take every write, and copies that differ are refused at start."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import free_port
from tests.test_cluster_ingest import SHARDS, local_ray, sentence  # noqa: F401 (a fixture)
from tests.test_go_client import GO_DIR, go_toolchain  # noqa: F401 (a fixture)
from tests.test_ts_client import TS_DIR, node  # noqa: F401 (a fixture)

pytestmark = pytest.mark.ray


_rng = np.random.default_rng(5)
RECORDS = [{"id": f"d{i:04d}", "text": sentence(_rng, 6 + i % 15), "year": 2000 + i % 10} for i in range(900)]


def chamfer(query: np.ndarray, document: np.ndarray) -> float:
    return float((query @ document.T).max(axis=1).sum())


@pytest.fixture(scope="module")
def cluster(local_ray, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    from mvr.client import Client
    from mvr.cluster.ingest import ingest
    from mvr.cluster.serving import start
    from ray import serve

    directory = tmp_path_factory.mktemp("cluster")
    corpus = directory / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(record) + "\n" for record in RECORDS))
    shards = directory / "shards"
    ingest([corpus], shards, "docs", SHARDS, model=str(tiny_model_dir), actors=1, batch_size=32)
    port = free_port()
    start(shards, port)
    client = Client(f"127.0.0.1:{port}", timeout=60)
    client.wait_until_serving(120)
    yield client
    client.close()
    serve.shutdown()


def test_recall_at_the_defaults_is_at_least_one_collections(
    cluster, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Each shard searches its third with the whole candidate budget: recall@10 against exact search
    is at least that of the same corpus in one collection, for text and vector queries, with filters."""
    from mvr.server.encoder import EncoderCache
    from mvr.server.manager import CollectionManager
    from mvr.server.metadata import Condition
    from mvr.server.values import DocumentInput

    documents = every_document(cluster)
    manager = CollectionManager(tmp_path, encoder_loader=EncoderCache(1))
    try:
        manager.create("one", model=str(tiny_model_dir), dim=None)
        single = manager.get("one")
        single.upsert([DocumentInput(r["id"], text=r["text"], metadata={"year": r["year"]}) for r in RECORDS])
        single.flush()
        rng = np.random.default_rng(11)
        recall: dict[str, list[float]] = {"cluster": [], "one collection": []}
        for i, record in enumerate(RECORDS[::45]):
            words = record["text"].split()
            words[rng.integers(len(words))] = "cat"  # a paraphrase: one word changed
            text = " ".join(words)
            vectors = cluster.encode([text], collection="docs")[0]
            query = vectors if i % 3 else text  # a third of the queries as text, the rest as vectors
            recent = i % 2 == 1  # half of them filtered to half of the corpus
            allowed = [d for d in documents if not recent or int(d[1:]) % 10 < 5]
            truth = set(sorted(allowed, key=lambda d: (-chamfer(vectors, documents[d]), d))[:10])
            found = cluster.search(
                "docs", query, top_k=10, filter={"year": {"$lt": 2005}} if recent else None
            )
            ones = single.search(query, 10, where=Condition("year", "lt", 2005) if recent else None)
            recall["cluster"].append(len({h.id for h in found} & truth) / 10)
            recall["one collection"].append(len({h.id for h in ones} & truth) / 10)
        means = {name: float(np.mean(values)) for name, values in recall.items()}
        assert means["cluster"] >= means["one collection"] - 0.01, means
    finally:
        manager.close()


def every_document(client) -> dict[str, np.ndarray]:
    return {d.id: d.vectors for d in client.list_documents("docs", page_size=7, include_vectors=True)}


def test_search_through_the_router_is_the_exact_search(cluster) -> None:
    documents = every_document(cluster)
    assert len(documents) == 900 and list(documents) == sorted(documents)  # pages merged in id order
    info = cluster.get_collection("docs")
    assert info.stats is not None and info.stats.documents == 900  # the shards' stats summed
    rng = np.random.default_rng(1)
    for text in [sentence(rng, 5) for _ in range(4)]:
        hits = cluster.search("docs", text, top_k=10, candidates=1000)
        (query,) = cluster.encode([text], collection="docs")  # Encode: answered by a shard
        best = sorted((chamfer(query, vectors) for vectors in documents.values()), reverse=True)[:10]
        # the exact top 10 (up to float32 rounding between near-equal documents): the hits' own exact
        # scores are the 10 best, in order
        np.testing.assert_allclose([chamfer(query, documents[h.id]) for h in hits], best, rtol=1e-5)
        np.testing.assert_allclose([h.score for h in hits], best, rtol=1e-4)
    for doc_id in ["d0007", "d0450", "d0899"]:  # a document's own vectors: itself first, exact scores
        vectors = documents[doc_id]
        hits = cluster.search("docs", vectors, top_k=5, candidates=1000)
        best = sorted((chamfer(vectors, v) for v in documents.values()), reverse=True)[:5]
        np.testing.assert_allclose([chamfer(vectors, documents[h.id]) for h in hits], best, rtol=1e-5)
        np.testing.assert_allclose([h.score for h in hits], best, rtol=1e-4)
        recent = cluster.search("docs", vectors, top_k=5, candidates=1000, filter={"year": {"$gte": 2005}})
        matching = [d for d in documents if int(d[1:]) % 10 >= 5]
        assert {h.id for h in recent} <= set(matching)
        best = sorted((chamfer(vectors, documents[d]) for d in matching), reverse=True)[:5]
        np.testing.assert_allclose([chamfer(vectors, documents[h.id]) for h in recent], best, rtol=1e-5)


def test_writes_go_to_their_shard_and_errors_keep_their_codes(cluster) -> None:
    from mvr.client import Document, InvalidArgumentError, NotFoundError

    rng = np.random.default_rng(2)
    docs = [Document(f"new-{i}", text=sentence(rng, 8), metadata={"year": 1990}) for i in range(6)]
    results = cluster.upsert("docs", docs)
    assert [r.id for r in results] == [d.id for d in docs] and all(r.created for r in results)
    for doc in docs:
        assert cluster.get("docs", doc.id).text == doc.text
        hits = cluster.search("docs", doc.text, top_k=1, candidates=1000, filter={"year": 1990})
        assert hits[0].id == doc.id
    with pytest.raises(InvalidArgumentError) as refused:  # the bad one is the caller's documents[4]
        cluster.upsert("docs", [*docs[:4], Document("", text="no id"), docs[5]])
    assert "documents[4]" in str(refused.value), refused.value
    deleted = cluster.delete("docs", ["new-0", "new-1", "missing"])
    assert sorted(deleted.deleted) == ["new-0", "new-1"] and deleted.not_found == ["missing"]
    with pytest.raises(NotFoundError):
        cluster.get("docs", "new-0")
    by_filter = cluster.delete("docs", where={"year": 1990})
    assert by_filter.count == 4
    assert cluster.get_collection("docs").stats.documents == 900


def test_a_refused_document_leaves_nothing_of_its_batch_on_any_shard(cluster) -> None:
    """Every shard's share is validated and encoded before any shard stores its own: one bad document
    (here in one share, the rest spread over the other shards) and no document of the batch exists."""
    from mvr.client import Document, FailedPreconditionError, InvalidArgumentError
    from mvr.cluster.sharding import shard_of

    rng = np.random.default_rng(4)
    docs = [Document(f"atomic-{i}", text=sentence(rng, 8)) for i in range(12)]
    assert len({shard_of(d.id, SHARDS) for d in docs}) == SHARDS  # the batch spans every shard
    wrong_dim = np.ones((3, 7), np.float32)  # the collection's vectors have another dimension
    for bad, refusal, field in [
        (Document("", text="no id"), InvalidArgumentError, "documents[9].id"),
        (Document("atomic-bad", vectors=wrong_dim), FailedPreconditionError, "documents[9]"),
    ]:
        with pytest.raises(refusal) as refused:
            cluster.upsert("docs", [*docs[:9], bad, *docs[9:]])
        assert field in str(refused.value), refused.value
        assert not {d.id for d in cluster.list_documents("docs", page_size=1000)} & {
            d.id for d in [*docs, bad]
        }
    assert cluster.get_collection("docs").stats.documents == 900


def test_upsert_stream_and_mvr_ingest_against_the_cluster(cluster, tmp_path: Path) -> None:
    """StreamUpsertDocuments through the router: batches acknowledged in order, a batch with a bad
    document answered ok=false with nothing of it stored while the stream goes on; an unknown
    collection ends the stream with NOT_FOUND; and `mvr ingest` works against the cluster's address."""
    from mvr.client import Document, NotFoundError
    from mvr.client import cli as client_cli

    rng = np.random.default_rng(6)
    batches = [[Document(f"streamed-{b}-{i}", text=sentence(rng, 7)) for i in range(5)] for b in range(3)]
    batches[1][3] = Document("", text="no id")
    acks = list(cluster.upsert_stream("docs", batches))
    assert [(a.batch_index, a.ok) for a in acks] == [(0, True), (1, False), (2, True)]
    assert [s.code for s in acks[1].statuses] == ["ABORTED", "ABORTED", "ABORTED", "INVALID", "ABORTED"]
    assert "documents[3].id" in acks[1].statuses[3].message
    assert all(s.code == "CREATED" for s in [*acks[0].statuses, *acks[2].statuses])
    stored = {d.id for d in cluster.list_documents("docs", page_size=1000) if d.id.startswith("streamed-")}
    assert stored == {d.id for b in (0, 2) for d in batches[b]}
    with pytest.raises(NotFoundError):
        list(cluster.upsert_stream("nope", batches[:1]))

    corpus = tmp_path / "more.jsonl"
    texts = {f"cli-{i}": sentence(rng, 9) for i in range(40)}
    corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in texts.items()))
    command = ["ingest", str(corpus), "--collection", "docs", "--text-field", "text", "--batch-size", "16"]
    assert (
        client_cli.main(
            [*command, "--quiet", "--checkpoint", str(tmp_path / "ckpt"), "--target", cluster.target]
        )
        == 0
    )
    for doc_id in ["cli-0", "cli-17", "cli-39"]:
        assert cluster.search("docs", texts[doc_id], top_k=1, candidates=1000)[0].id == doc_id
    cluster.delete("docs", [*stored, *texts])
    assert cluster.get_collection("docs").stats.documents == 900


def test_the_typescript_example_passes_every_step_against_the_cluster(cluster, node: str) -> None:  # noqa: F811
    """The generated TypeScript client (ts-proto, grpc-js), unchanged, against the router's address:
    create, an atomic batch, a stream, a filtered search, reads with vectors, pages, deletes, errors
    with their codes and BadRequest details, and the collection deleted again."""
    tsc = subprocess.run(
        [str(TS_DIR / "node_modules/.bin/tsc"), "-p", str(TS_DIR)], capture_output=True, text=True
    )
    assert tsc.returncode == 0, tsc.stdout + tsc.stderr
    result = subprocess.run(
        [node, str(TS_DIR / "dist/example.js"), cluster.target], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "all checks passed" in result.stdout and result.stdout.count("ok    ") >= 12, result.stdout


def test_the_go_example_passes_every_step_against_the_cluster(cluster, go_toolchain) -> None:  # noqa: F811
    """The generated Go client (protoc-gen-go, grpc-go), unchanged, against the router's address."""
    result = subprocess.run(
        ["bash", str(GO_DIR / "run.sh"), cluster.target], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "all checks passed" in result.stdout and result.stdout.count("ok    ") >= 14, result.stdout


def test_a_killed_shard_replica_comes_back_with_every_acknowledged_write(cluster) -> None:
    import ray
    from mvr.client import Document, UnavailableError

    rng = np.random.default_rng(3)
    docs = [Document(f"kept-{i}", text=sentence(rng, 7)) for i in range(9)]
    cluster.upsert("docs", docs)
    replicas = [
        actor
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if "shard-1" in actor["name"] and "SERVE_REPLICA" in actor["name"]
    ]
    assert len(replicas) == 1, replicas
    ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True)
    deadline = time.monotonic() + 120
    # Serve holds a call to the dead replica until its new one is up (seen here: no call failed); one
    # that fails meanwhile must be UNAVAILABLE naming the shard, never another code
    while True:
        try:
            found = {d.id for d in cluster.list_documents("docs", page_size=50)}
            break
        except UnavailableError as error:
            assert "shard 1 of 3 (shard-001-of-003) did not answer" in str(error), error
            assert time.monotonic() < deadline, "the shard did not come back"
            time.sleep(1)
    assert {d.id for d in docs} <= found and len(found) == 909
    restarted = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "shard-1" in a["name"]]
    assert restarted and replicas[0]["name"] not in restarted  # a new replica, not the killed one


def test_mvr_cluster_serve_until_stopped(local_ray, tiny_model_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    import signal
    import subprocess
    import sys

    from mvr.client import Client, Document
    from mvr.cluster.ingest import ingest
    from mvr.server.encoder import EncoderCache

    rng = np.random.default_rng(7)
    texts = {f"s{i}": sentence(rng, 9) for i in range(10)}
    corpus = tmp_path / "small.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in texts.items()))
    ingest([corpus], tmp_path / "shards", "small", 2, model=str(tiny_model_dir))
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "mvr.client.cli",
        "cluster",
        "serve",
        "--shards-dir",
        str(tmp_path / "shards"),
        "--query-encoding",  # each shard encodes the text (the fixture's cluster encodes it once)
        "per-shard",
        "--request-timeout-s",
        "120",
        "--replicas",  # two copies of each shard: every write to both, reads in turn
        "2",
    ]
    process = subprocess.Popen(
        [*command, "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    added = {f"n{i}": sentence(rng, 8) for i in range(6)}
    try:
        with Client(f"127.0.0.1:{port}", timeout=60) as client:
            client.wait_until_serving(180)
            assert {d.id for d in client.list_documents("small")} == {f"s{i}" for i in range(10)}
            for _ in range(4):  # reads alternate between the copies: each must answer alike
                assert client.search("small", texts["s3"], top_k=1)[0].id == "s3"
            client.upsert("small", [Document(i, text=t) for i, t in added.items()])
            client.delete("small", ["s0", "n0"])
            for _ in range(4):
                kept = (set(texts) | set(added)) - {"s0", "n0"}
                assert {d.id for d in client.list_documents("small")} == kept
                assert client.search("small", added["n4"], top_k=1)[0].id == "n4"
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-3000:]
    assert "serving collection 'small' from 2 shards, 2 replica(s) each" in output

    from mvr.cluster.serving import replica_dir
    from mvr.cluster.sharding import read_layout
    from mvr.server.manager import CollectionManager
    from mvr.server.values import DocumentInput

    shards = tmp_path / "shards"
    layout = read_layout(shards)
    for shard in range(2):  # both copies hold exactly the same documents, vectors and all
        held = []
        for replica in range(2):
            manager = CollectionManager(
                replica_dir(shards, layout, shard, replica), encoder_loader=EncoderCache(1)
            )
            store = manager.get("small").store
            held.append({i: r.vectors().tobytes() for i, r in store.records.items()})
            manager.close()
        assert held[0] == held[1] and held[0], shard
    # a copy that missed a write (here: one written to the shard's directory alone) is refused
    manager = CollectionManager(layout.shard_dir(shards, 0), encoder_loader=EncoderCache(1))
    manager.get("small").upsert([DocumentInput("behind-its-copy", text=sentence(rng, 5))])
    manager.close()
    refused = subprocess.run(
        [*command, "--port", str(free_port())], capture_output=True, text=True, timeout=300
    )
    assert refused.returncode != 0 and "the copies of shard 0 differ" in refused.stderr, refused.stderr[
        -3000:
    ]


def test_the_shards_get_the_callers_time_or_else_the_clusters_request_timeout() -> None:
    """Ray Serve's gRPC context has no time_remaining: the shards then get the smaller of the timeout
    the client sent as metadata and the cluster's request timeout (the bound Serve's proxy enforces),
    or none when there is neither; a malformed header is INVALID_ARGUMENT naming it."""
    from mvr.client._convert import TIMEOUT_HEADER, call_metadata
    from mvr.cluster import serving

    assert serving.TIMEOUT_HEADER == TIMEOUT_HEADER  # the client sends what the router reads
    from mvr.cluster.serving import ClusterError, Router
    from mvr.cluster.sharding import Layout

    class WithDeadline:
        def time_remaining(self) -> float:
            return 2.5

    class Sent:  # what Ray Serve's context offers: the client's metadata, no deadline
        def __init__(self, *metadata: tuple[str, str]) -> None:
            self.metadata = metadata

        def invocation_metadata(self):
            return self.metadata

    layout = Layout("docs", 2, None, 8)
    assert Router(layout, [], request_timeout_s=30.0)._timeout(Sent()) == 30.0
    assert Router(layout, [], request_timeout_s=30.0)._timeout(WithDeadline()) == 2.5
    assert Router(layout, [])._timeout(Sent(("authorization", "Bearer x"))) is None
    # the Python client sends its timeout as metadata; the smaller bound wins
    sent = Sent(*call_metadata((), 4.25))
    assert Router(layout, [])._timeout(sent) == 4.25
    assert Router(layout, [], request_timeout_s=3.0)._timeout(sent) == 3.0
    for bad in ("soon", "0", "-5", "1.5"):
        with pytest.raises(ClusterError, match="mvr-timeout-ms") as refused:
            Router(layout, [])._timeout(Sent((TIMEOUT_HEADER, bad)))
        assert refused.value.code == "INVALID_ARGUMENT"
    with pytest.raises(ValueError, match="query_encoding"):
        Router(layout, [], query_encoding="twice")


def test_reads_take_a_shards_replicas_in_turn() -> None:
    from mvr.cluster.serving import Router
    from mvr.cluster.sharding import Layout

    router = Router(Layout("docs", 2, None, 8), [["a0", "a1", "a2"], ["b0"]])
    assert [router._next_replica(0) for _ in range(5)] == [0, 1, 2, 0, 1]
    assert [router._next_replica(1) for _ in range(2)] == [0, 0]
    assert (
        router._name(0, 1) == "shard-000-of-002, replica 1 of 3" and router._name(1, 0) == "shard-001-of-002"
    )
