"""The Python client and the CLI against a real server (the `mvr_server` fixture)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from mvr.client import (
    AlreadyExistsError,
    AsyncClient,
    Client,
    Document,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
    cli,
)

from tests.conftest import free_port


def unit_rows(seed: int, n: int, dim: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_client_round_trip_with_vectors(mvr_server, unique_name: str) -> None:
    with Client(mvr_server.target, api_key="ignored-by-server", timeout=60) as mvr:
        assert mvr.health() == "SERVING"
        info = mvr.create_collection(unique_name, model=None, dim=8, repetitions=4, k_sim=2, d_proj=8)
        assert (info.name, info.dim, info.model) == (unique_name, 8, None)
        assert info.fde.output_dim == 4 * 4 * 8
        with pytest.raises(AlreadyExistsError):
            mvr.create_collection(unique_name, model=None, dim=8)
        docs = [
            Document(f"d{i}", vectors=unit_rows(i, 3 + i % 4, 8), metadata={"i": str(i)}) for i in range(30)
        ]
        results = mvr.upsert(unique_name, docs, batch_size=7)
        assert [r.id for r in results] == [d.id for d in docs] and all(r.created for r in results)
        assert mvr.upsert(unique_name, docs[:1])[0].created is False

        hits = mvr.search(unique_name, docs[5].vectors, top_k=3, explain=True)
        assert hits[0].id == "d5" and hits[0].score == pytest.approx(docs[5].vectors.shape[0], abs=1e-2)
        assert len(hits[0].explanation) == docs[5].vectors.shape[0]
        filtered = mvr.search(unique_name, docs[5].vectors, top_k=3, filter={"i": "9"})
        assert [h.id for h in filtered] == ["d9"]
        batches = mvr.batch_search(unique_name, [docs[1].vectors, docs[2].vectors], top_k=1)
        assert [[h.id for h in b] for b in batches] == [["d1"], ["d2"]]

        stored = mvr.get(unique_name, "d3", include_vectors=True)
        np.testing.assert_allclose(stored.vectors, docs[3].vectors, atol=1e-3)
        assert [d.id for d in mvr.list_documents(unique_name, page_size=4)] == sorted(d.id for d in docs)
        assert mvr.delete(unique_name, ["d0", "zz"]).not_found == ["zz"]
        with pytest.raises(NotFoundError):
            mvr.get(unique_name, "d0")
        with pytest.raises(FailedPreconditionError):
            mvr.search(unique_name, unit_rows(0, 2, 9))
        with pytest.raises(InvalidArgumentError) as caught:
            mvr.search(unique_name, docs[1].vectors, top_k=5000)
        assert caught.value.field_violations[0].field == "top_k"
        assert unique_name in [c.name for c in mvr.list_collections()]
        assert mvr.get_collection(unique_name).stats.documents == 29
        acks = list(mvr.upsert_stream(unique_name, [docs[:2], [Document("bad", vectors=np.ones((1, 3)))]]))
        assert [a.ok for a in acks] == [True, False]
        mvr.delete_collection(unique_name)
        with pytest.raises(NotFoundError):
            mvr.get_collection(unique_name)


def test_client_text_and_encode(mvr_server, unique_name: str) -> None:
    with Client(mvr_server.target, timeout=60) as mvr:
        mvr.create_collection(unique_name, model=str(mvr_server.model_dir))
        mvr.upsert(
            unique_name,
            [Document("a", text="the cat sat on the mat"), Document("b", text="stock prices fell")],
        )
        assert mvr.search(unique_name, "stock prices fell", top_k=1)[0].id == "b"
        vectors = mvr.encode(["stock prices"], kind="document", collection=unique_name)
        assert vectors[0].dtype == np.float32 and vectors[0].ndim == 2
        np.testing.assert_allclose(np.linalg.norm(vectors[0], axis=1), 1.0, atol=1e-5)
        with pytest.raises(ValueError, match="kind"):
            mvr.encode(["x"], kind="passage")


def test_async_client(mvr_server, unique_name: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(mvr_server.target, timeout=60) as mvr:
            assert await mvr.health() == "SERVING"
            await mvr.create_collection(unique_name, model=None, dim=4)
            docs = [Document(f"d{i}", vectors=unit_rows(i, 2, 4)) for i in range(5)]
            await mvr.upsert(unique_name, docs)
            hits = await mvr.search(unique_name, docs[2].vectors, top_k=2)
            assert hits[0].id == "d2"
            ids = [d.id async for d in mvr.list_documents(unique_name, page_size=2)]
            assert ids == [d.id for d in docs]
            acks = [a async for a in mvr.upsert_stream(unique_name, [docs[:2]])]
            assert acks[0].ok
            with pytest.raises(NotFoundError):
                await mvr.get(unique_name, "nope")
            await mvr.delete_collection(unique_name)

    asyncio.run(scenario())


def test_unreachable_server_raises_unavailable_after_retries() -> None:
    with Client(f"127.0.0.1:{free_port()}", timeout=5) as mvr, pytest.raises(UnavailableError):
        mvr.list_collections()


def test_cli_ingest_resumes_and_search_prints_hits(
    mvr_server,
    unique_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # the default checkpoint lives in ./.mvr-ingest/
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda"]
    lines = [
        json.dumps({"id": f"p{i}", "body": f"{words[i]} {words[i]} {words[(i + 1) % 11]}", "title": f"T{i}"})
        for i in range(10)
    ]
    data = tmp_path / "docs.jsonl"
    data.write_text("\n".join(lines[:6]) + "\n")
    target = ["--target", mvr_server.target]
    model = ["--model", str(mvr_server.model_dir)]
    base = [
        "ingest",
        str(data),
        "--collection",
        unique_name,
        "--text-field",
        "body",
        "--batch-size",
        "4",
        "--quiet",
    ]
    assert cli.main([*base, *target, *model]) == 0
    checkpoint = tmp_path / ".mvr-ingest" / f"docs.jsonl.{unique_name}.json"
    assert json.loads(checkpoint.read_text())["offset"] == data.stat().st_size
    # the file grows; a second run resumes after the acknowledged offset and sends only the new lines
    with data.open("a") as handle:
        handle.write("\n".join(lines[6:]) + "\n{broken\n")
    assert cli.main([*base, *target, *model]) == 1  # the broken line is reported, the rest stored
    assert "line 11" in capsys.readouterr().err
    with Client(mvr_server.target) as mvr:
        assert sorted(d.id for d in mvr.list_documents(unique_name)) == sorted(f"p{i}" for i in range(10))
        assert mvr.get(unique_name, "p3").metadata == {"title": "T3"}
    assert cli.main(["search", unique_name, "delta delta epsilon", "-k", "3", "--json", *target]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["id"] == "p3"
    assert cli.main(["collections", "get", "nope-missing", *target]) == 1
    assert "error: NOT_FOUND" in capsys.readouterr().err
