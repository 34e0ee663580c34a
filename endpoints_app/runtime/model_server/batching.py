"""Micro-batching for the fast path: fast-path requests that arrive together share one predict
call, on the event loop itself while that is known to take under a millisecond.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from endpoints_app.runtime.model_server.fastpath import FastInput, SklearnFastPath

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_ROWS = 256
# A batch known to predict faster than this runs on the event loop instead of a thread.
INLINE_PREDICT_BUDGET_S = 0.001


class Batcher:
    """Micro-batching for the fast path: concurrent requests share one predict call.

    Requests wait in a queue on the event loop.  Whenever the model is free, everything waiting
    (up to ``max_rows`` rows) becomes one batch.  Nothing waits on purpose: a lone request is
    predicted at once, and under load batches grow by themselves while the previous one runs,
    as with Ray Serve's ``@serve.batch`` or Triton's dynamic batcher without a queue delay.

    A batch runs on the batcher's own thread, or right on the event loop once batches of that
    size are known to take under INLINE_PREDICT_BUDGET_S: for a sub-millisecond model the
    hand-off to a thread and back (~100 µs, plus GIL hand-overs) costs as much as the
    prediction.  So a slow model never holds the loop for longer than about that budget, and
    /health and new connections stay responsive.  Only touched from the event loop thread,
    except ``_run`` on the batch thread.
    """

    def __init__(self, fast: SklearnFastPath, *, max_rows: int) -> None:
        self.fast = fast
        # Row counts only matter for row-independent models; others go one request per call.
        self.max_rows = max_rows if fast.row_independent else 1
        self._loop = asyncio.get_running_loop()
        self._waiting: deque[tuple[FastInput, asyncio.Future[bytes | None]]] = deque()
        self._flush_scheduled = False
        self._thread_busy = False
        # The largest batch (in rows) last seen to predict within the budget; batches up to it
        # run inline.  0 at first, so the first batch runs on the thread and gets timed.
        self.inline_rows = 0
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch")

    def predict(self, item: FastInput) -> asyncio.Future[bytes | None]:
        """Queue one request; the future gets its response body, or None (see predict_batch)."""
        future: asyncio.Future[bytes | None] = self._loop.create_future()
        self._waiting.append((item, future))
        self._schedule()
        return future

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)

    def _schedule(self) -> None:
        if not self._flush_scheduled and not self._thread_busy:
            self._flush_scheduled = True
            # Next loop iteration: every request read in this one joins the batch.
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._waiting:
            return
        batch = [self._waiting.popleft()]
        rows = batch[0][0].rows
        while self._waiting and rows + self._waiting[0][0].rows <= self.max_rows:
            batch.append(self._waiting.popleft())
            rows += batch[-1][0].rows
        if rows <= self.inline_rows:
            started = time.perf_counter()
            answers = self._run(batch)
            self._finish(batch, rows, answers, time.perf_counter() - started)
            if self._waiting:
                self._schedule()  # the loop serves I/O before the next batch
        else:
            self._thread_busy = True
            self._thread.submit(self._run_on_thread, batch, rows)

    def _run(self, batch: list[tuple[FastInput, asyncio.Future[bytes | None]]]) -> list[bytes | None]:
        try:
            return self.fast.predict_batch([item for item, _ in batch])
        except Exception:
            logger.exception("fast path failed; answering these requests through the full path")
            return [None] * len(batch)

    def _run_on_thread(self, batch: list[tuple[FastInput, asyncio.Future[bytes | None]]], rows: int) -> None:
        started = time.thread_time()  # CPU time: waiting for the GIL is not the model's cost
        answers = self._run(batch)
        cost = time.thread_time() - started
        try:
            self._loop.call_soon_threadsafe(self._thread_done, batch, rows, answers, cost)
        except RuntimeError:
            pass  # the loop is closed: shut down past the grace period

    def _thread_done(
        self,
        batch: list[tuple[FastInput, asyncio.Future[bytes | None]]],
        rows: int,
        answers: list[bytes | None],
        cost: float,
    ) -> None:
        self._thread_busy = False
        self._finish(batch, rows, answers, cost)
        self._flush()  # what gathered meanwhile is the next batch

    def _finish(
        self,
        batch: list[tuple[FastInput, asyncio.Future[bytes | None]]],
        rows: int,
        answers: list[bytes | None],
        cost: float,
    ) -> None:
        if cost <= INLINE_PREDICT_BUDGET_S:
            self.inline_rows = max(self.inline_rows, rows)
        else:
            self.inline_rows = min(self.inline_rows, rows - 1)
        for (_, future), answer in zip(batch, answers, strict=True):
            if not future.done():
                future.set_result(answer)
