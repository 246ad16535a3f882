"""The TypeScript client generated from proto/mvr/v1 (clients/ts, protoc + ts-proto with grpc-js
services): the checked-in generated files are exactly what the tool chain makes of the current proto
(a drift check), the example type-checks under `tsc --strict` and passes every step against a real
server. scripts/test.sh installs protoc (Debian: protobuf-compiler, as root) and runs `npm ci` in
clients/ts; elsewhere these tests skip and name what is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

TS_DIR = REPO / "clients" / "ts"


@pytest.fixture(scope="module")
def node() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not both on PATH: the TypeScript client cannot be built here")
    if not (TS_DIR / "node_modules" / ".bin" / "tsc").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=TS_DIR, check=True, timeout=600)
    return node


def test_generated_typescript_matches_the_proto(node: str, tmp_path: Path) -> None:
    if shutil.which("protoc") is None:
        pytest.skip("protoc is not on PATH (Debian package protobuf-compiler)")
    env = {**os.environ, "PYTHON": sys.executable}  # whose googleapis-common-protos has google/rpc/*.proto
    subprocess.run(["bash", str(TS_DIR / "generate.sh"), str(tmp_path)], check=True, timeout=300, env=env)
    generated = TS_DIR / "src" / "gen"
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in sorted(tmp_path.rglob("*.ts"))}
    committed = {p.relative_to(generated): p.read_bytes() for p in sorted(generated.rglob("*.ts"))}
    assert fresh.keys() == committed.keys()
    stale = [str(name) for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"clients/ts/src/gen is stale ({stale}): run bash clients/ts/generate.sh and commit"


def test_typescript_example_type_checks_and_passes_every_step(node: str, mvr_server) -> None:
    tsc = subprocess.run(
        [str(TS_DIR / "node_modules" / ".bin" / "tsc"), "-p", str(TS_DIR)], capture_output=True, text=True
    )
    assert tsc.returncode == 0, f"tsc --strict:\n{tsc.stdout}{tsc.stderr}"
    result = subprocess.run(
        [node, str(TS_DIR / "dist" / "example.js"), mvr_server.target],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "all checks passed" in result.stdout and "\nFAIL  " not in "\n" + result.stdout
    assert result.stdout.count("ok    ") >= 12
