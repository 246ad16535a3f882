"""Dynamic batching of query encoding: concurrent searches with text queries share forward passes.

Owns the query-encoding thread. Callers block in :meth:`QueryBatcher.submit`; one worker thread takes
whatever queries arrived within ``max_wait_ms`` of the first (at most ``max_batch``) and encodes them
in one call, so throughput grows with concurrency while a lone query waits at most ``max_wait_ms``.

The worker sets its own torch thread budget (``threads``, default 1): with OpenMP, the setting is per
calling thread, so latency-critical query encoding is not stuck waiting for a core that a document
batch (or another request) is using.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from mvr.server.encoder import EncodedText
from mvr.server.errors import InvalidArgument, ResourceExhausted, Unavailable

EncodeFn = Callable[[Sequence[str]], list[EncodedText]]
RETRY_QUERY_S = 0.1  # a full queue of 32-query batches drains in a few forward passes


class QueryBatcher:
    def __init__(
        self,
        encode_fn: EncodeFn,
        max_batch: int = 32,
        max_wait_ms: float = 2.0,
        threads: int | None = 1,
        max_queued: int = 1024,
    ) -> None:
        self._encode = encode_fn
        self._max_queued = max_queued
        self._max_batch = max_batch
        self._max_wait_s = max_wait_ms / 1000
        self._threads = threads
        self._queue: queue.Queue[tuple[str, Future] | None] = queue.Queue()
        self._closed = False
        self.batches = 0  # forward passes run (for tests and metrics)
        self._worker = threading.Thread(target=self._run, name="query-batcher", daemon=True)
        self._worker.start()

    def queue_depth(self) -> int:
        """Text queries waiting for the worker (not counting the batch being encoded)."""
        return self._queue.qsize()

    def submit(self, text: str) -> EncodedText:
        """Encodes one query, batched with concurrent ones; blocks until done."""
        if not isinstance(text, str) or not text.strip():
            raise InvalidArgument("query.text", "must not be empty or only whitespace")
        if self._closed:
            raise Unavailable("the query encoder is shutting down")
        waiting = self._queue.qsize()
        if waiting >= self._max_queued:  # unbounded waiting would only turn into timeouts
            raise ResourceExhausted(
                f"query.text: {waiting} text queries are waiting for the query encoder; the limit is "
                f"{self._max_queued} (max_queued_queries): retry shortly",
                retry_after_s=RETRY_QUERY_S,
            )
        future: Future = Future()
        self._queue.put((text, future))
        return future.result()

    def _run(self) -> None:
        if self._threads is not None:
            import torch

            torch.set_num_threads(self._threads)
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self._max_wait_s
            while len(batch) < self._max_batch:
                remaining = deadline - time.monotonic()
                try:
                    item = (
                        self._queue.get(timeout=max(remaining, 0))
                        if remaining > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                batch.append(item)
            self._encode_batch(batch)

    def _encode_batch(self, batch: list[tuple[str, Future]]) -> None:
        try:
            results = self._encode([text for text, _ in batch])
            self.batches += 1
        except Exception as error:
            for _, future in batch:
                future.set_exception(error)
            return
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)

    def close(self) -> None:
        """Encodes what is queued, then stops the worker."""
        self._closed = True
        self._queue.put(None)
        self._worker.join(timeout=30)
