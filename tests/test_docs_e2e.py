"""The quick start on a bare clone: the corpus built from the repository's own documentation, ingested
through `mvr ingest` into a real `mvr serve` on the embedded default model, and the example questions
find the passages that answer them. Runs on a copy of the repository's files with nothing beside it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mvr.client import Client, cli

from tests.conftest import REPO, start_server, stop_server, subprocess_env

SHIPPED = [
    "README.md",
    "BENCHMARKS.md",
    "docs",
    "proto",
    "clients/node/README.md",
    "scripts/sample_corpus.py",
]


def bare_copy(root: Path) -> Path:
    """The files the corpus is built from, in a directory with no ../shared beside it."""
    copy = root / "clone" / "mvr"
    for name in SHIPPED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, copy / name)
        elif source.exists():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    assert not (copy.parent / "shared").exists()
    return copy


def test_the_corpus_splits_the_docs_into_titled_passages(tmp_path: Path) -> None:
    copy = bare_copy(tmp_path)
    out = tmp_path / "passages.jsonl"
    subprocess.run([sys.executable, str(copy / "scripts/sample_corpus.py"), "--out", str(out)], check=True)
    passages = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(passages) > 100
    assert len({p["id"] for p in passages}) == len(passages)
    assert all(8 <= len(p["text"].split()) <= 200 and p["title"] and p["source"] for p in passages)
    sources = {p["source"].split("#")[0] for p in passages}
    assert {"README.md", "BENCHMARKS.md", "proto/mvr/v1/document_service.proto"} <= sources
    delete = next(p for p in passages if p["id"].endswith("#DocumentService.DeleteDocuments"))
    assert "rpc DeleteDocuments" in delete["text"]


def test_every_benchmark_question_points_at_sections_that_exist(tmp_path: Path) -> None:
    """bench/hybrid.py's labels name sections by heading: a renamed heading must not orphan one."""
    copy = bare_copy(tmp_path)
    out = tmp_path / "passages.jsonl"
    subprocess.run([sys.executable, str(copy / "scripts/sample_corpus.py"), "--out", str(out)], check=True)
    sources = {json.loads(line)["source"] for line in out.read_text().splitlines()}
    questions = json.loads((REPO / "bench/docs_questions.json").read_text())["questions"]
    assert len(questions) >= 20
    for question in questions:
        missing = [label for label in question["relevant"] if label not in sources]
        assert question["relevant"] and not missing, (question["q"], missing)


@pytest.mark.slow
def test_quick_start_questions_find_their_passages_on_a_bare_clone(tmp_path: Path) -> None:
    copy = bare_copy(tmp_path)
    corpus = tmp_path / "passages.jsonl"
    subprocess.run([sys.executable, str(copy / "scripts/sample_corpus.py"), "--out", str(corpus)], check=True)
    server = start_server(tmp_path / "data", "default", tmp_path / "server.log")
    try:
        command = ["ingest", str(corpus), "--collection", "docs", "--text-field", "text", "--quiet"]
        assert cli.main([*command, "--checkpoint", str(tmp_path / "ckpt"), "--target", server.target]) == 0
        sys.path.insert(0, str(copy / "scripts"))
        try:
            import sample_corpus
        finally:
            sys.path.remove(str(copy / "scripts"))
        with Client(server.target, timeout=120) as mvr:
            assert mvr.get_collection("docs").stats.documents == len(corpus.read_text().splitlines())
            for question, expected in sample_corpus.EXAMPLE_QUERIES:
                titles = [hit.metadata["title"] for hit in mvr.search("docs", question, top_k=3)]
                assert any(expected in title for title in titles), (question, titles)
        shown = subprocess.run(
            [
                sys.executable,
                str(copy / "scripts/sample_corpus.py"),
                "--search",
                "docs",
                "--target",
                server.target,
            ],
            capture_output=True,
            text=True,
            env=subprocess_env(),
            check=True,
            timeout=300,
        ).stdout
        assert shown.count("\n  1. ") == len(sample_corpus.EXAMPLE_QUERIES)
        assert "DeleteDocuments" in shown
    finally:
        assert stop_server(server) == 0
