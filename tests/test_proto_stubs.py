"""The generated modules that ship in client/mvr/v1 must be exactly what scripts/gen_proto.sh makes
from proto/: a .proto edit without regenerating fails here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    subprocess.run(
        ["bash", str(REPO / "scripts" / "gen_proto.sh"), str(tmp_path)],
        check=True,
        cwd=REPO,
        env={**os.environ, "PYTHON": sys.executable},
    )
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "mvr" / "v1").glob("*.py*")}
    committed_dir = REPO / "client"
    committed = {
        p.relative_to(committed_dir): p.read_bytes()
        for p in (committed_dir / "mvr" / "v1").glob("*.py*")
        if p.name != "__init__.py"
    }
    assert sorted(fresh) == sorted(committed), "generated file set differs: run scripts/gen_proto.sh"
    stale = [str(name) for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated stubs {stale}: run scripts/gen_proto.sh and commit"
