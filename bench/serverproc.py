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
def server_process(*flags: str, env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """Yields the target ("127.0.0.1:PORT") and the process of a server started with ``flags`` (e.g.
    --model none); SIGTERM and a wait at the end."""
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
            yield f"127.0.0.1:{port}", server
        finally:
            server.terminate()
            server.wait(120)


@contextlib.contextmanager
def running_server(*flags: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """Yields the target ("127.0.0.1:PORT") of a server started with ``flags`` (e.g. --model none)."""
    with server_process(*flags, env=env) as (target, _):
        yield target


def memory_kib(pid: int) -> dict[str, int]:
    """Resident memory of a process, KiB: now (VmRSS; of it, RssAnon — heap, arrays — and RssFile —
    mapped files, the code and vector files included) and at its peak so far (VmHWM)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[name] = int(value.split()[0])
    return fields
