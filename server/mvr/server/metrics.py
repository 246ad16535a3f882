"""Prometheus metrics and per-call access logs for the gRPC server.

Owns the ``mvr_rpc_*`` series: calls by method and status code, and latency histograms by method.
They are exposed over HTTP when `mvr serve --metrics-port` is set (prometheus-client's own server).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

log = logging.getLogger("mvr.rpc")

RPC_CALLS = Counter("mvr_rpc_calls", "gRPC calls finished, by method and status code", ["method", "code"])
RPC_LATENCY = Histogram(
    "mvr_rpc_latency_seconds",
    "gRPC call latency, by method",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def _code_of(context: grpc.ServicerContext, error: BaseException | None) -> str:
    code = context.code() if hasattr(context, "code") else None
    if code is None:
        return "OK" if error is None else "UNKNOWN"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts and times every unary call; streaming calls are counted when their stream ends."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(handler.stream_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    @staticmethod
    def _record(
        method: str, context: grpc.ServicerContext, started: float, error: BaseException | None
    ) -> None:
        elapsed = time.perf_counter() - started
        code = _code_of(context, error)
        RPC_CALLS.labels(method, code).inc()
        RPC_LATENCY.labels(method).observe(elapsed)
        log.debug("rpc", extra={"method": method, "code": code, "ms": round(elapsed * 1000, 3)})

    def _wrap_unary(self, behaviour: Callable[..., Any], method: str) -> Callable[..., Any]:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                return behaviour(request, context)
            except BaseException as caught:
                error = caught
                raise
            finally:
                self._record(method, context, started, error)

        return wrapped

    def _wrap_stream(self, behaviour: Callable[..., Any], method: str) -> Callable[..., Any]:
        def wrapped(request_iterator: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                yield from behaviour(request_iterator, context)
            except BaseException as caught:
                error = caught
                raise
            finally:
                self._record(method, context, started, error)

        return wrapped
