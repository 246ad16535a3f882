"""Prometheus series of the engine (no gRPC here): where a search's time goes and how full the queues are.

Owns ``mvr_search_stage_seconds`` (one histogram per cascade stage: query encoding, graph, centroid
stages, exact scoring), ``mvr_indexing_backlog_documents`` (acknowledged documents waiting for a
collection's indexer), ``mvr_codec_drift_ratio`` (how far new documents lie from a collection's
centroids, against documents held out of its codec's training) and ``mvr_query_queue_depth`` (text
queries waiting for a model's encoder). The per-call ``mvr_rpc_*`` series live with the gRPC
interceptor in :mod:`mvr.server.metrics`; both are served on ``mvr serve --metrics-port``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from prometheus_client import Gauge, Histogram

SEARCH_STAGE_SECONDS = Histogram(
    "mvr_search_stage_seconds",
    "Time of one search stage: encode (text queries), graph (query FDE + HNSW + pending scan), "
    "centroids (probe + centroid interaction), exact (MaxSim over the candidates' tokens)",
    ["stage"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
INDEXING_BACKLOG = Gauge(
    "mvr_indexing_backlog_documents",
    "Acknowledged documents not yet in the collection's graph (bounded by max_indexing_backlog)",
    ["collection"],
)
CODEC_DRIFT = Gauge(
    "mvr_codec_drift_ratio",
    "Mean squared distance of newly written tokens to the collection's centroids (decayed) over that of "
    "documents held out of the codec's training; the indexer retrains the codec above DRIFT_RATIO "
    "(0: not measured yet)",
    ["collection"],
)
QUERY_QUEUE_DEPTH = Gauge(
    "mvr_query_queue_depth",
    "Text queries waiting for the query encoder of a model (bounded by max_queued_queries)",
    ["model"],
)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Times the enclosed block into ``mvr_search_stage_seconds{stage=name}``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        SEARCH_STAGE_SECONDS.labels(name).observe(time.perf_counter() - started)


def track_backlog(collection: str, backlog: Callable[[], int]) -> None:
    INDEXING_BACKLOG.labels(collection).set_function(backlog)


def track_drift(collection: str, ratio: Callable[[], float]) -> None:
    CODEC_DRIFT.labels(collection).set_function(ratio)


def forget_collection(collection: str) -> None:
    """Drops a closed or deleted collection's series (a later collection of that name starts anew)."""
    for gauge in (INDEXING_BACKLOG, CODEC_DRIFT):
        with suppress(KeyError):  # never tracked, or already forgotten
            gauge.remove(collection)


def track_query_queue(model: str, depth: Callable[[], int]) -> None:
    QUERY_QUEUE_DEPTH.labels(model).set_function(depth)
