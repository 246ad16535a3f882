"""Shared fixtures: a tiny random model on disk and a real mvr server on a loopback port.

The server fixture starts `mvr serve` in a subprocess exactly as a user would (console-script code
path, real SQLite files in a temporary data dir, the tiny model as its default) and waits for the
standard health check to say SERVING. It is shared by the whole session; tests use unique collection
names. At teardown it sends SIGTERM and checks the graceful exit code.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
# Extra checks on ../shared (this project's own machines only) are collected only where it is: a bare
# clone's suite neither runs nor skips them (its real-text end-to-end test is test_docs_e2e.py).
SHARED_PAPERS = REPO.parent / "shared" / "data" / "papers-dev.jsonl"
collect_ignore = [] if SHARED_PAPERS.exists() else ["test_papers_e2e.py"]
SERVER_MAX_MESSAGE_MB = 4


def free_port() -> int:
    """A port free now, drawn below the kernel's ephemeral range and above Ray's worker ports
    (10002-19999): a port the kernel hands out for ``bind(0)`` may meanwhile be taken by one of the
    many processes a local Ray starts (each binding port 0), and then Serve's gRPC proxy cannot bind
    it (seen in CI)."""
    low = _ephemeral_low() - 1
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(20000, low) if low > 20000 else 0
        try:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port))
                return sock.getsockname()[1]
        except OSError:
            continue
    raise RuntimeError("no free port found in 200 tries")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "server"), str(REPO / "client"), env.get("PYTHONPATH", "")]
    )
    env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("NUMBA_NUM_THREADS", "2")
    return env


def wait_serving(
    target: str,
    process: subprocess.Popen,
    timeout_s: float = 180.0,
    credentials: grpc.ChannelCredentials | None = None,
) -> None:
    """Polls grpc.health.v1 until SERVING (over TLS with ``credentials``); fails early if the process
    died."""
    deadline = time.monotonic() + timeout_s
    channel_of = (
        grpc.insecure_channel if credentials is None else lambda t: grpc.secure_channel(t, credentials)
    )
    with channel_of(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode} before serving")
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"server at {target} not SERVING after {timeout_s} s")


@dataclass
class RunningServer:
    target: str
    data_dir: Path
    model_dir: Path
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(
    data_dir: Path,
    model: str,
    log_path: Path,
    *extra: str,
    port: int | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> RunningServer:
    port = port or free_port()
    command = [
        sys.executable,
        "-c",
        "import sys; from mvr.client.cli import main; sys.exit(main())",
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--model",
        model,
        "--max-message-mb",
        str(SERVER_MAX_MESSAGE_MB),
        "--log-format",
        "json",
        *extra,
    ]
    log_file = log_path.open("ab")
    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=subprocess_env())
    server = RunningServer(f"127.0.0.1:{port}", data_dir, Path(model), process, log_path)
    try:
        wait_serving(server.target, process, credentials=credentials)
    except Exception:
        process.kill()
        raise RuntimeError(f"server did not start; its log:\n{server.log()}") from None
    return server


def stop_server(server: RunningServer, timeout_s: float = 60.0) -> int:
    """SIGTERM, then the exit code. A server still running after ``timeout_s`` is asked for its
    threads' stacks (SIGUSR1), killed, and the test fails with the end of its log, stacks included."""
    server.process.send_signal(signal.SIGTERM)
    try:
        return server.process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        server.process.send_signal(signal.SIGUSR1)
        time.sleep(2.0)
        server.process.kill()
        server.process.wait()
        pytest.fail(f"server still running {timeout_s} s after SIGTERM; its log:\n{server.log()[-12000:]}")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT (plain encoder format), saved with save_pretrained."""
    from tests.models import make_tiny_bert

    path = tmp_path_factory.mktemp("models") / "tiny-bert"
    make_tiny_bert(path)
    return path


@pytest.fixture(scope="session")
def mvr_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[RunningServer]:
    """A real `mvr serve` on a free loopback port, with the tiny model as its default model."""
    root = tmp_path_factory.mktemp("server")
    server = start_server(root / "data", str(tiny_model_dir), root / "server.log")
    yield server
    code = stop_server(server)
    assert code == 0, f"server exit code {code} after SIGTERM; log:\n{server.log()[-4000:]}"


@pytest.fixture
def channel(mvr_server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(mvr_server.target) as chan:
        yield chan


@pytest.fixture
def unique_name() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"
