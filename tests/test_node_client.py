"""The Node.js client (clients/node, @grpc/grpc-js + proto-loader reading proto/ directly) runs its
documented example against the real server; it fails when the wire contract breaks for other
languages (field names, packing, enums, error codes)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import REPO

NODE_DIR = REPO / "clients" / "node"


@pytest.fixture(scope="module")
def node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH: the Node.js client cannot be exercised on this machine")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").exists():
        npm = shutil.which("npm")
        assert npm, "node is installed but npm is not: cannot install clients/node dependencies"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=300)
    return node


def test_node_example_passes_every_step(node: str, mvr_server) -> None:
    result = subprocess.run(
        [node, str(NODE_DIR / "example.js"), mvr_server.target, "--model", str(mvr_server.model_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "all steps passed" in result.stdout
    assert result.stdout.count("ok ") >= 7


def test_node_example_fails_when_the_server_is_unreachable(node: str) -> None:
    from tests.conftest import free_port

    result = subprocess.run(
        [node, str(NODE_DIR / "example.js"), f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "FAILED" in result.stderr
