"""Bulk ingest on Ray Data into shards (issue 16, part 1), on a local Ray that listens on 127.0.0.1 only:
every document lands once, in the shard its id hashes to, with its typed metadata and the vectors the
model gives its text; refused records are counted and named; a re-run writes only what changed; a shard
is a data directory `mvr serve` opens and searches; a manifest of another layout is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import start_server, stop_server
from tests.models import WORDS

pytestmark = pytest.mark.ray

SHARDS = 3


def test_shard_of_is_stable_and_spread() -> None:
    """Golden values: a change of hash would send existing ids to other shards."""
    from mvr.cluster.sharding import shard_of, shards_of

    assert [shard_of(i, 3) for i in ("a", "doc-1", "doc-2", "ü", "")] == [2, 1, 2, 0, 0]
    assert shard_of("doc-1", 1024) == 86
    counts = np.bincount(shards_of([f"d{i}" for i in range(3000)], 3), minlength=3)
    assert counts.min() > 900, counts


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="the `ray` extra: bash scripts/install.sh dev ray")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level="ERROR",
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


def sentence(rng: np.random.Generator, n: int) -> str:
    return " ".join(WORDS[i] for i in rng.integers(len(WORDS), size=n))


def write_corpus(directory: Path) -> tuple[list[Path], dict[str, dict]]:
    """60 JSONL records (one not JSON, one without an id, one with an empty text), 20 in Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    expected: dict[str, dict] = {}
    lines = []
    for i in range(57):
        record = {"id": f"j{i}", "text": sentence(rng, 5 + i % 20), "year": 2000 + i % 7}
        if i % 3 == 0:
            record["tags"] = ["x", f"t{i % 4}"]
        if i % 5 == 0:
            record["extra"] = {"nested": i}  # not a metadata type: kept as its JSON text
        lines.append(json.dumps(record))
        expected[record["id"]] = record
    lines += ["{not json", json.dumps({"text": "no id here"}), json.dumps({"id": "empty", "text": "  "})]
    jsonl = directory / "part-1.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    rows = [{"id": f"p{i}", "text": sentence(rng, 8), "score": i / 4, "open": i % 2 == 0} for i in range(20)]
    expected |= {row["id"]: row for row in rows}
    parquet = directory / "part-2.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    return [jsonl, parquet], expected


def metadata_of(record: dict) -> dict:
    return {
        k: tuple(v) if isinstance(v, list) else json.dumps(v) if isinstance(v, dict) else v
        for k, v in record.items()
        if k not in ("id", "text")
    }


def test_ingest_shards_every_document_once(local_ray, tiny_model_dir: Path, tmp_path: Path) -> None:
    from mvr.cluster.ingest import ingest
    from mvr.cluster.sharding import ManifestMismatch, read_layout, shard_of
    from mvr.server.encoder import Encoder, EncoderCache
    from mvr.server.manager import CollectionManager

    files, expected = write_corpus(tmp_path)
    out = tmp_path / "shards"
    model = str(tiny_model_dir)
    report = ingest(files, out, "docs", SHARDS, model=model, actors=1, batch_size=16)
    assert (report.written, report.unchanged, report.invalid) == (len(expected), 0, 3)
    assert any("not JSON" in e for e in report.errors)
    assert any("'id' missing" in e for e in report.errors)
    assert any("'text' missing, empty" in e for e in report.errors)
    assert sum(report.documents_per_shard) == len(expected) and min(report.documents_per_shard) > 0

    layout = read_layout(out)
    encoder = Encoder.load(model)
    seen: set[str] = set()
    for shard in range(SHARDS):
        manager = CollectionManager(layout.shard_dir(out, shard), encoder_loader=EncoderCache(1))
        try:
            collection = manager.get("docs")
            ids = set(collection.store.records)
            assert all(shard_of(i, SHARDS) == shard for i in ids) and not ids & seen
            seen |= ids
            for doc_id in sorted(ids)[:8]:
                stored = collection.get(doc_id)
                assert stored.text == expected[doc_id]["text"]
                assert stored.metadata == metadata_of(expected[doc_id])
                vectors = encoder.encode_documents([stored.text])[0].vectors
                np.testing.assert_allclose(stored.vectors, vectors, atol=2e-3)  # float16 storage
        finally:
            manager.close()
    assert seen == set(expected)

    # a re-run writes nothing; a changed text and a new document are the only writes
    again = ingest(files, out, "docs", SHARDS, model=model, actors=1, batch_size=16)
    assert (again.written, again.unchanged, again.invalid) == (0, len(expected), 3)
    changed = tmp_path / "changes.jsonl"
    record = dict(expected["j4"], text="the cat sat on the mat")
    changed.write_text(json.dumps(record) + "\n" + json.dumps({"id": "new", "text": "a new cat"}) + "\n")
    delta = ingest([changed], out, "docs", SHARDS, model=model, actors=1, batch_size=16)
    assert (delta.written, delta.unchanged) == (2, 0)
    assert sum(delta.documents_per_shard) == len(expected) + 1

    with pytest.raises(ManifestMismatch, match="shards is 3 there, 2 here"):
        ingest(files, out, "docs", 2, model=model)

    # a shard is an mvr data directory: the server opens it and answers from it
    shard = shard_of("j4", SHARDS)
    server = start_server(layout.shard_dir(out, shard), model, tmp_path / "serve.log")
    try:
        from mvr.client import Client

        with Client(server.target) as client:
            hits = client.search("docs", "the cat sat on the mat", top_k=3)
            assert hits and hits[0].id == "j4"
    finally:
        stop_server(server)


def test_the_cli_ingests_on_a_local_ray_it_starts(tiny_model_dir: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    pytest.importorskip("ray", reason="the `ray` extra: bash scripts/install.sh dev ray")
    data = tmp_path / "docs.jsonl"
    data.write_text(
        "".join(json.dumps({"id": f"c{i}", "text": f"the cat {i} sat"}) + "\n" for i in range(12))
    )
    command = [sys.executable, "-m", "mvr.client.cli", "cluster", "ingest", str(data), "--collection", "c"]
    command += ["--shards", "2", "--out", str(tmp_path / "shards"), "--model", str(tiny_model_dir)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "written 12, unchanged 0, refused 0" in done.stdout
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [
        "cluster.json",
        "shard-000-of-002",
        "shard-001-of-002",
    ]
    wrong = [*command[:-4], "--out", str(tmp_path / "other"), "--model", str(tmp_path / "no-such-model")]
    refused = subprocess.run(wrong, capture_output=True, text=True, timeout=240)
    assert refused.returncode != 0 and "--model: model directory" in refused.stderr, refused.stderr[-2000:]
    assert not (tmp_path / "other" / "cluster.json").exists()
