"""The server process: configuration, start-up, health, reflection, metrics and graceful shutdown.

Owns the lifecycle. Start-up order: the gRPC port opens first with health NOT_SERVING (so orchestrators
can tell "loading" from "dead"), then the default model and every collection are loaded, then health
turns SERVING. On SIGTERM or SIGINT: health NOT_SERVING, stop accepting calls, let calls in flight
finish (up to ``grace_s``), save every collection's HNSW graph as it is (documents acknowledged but
not yet in the graph are replayed from the store on the next start: shutdown never waits for a
backlog), exit 0; the log's "stopped" line says how long the calls and the collections took. SIGUSR1
writes every thread's stack to stderr and the server runs on (what a stuck start-up or shutdown is
doing).

Concurrency model: a synchronous ``grpc.server`` over a thread pool. The heavy work of a call (torch
inference, Numba kernels, BLAS, hnswlib) releases the GIL, so threads run it in parallel; text queries
from concurrent calls are batched into one forward pass by the query batcher. An asyncio server would
only help with many thousands of idle connections, which is not this service's load.
"""

from __future__ import annotations

import faulthandler
import ipaddress
import json
import logging
import os
import signal
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from mvr.server import auth, service
from mvr.server.fde import available_cpus
from mvr.server.limits import Limits

log = logging.getLogger("mvr.server")


@dataclass(frozen=True)
class ServerConfig:
    """Everything `mvr serve` can set (flags, with MVR_* environment twins)."""

    host: str = "127.0.0.1"
    port: int = 50051
    data_dir: Path = field(default_factory=lambda: Path("mvr-data"))
    model: str = "default"  # loaded at start, used by Encode without a collection; "none": no model
    workers: int = 8
    max_message_mb: int = 64
    query_threads: int = 1
    query_max_batch: int = 32  # text queries encoded together at most
    query_max_wait_ms: float = 2.0  # how long the first query of a batch waits for company
    index_threads: int = 1
    fde_threads: int = 0  # threads per FDE batch; 0: every CPU this process may use
    log_format: str = "json"
    log_level: str = "INFO"
    grace_s: float = 30.0
    metrics_port: int = 0  # 0: no Prometheus endpoint
    tls_cert: Path | None = None  # PEM certificate chain: serve TLS (with tls_key)
    tls_key: Path | None = None  # PEM private key of tls_cert
    tls_client_ca: Path | None = None  # PEM CA: require client certificates signed by it (mutual TLS)
    api_keys_file: Path | None = None  # 'KEY ROLE' lines: every call but health needs a key (auth.py)
    limits: Limits = field(default_factory=Limits)  # per-request limits (limits.py)

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key (client certificates need TLS)")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any `extra=` fields."""

    _STANDARD: frozenset[str] = frozenset(vars(logging.makeLogRecord({})))

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(
            {k: v for k, v in vars(record).items() if k not in self._STANDARD and not k.startswith("_")}
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(log_format: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class Server:
    """A running mvr server: build it, :meth:`start` it, :meth:`load` the engine, :meth:`stop` it."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.engine = service.Engine(config.limits)
        self.health = health.HealthServicer()
        max_bytes = config.max_message_mb * 1024 * 1024
        interceptors: list[grpc.ServerInterceptor] = [_metrics_interceptor()]  # outermost: counts refusals
        if config.api_keys_file is not None:
            interceptors.append(auth.AuthInterceptor(auth.ApiKeys.load(config.api_keys_file)))
        self.grpc_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="rpc"),
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", max_bytes),
                ("grpc.max_send_message_length", max_bytes),
                ("grpc.so_reuseport", 0),
            ],
            # Past this many calls in flight or queued, new calls get RESOURCE_EXHAUSTED at once
            # instead of waiting behind a queue that cannot drain in time.
            maximum_concurrent_rpcs=config.workers * 8,
        )
        service.register(self.grpc_server, self.engine)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        reflection.enable_server_reflection(
            (
                *service.SERVICE_NAMES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self.grpc_server,
        )
        address = f"{config.host}:{config.port}"
        if config.tls_cert is not None and config.tls_key is not None:
            credentials = auth.server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
            self.port = self.grpc_server.add_secure_port(address, credentials)
        else:
            self.port = self.grpc_server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        if not _is_loopback(config.host) and (config.tls_cert is None or config.api_keys_file is None):
            log.warning(
                "listening beyond this machine without TLS or without API keys",
                extra={
                    "address": address,
                    "tls": config.tls_cert is not None,
                    "api_keys": config.api_keys_file is not None,
                },
            )
        self.manager = None
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    def _set_health(self, status: int) -> None:
        for name in ("", *service.SERVICE_NAMES):
            self.health.set(name, status)

    def start(self) -> None:
        self.grpc_server.start()
        log.info(
            "listening",
            extra={
                "address": f"{self.config.host}:{self.port}",
                "tls": self.config.tls_cert is not None,
                "mutual_tls": self.config.tls_client_ca is not None,
                "api_keys": self.config.api_keys_file is not None,
            },
        )

    def load(self) -> None:
        """Loads the default model and every collection, then reports SERVING."""
        from mvr.server.encoder import EncoderCache
        from mvr.server.manager import CollectionManager

        started = time.perf_counter()
        load_encoder = EncoderCache()

        default_encoder = None if self.config.model == "none" else load_encoder(self.config.model)
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        self.manager = CollectionManager(
            self.config.data_dir,
            encoder_loader=load_encoder,
            index_threads=self.config.index_threads,
            fde_threads=self.config.fde_threads or available_cpus(),
            query_threads=self.config.query_threads,
            query_max_batch=self.config.query_max_batch,
            query_max_wait_ms=self.config.query_max_wait_ms,
            limits=self.config.limits,
        )
        self.engine.ready(self.manager, default_encoder)
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving",
            extra={
                "model": self.config.model,
                "collections": len(self.manager.list()),
                "load_seconds": round(time.perf_counter() - started, 3),
            },
        )

    def stop(self) -> None:
        """Graceful: NOT_SERVING, no new calls, in-flight calls finish, graphs saved. Logs how long each
        step took, so that a slow shutdown says which step it was."""
        log.info("shutting down", extra={"grace_s": self.config.grace_s})
        started = time.perf_counter()
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.grpc_server.stop(self.config.grace_s).wait()
        self.engine.drain()
        calls_s = time.perf_counter() - started
        if self.manager is not None:
            self.manager.close()
        log.info(
            "stopped",
            extra={
                "calls_finished_s": round(calls_s, 3),
                "collections_closed_s": round(time.perf_counter() - started - calls_s, 3),
            },
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _metrics_interceptor() -> grpc.ServerInterceptor:
    from mvr.server.metrics import MetricsInterceptor

    return MetricsInterceptor()


def limit_blas_threads() -> None:
    """One BLAS thread per call: the server parallelises across requests, and OpenBLAS's idle workers
    spin on the cores that torch, Numba and other requests need (measured: a 32-token query's FDE took
    4 ms instead of 0.03 ms behind a spinning worker; search went from 40 to 100 queries/s)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


STOP_POLL_S = 0.25  # how often the main thread checks for a stop request a signal handler has not run yet


def run(config: ServerConfig) -> int:
    """Runs the server until SIGTERM or SIGINT; returns the process exit code."""
    configure_logging(config.log_format, config.log_level)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    limit_blas_threads()
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("signal received", extra={"signal": signal.Signals(signum).name})
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 <pid>`: every thread's stack to stderr, the server runs on
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        server = Server(config)
    except (OSError, ValueError) as error:  # a port taken, a certificate or keys file unreadable or malformed
        log.error("cannot start: %s", error)
        return 2
    if config.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(config.metrics_port, addr=config.host)
    server.start()
    try:
        server.load()
    except Exception:
        log.exception("loading failed")
        server.grpc_server.stop(0)
        return 1
    # Wake up now and then rather than block for good: the kernel may deliver SIGTERM to any thread
    # (gRPC's, the indexer's); CPython then only flags it, and runs the handler when the main thread
    # next executes bytecode, which a wait without timeout never does (a server once ignored SIGTERM
    # this way under load, tests/test_server_lifecycle.py reproduces it by signalling another thread).
    while not stop_requested.wait(timeout=STOP_POLL_S):
        pass
    server.stop()
    return 0
