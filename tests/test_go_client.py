"""The Go client generated from proto/mvr/v1 (clients/go): the checked-in generated files are exactly
what protoc, protoc-gen-go and protoc-gen-go-grpc make of the current proto (a drift check), and the
example program, built against Debian's gRPC and protobuf packages, passes every step against a real
server. scripts/test.sh installs the packages where it runs as root; elsewhere these tests skip and
name what is missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

GO_DIR = REPO / "clients" / "go"
GOCODE = Path("/usr/share/gocode/src")
NEEDED = {  # what must be present → the Debian package that provides it
    "go": "golang-go",
    "protoc": "protobuf-compiler",
    "protoc-gen-go-grpc": "protoc-gen-go-grpc",
    str(GOCODE / "google.golang.org/protobuf/cmd/protoc-gen-go"): "golang-google-protobuf-dev",
    str(GOCODE / "google.golang.org/grpc/status"): "golang-google-grpc-dev",
    # grpc-go's codec goes through github.com/golang/protobuf; its 1.3 package cannot read the messages
    # protoc-gen-go makes (registry.go came with 1.4)
    str(GOCODE / "github.com/golang/protobuf/proto/registry.go"): "golang-github-golang-protobuf-1-5-dev",
}


@pytest.fixture(scope="module")
def go_toolchain() -> None:
    missing = [package for need, package in NEEDED.items() if not (shutil.which(need) or Path(need).exists())]
    if missing:
        pytest.skip(f"the Go client needs the Debian packages {', '.join(sorted(set(missing)))}")


def test_generated_go_files_match_the_proto(go_toolchain, tmp_path: Path) -> None:
    subprocess.run(["bash", str(GO_DIR / "generate.sh"), str(tmp_path)], check=True, timeout=600)
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in sorted(tmp_path.rglob("*.go"))}
    committed = {
        p.relative_to(GO_DIR / "gen"): p.read_bytes() for p in sorted((GO_DIR / "gen").rglob("*.go"))
    }
    assert fresh.keys() == committed.keys()
    stale = [str(name) for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"clients/go/gen is stale ({stale}): run bash clients/go/generate.sh and commit"


def test_go_example_passes_every_step(go_toolchain, mvr_server) -> None:
    result = subprocess.run(
        ["bash", str(GO_DIR / "run.sh"), mvr_server.target], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "all checks passed" in result.stdout and "\nFAIL  " not in "\n" + result.stdout
    assert result.stdout.count("ok    ") >= 14
