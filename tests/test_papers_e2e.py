"""An extra check on ../shared (this project's own machines only; tests/conftest.py collects this module
only when the corpus is there, so a bare clone's suite neither runs nor skips it — its real-text
end-to-end test is tests/test_docs_e2e.py): `mvr serve` on the embedded default model, `mvr ingest` of
the papers corpus, then a search with a paper's title returns that paper first for most titles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mvr.client import Client, cli

from tests.conftest import SHARED_PAPERS, start_server, stop_server

PAPERS = SHARED_PAPERS


@pytest.mark.slow
def test_titles_find_their_papers_through_the_server(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", "default", tmp_path / "server.log")
    try:
        target = ["--target", server.target]
        command = ["ingest", str(PAPERS), "--collection", "papers", "--text-field", "abstract", "--quiet"]
        assert cli.main([*command, "--checkpoint", str(tmp_path / "ckpt"), *target]) == 0
        papers = [json.loads(line) for line in PAPERS.read_text().splitlines() if line.strip()]
        with Client(server.target, timeout=120) as mvr:
            assert mvr.get_collection("papers").stats.documents == len(papers)
            results = mvr.batch_search("papers", [p["title"] for p in papers], top_k=10)
        first = sum(hits[0].id == p["id"] for p, hits in zip(papers, results, strict=True))
        in_top_10 = sum(p["id"] in [h.id for h in hits] for p, hits in zip(papers, results, strict=True))
        # bench/quality_default_model.py measures 0.95 recall@1 for exact MaxSim with this model
        assert first / len(papers) >= 0.85, f"{first}/{len(papers)} titles found their paper first"
        assert in_top_10 / len(papers) >= 0.97
        titles = {p["id"]: p["title"] for p in papers}  # the other JSON fields came through as metadata
        assert all(hits[0].metadata["title"] == titles[hits[0].id] for hits in results)
    finally:
        assert stop_server(server) == 0
