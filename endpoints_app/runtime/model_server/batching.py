"""Micro-batching: concurrent requests to a model that predicts row by row (batchable.py) share
one predict call.

Two kinds of request are batched, each by its own Batcher: the scikit-learn fast path's checked
tables (fastpath.py), and the full MLflow path's parsed, schema-enforced requests
(served_model.py).  A batch only ever holds requests that can be stacked into one table (equal
``key``), so each batch is one predict call; how a batch is predicted, split back and, when the
combined call fails, answered request by request, is the predictor's business.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Generic, Protocol, TypeVar

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_ROWS = 256
# A batch known to predict faster than this runs on the event loop instead of a thread.
INLINE_PREDICT_BUDGET_S = 0.001


class BatchItem(Protocol):
    """One request waiting for a batch."""

    @property
    def rows(self) -> int:
        """How many input rows it brings (a batch holds at most ``max_rows``)."""
        ...

    @property
    def key(self) -> Hashable:
        """Requests with equal keys can be stacked into one model input."""
        ...


ItemT = TypeVar("ItemT", bound=BatchItem)
AnswerT = TypeVar("AnswerT")


class Batcher(Generic[ItemT, AnswerT]):
    """Concurrent requests share one predict call, and nothing ever waits on purpose.

    Requests wait in a queue.  Whenever the model is free, the oldest waiting request and the
    ones after it with the same key (up to ``max_rows`` rows) become one batch; the others wait
    for the next.  A lone request is predicted at once, and under load batches grow by
    themselves while the previous one runs, as with Ray Serve's ``@serve.batch`` or Triton's
    dynamic batcher without a queue delay.

    Where a batch runs:

    * on the event loop, once batches of that size are known to take under
      INLINE_PREDICT_BUDGET_S: for a sub-millisecond model the hand-off to a thread and back
      (~100 µs, plus GIL hand-overs) costs as much as the prediction, and a slow model never
      holds the loop for longer than about that budget;
    * else on ``executor`` (the batcher's own thread unless one is given);
    * or, through ``run_if_idle``, right in the worker thread that has just parsed the request,
      when nothing else is running or waiting: a lone request on the full path then costs no
      more thread hops than it would unbatched.

    ``predict_batch`` gets a batch and answers each of its requests in order; if it raises, every
    request of the batch is answered None, which tells the caller to answer it alone.  The queue
    and the running flag are shared with worker threads (``run_if_idle``) under a lock; futures,
    timings and counters are only touched on the event loop.
    """

    def __init__(
        self,
        predict_batch: Callable[[list[ItemT]], list[AnswerT]],
        *,
        max_rows: int,
        executor: Executor | None = None,
        inline: bool = True,
    ) -> None:
        self._predict_batch = predict_batch
        self.max_rows = max_rows
        # False: batches never run on the event loop, however fast (a model's own Python code,
        # which may take seconds for some input and must not stall /health meanwhile).
        self._inline = inline
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._waiting: deque[tuple[ItemT, asyncio.Future[AnswerT | None]]] = deque()
        self._flush_scheduled = False
        # A batch is being predicted (on the loop, the executor or a worker thread).
        self._running = False
        # The largest batch (in rows) last seen to predict within the budget; batches up to it
        # run inline.  0 at first, so the first batch runs on a thread and gets timed.
        self.inline_rows = 0
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch")
        # For /metrics: batches of two or more requests, and the requests in them.
        self.batches = 0
        self.batched_requests = 0

    def predict(self, item: ItemT) -> asyncio.Future[AnswerT | None]:
        """Queue one request (on the event loop); the future gets its answer, or None when it
        must be answered alone (see the class docstring)."""
        future: asyncio.Future[AnswerT | None] = self._loop.create_future()
        with self._lock:
            self._waiting.append((item, future))
            start = not self._running and not self._flush_scheduled
            self._flush_scheduled |= start
        if start:
            # Next loop iteration: every request read in this one joins the batch.
            self._loop.call_soon(self._flush)
        return future

    def run_if_idle(self, item: ItemT) -> list[AnswerT | None] | None:
        """From a worker thread: predict this one request right here if the model is idle and
        nobody waits, and return its answer (a one-item list); None when busy, and then the
        caller queues it with ``predict``."""
        with self._lock:
            if self._running or self._waiting:
                return None
            self._running = True
        try:
            return self._run([item])
        finally:
            if self._release():
                try:
                    self._loop.call_soon_threadsafe(self._flush)
                except RuntimeError:
                    pass  # the loop is closed: shut down past the grace period

    def close(self) -> None:
        if self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _release(self) -> bool:
        """The running batch is done; whether a flush must now be scheduled for those waiting."""
        with self._lock:
            self._running = False
            resume = bool(self._waiting) and not self._flush_scheduled
            self._flush_scheduled |= resume
            return resume

    def _flush(self) -> None:
        with self._lock:
            self._flush_scheduled = False
            if self._running or not self._waiting:
                return
            batch, rows = self._take()
            self._running = True
        if rows <= self.inline_rows:
            started = time.perf_counter()
            answers = self._run([item for item, _ in batch])
            self._finish(batch, rows, answers, time.perf_counter() - started)
            if self._release():
                self._loop.call_soon(self._flush)  # the loop serves I/O before the next batch
            return
        try:
            self._executor.submit(self._run_on_thread, batch, rows)
        except RuntimeError:  # the executor is shut down: the server is stopping
            self._finish(batch, rows, [None] * len(batch), float("inf"))
            if self._release():
                self._loop.call_soon(self._flush)  # answer those waiting the same way

    def _take(self) -> tuple[list[tuple[ItemT, asyncio.Future[AnswerT | None]]], int]:
        """The next batch (called under the lock): the oldest request and the next ones with its
        key, up to max_rows rows; the others keep their places."""
        first = self._waiting.popleft()
        batch = [first]
        rows = first[0].rows
        passed_over: list[tuple[ItemT, asyncio.Future[AnswerT | None]]] = []
        while self._waiting and rows < self.max_rows:
            item = self._waiting[0][0]
            if item.key != first[0].key:
                passed_over.append(self._waiting.popleft())
            elif rows + item.rows <= self.max_rows:
                batch.append(self._waiting.popleft())
                rows += item.rows
            else:
                break
        self._waiting.extendleft(reversed(passed_over))
        return batch, rows

    def _run(self, items: list[ItemT]) -> list[AnswerT | None]:
        try:
            return list(self._predict_batch(items))
        except Exception:
            logger.exception("batch prediction failed; answering these requests one by one")
            return [None] * len(items)

    def _run_on_thread(self, batch: list[tuple[ItemT, asyncio.Future[AnswerT | None]]], rows: int) -> None:
        started = time.thread_time()  # CPU time: waiting for the GIL is not the model's cost
        answers = self._run([item for item, _ in batch])
        cost = time.thread_time() - started
        try:
            self._loop.call_soon_threadsafe(self._thread_done, batch, rows, answers, cost)
        except RuntimeError:
            pass  # the loop is closed: shut down past the grace period

    def _thread_done(
        self,
        batch: list[tuple[ItemT, asyncio.Future[AnswerT | None]]],
        rows: int,
        answers: list[AnswerT | None],
        cost: float,
    ) -> None:
        self._finish(batch, rows, answers, cost)
        if self._release():
            self._flush()  # what gathered meanwhile is the next batch

    def _finish(
        self,
        batch: list[tuple[ItemT, asyncio.Future[AnswerT | None]]],
        rows: int,
        answers: list[AnswerT | None],
        cost: float,
    ) -> None:
        if cost <= INLINE_PREDICT_BUDGET_S and self._inline:
            self.inline_rows = max(self.inline_rows, rows)
        else:
            self.inline_rows = min(self.inline_rows, rows - 1)
        if len(batch) > 1:
            self.batches += 1
            self.batched_requests += len(batch)
        for (_, future), answer in zip(batch, answers, strict=True):
            if not future.done():
                future.set_result(answer)
