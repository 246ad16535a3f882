"""A real `mvr serve` in a subprocess for the benchmarks: a free loopback port, a throwaway data dir,
and SIGTERM at the end (the same code path a user runs)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(*flags: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """Yields the target ("127.0.0.1:PORT") of a server started with ``flags`` (e.g. --model none)."""
    port = free_port()
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "server"), str(ROOT / "client")]),
        "HF_HUB_OFFLINE": "1",
        **(env or {}),
    }
    command = [sys.executable, "-c", "import sys; from mvr.client.cli import main; sys.exit(main())", "serve"]
    with tempfile.TemporaryDirectory() as data_dir:
        server = subprocess.Popen(
            [*command, "--port", str(port), "--data-dir", data_dir, "--log-level", "WARNING", *flags],
            env=environment,
        )
        try:
            yield f"127.0.0.1:{port}"
        finally:
            server.terminate()
            server.wait(120)
