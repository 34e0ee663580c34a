"""More than one process per replica, for models whose own Python code is the bottleneck.

A custom ``python_model``'s predict is Python holding the GIL: one process answers on one core at
most, however many predict threads it has, and whether or not its requests are batched
(batchable.py).  Such a replica forks its workers (one per CPU it may run on, at most
MAX_AUTO_WORKERS) before the model loads; each loads the model, batches its own requests when
the model may batch, and serves on the same listening socket, which the parent bound before
forking (the kernel hands each connection to one of them).  Measured on two cores, wrk at
concurrency 8 against the replica, the rules pyfunc of benchmarks/model_shapes.py: undeclared,
1 row 884-1,011 -> 1,112-1,510 requests/s and 100 rows 508-560 -> 1,106-1,249; declared
row-wise (batched), 1 row 1,673-1,726 -> 2,709-2,790 and 100 rows 518-531 -> 1,087-1,132.

What the agent and the gateway see stays one replica:

* ``/health`` and ``/metrics``, whichever worker answers, report the replica: every worker keeps
  its counters in its own slot of a Board (anonymous shared memory mapped before the fork), and
  the answering worker sums the slots.  ``ready`` only once every worker has loaded the model;
  ``pid`` is the parent's, the process the agent started.
* A stop signal reaches the parent, which stops accepting and closes the pipe its workers watch:
  each finishes its requests in flight and exits, and the parent waits for them.  The workers
  also die with the parent (``PR_SET_PDEATHSIG``), so a killed replica leaves none behind.
* A worker that fails to load the model, or dies, takes the replica down: the parent exits with
  the worker's code (3 for a failed load, 5 for its sandbox; 6 when it was killed), and the
  agent restarts the replica as it would a single process.

The sandbox (runtime/sandbox.py) allows all of this: the workers are forked after its early stage
(a plain fork, no namespaces), once the parent has bound the port, and each process then enters
the final stage itself, so each may read its own /proc folder and none may signal another (each
is its own Landlock domain); nothing is signalled, the pipe says "stop".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.models import Model

from endpoints_app.runtime.model_server.metrics import LATENCY_BUCKETS_MS, Metrics

logger = logging.getLogger(__name__)

# Two cores' worth: each worker is a full copy of the model in memory, and beyond the cores the
# gateway and the other replicas need, more workers only queue on the same CPUs.
MAX_AUTO_WORKERS = 2
# A model this large (its folder) keeps one process: each worker holds its own copy.
MAX_FORKED_MODEL_BYTES = 512 * 1024 * 1024
# uvicorn's default listen backlog.
LISTEN_BACKLOG = 2048
PR_SET_PDEATHSIG = 1

# A worker's slot: one float64 each, then the latency histogram's per-bucket counts.
STATE, IN_FLIGHT, REQUESTS, REQUESTS_4XX, REQUESTS_5XX, LATENCY_SUM_MS = range(6)
LAST_REQUEST_AT, LOAD_SECONDS, BATCHES, BATCHED_REQUESTS, CPU_SECONDS, RSS_BYTES, PID = range(6, 13)
BUCKETS = 13
SLOT_CELLS = BUCKETS + len(LATENCY_BUCKETS_MS) + 1
LOADING, READY, FAILED = 0.0, 1.0, 2.0


def planned_workers(requested: int, model_path: Path, environ: Mapping[str, str] = os.environ) -> tuple[int, str]:
    """How many processes serve this replica, and why (for its log).

    ``requested`` (``--workers``) wins when it is not 0; else more than one only for a custom
    ``python_model`` (batched or not: each worker batches its own requests) small enough to load
    twice, on a replica without a GPU that may run on more than one CPU.
    """
    if requested:
        return requested, "--workers"
    cpus = len(os.sched_getaffinity(0))
    if cpus < 2:
        return 1, "one CPU"
    if environ.get("CUDA_VISIBLE_DEVICES", "").strip() not in ("", "-1"):
        return 1, "a GPU replica: one process per GPU"
    try:
        meta = Model.load(str(model_path))
    except Exception as exc:  # the load itself reports what is wrong with the model
        return 1, f"its MLmodel could not be read ({type(exc).__name__})"
    loader = meta.flavors.get("python_function", {}).get("loader_module")
    if loader != "mlflow.pyfunc.model":
        return 1, "not a custom python_model"
    size = sum(path.stat().st_size for path in model_path.rglob("*") if path.is_file())
    if size > MAX_FORKED_MODEL_BYTES:
        return 1, f"its files are {size // (1024 * 1024)} MiB: one copy in memory"
    workers = min(cpus, MAX_AUTO_WORKERS)
    return workers, f"a custom python_model predicted one request per call: one process per CPU, up to {workers}"


class Board:
    """Every worker's counters, in anonymous shared memory mapped before the fork: each worker
    writes only its own slot (aligned float64s, so a reader never sees half a value), any worker
    reads them all."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._memory = mmap.mmap(-1, workers * SLOT_CELLS * 8)
        self._cells = memoryview(self._memory).cast("d")

    def slot(self, index: int) -> memoryview[float]:
        return self._cells[index * SLOT_CELLS : (index + 1) * SLOT_CELLS]

    def slots(self) -> list[memoryview[float]]:
        return [self.slot(index) for index in range(self.workers)]

    def state(self) -> str:
        """``ready`` once every worker has loaded the model, ``failed`` when one could not."""
        states = [slot[STATE] for slot in self.slots()]
        if FAILED in states:
            return "failed"
        return "ready" if all(state == READY for state in states) else "loading"

    def total(self, cell: int) -> float:
        return sum(slot[cell] for slot in self.slots())

    def last_request_at(self) -> float:
        return max(slot[LAST_REQUEST_AT] for slot in self.slots())

    def load_seconds(self) -> float | None:
        loaded = [slot[LOAD_SECONDS] for slot in self.slots() if slot[STATE] == READY]
        return max(loaded) if len(loaded) == self.workers else None

    def summed_metrics(self, metrics: Metrics) -> Metrics:
        """The replica's counters: ``metrics`` (the answering worker's) with every slot's summed."""
        slots = self.slots()
        return Metrics(
            labels=metrics.labels,
            request_count=int(self.total(REQUESTS)),
            request_4xx_count=int(self.total(REQUESTS_4XX)),
            request_5xx_count=int(self.total(REQUESTS_5XX)),
            latency_buckets=[
                int(sum(slot[BUCKETS + bucket] for slot in slots)) for bucket in range(len(metrics.latency_buckets))
            ],
            latency_sum_ms=self.total(LATENCY_SUM_MS),
            start_time=metrics.start_time,
        )


class WorkerSlot:
    """One worker's own slot of the Board: what its app publishes."""

    def __init__(self, board: Board, index: int) -> None:
        self.board = board
        self.index = index
        self.cells = board.slot(index)
        self.cells[PID] = os.getpid()
        self.cells[LAST_REQUEST_AT] = time.monotonic()
        self._page_size = os.sysconf("SC_PAGE_SIZE")
        self._cpu_mark: tuple[float, float] | None = None

    def publish_request(self, metrics: Metrics, in_flight: int, last_request_at: float) -> None:
        """After each request: its counters (the bucket it fell in has changed; the rest may)."""
        cells = self.cells
        cells[IN_FLIGHT] = in_flight
        cells[REQUESTS] = metrics.request_count
        cells[REQUESTS_4XX] = metrics.request_4xx_count
        cells[REQUESTS_5XX] = metrics.request_5xx_count
        cells[LATENCY_SUM_MS] = metrics.latency_sum_ms
        cells[LAST_REQUEST_AT] = last_request_at
        for bucket, count in enumerate(metrics.latency_buckets):
            cells[BUCKETS + bucket] = count

    def publish_batches(self, batches: int, batched_requests: int) -> None:
        self.cells[BATCHES] = batches
        self.cells[BATCHED_REQUESTS] = batched_requests

    def refresh_usage(self) -> None:
        """This process's CPU time and resident memory (every second, and before a scrape)."""
        self.cells[CPU_SECONDS] = time.process_time()
        try:
            with open("/proc/self/statm", "rb") as statm:
                self.cells[RSS_BYTES] = int(statm.read().split()[1]) * self._page_size
        except (OSError, ValueError, IndexError):
            pass

    def usage(self) -> tuple[float, float] | None:
        """The replica's CPU (% of one core since this worker's last scrape) and memory (% of the
        host's), summed over its workers; None on the first scrape (no baseline yet) or without
        the host's memory size."""
        self.refresh_usage()
        now, cpu = time.monotonic(), self.board.total(CPU_SECONDS)
        mark, self._cpu_mark = self._cpu_mark, (now, cpu)
        try:
            memory = os.sysconf("SC_PHYS_PAGES") * self._page_size
        except (OSError, ValueError):
            return None
        cpu_percent = 0.0 if mark is None or now <= mark[0] else 100.0 * (cpu - mark[1]) / (now - mark[0])
        return round(cpu_percent, 2), round(100.0 * self.board.total(RSS_BYTES) / memory, 3)


@dataclass
class WorkerGroup:
    """The processes of one replica, seen from one of them (``index`` 0 is the parent)."""

    index: int
    count: int
    sock: socket.socket
    board: Board
    parent_pid: int
    # The parent: its workers' pids and the pipe's write end (closing it stops them).
    children: list[int]
    stop_writer: int | None
    # A worker: the pipe's read end, which reads EOF when the parent stops or dies.
    stop_reader: int | None

    @classmethod
    def start(cls, host: str, port: int, count: int) -> WorkerGroup:
        """Bind the replica's port, then fork ``count - 1`` workers; returns in each process.

        Raises:
            OSError: the port cannot be bound.
        """
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(LISTEN_BACKLOG)
        except OSError:
            sock.close()
            raise
        board = Board(count)
        parent = os.getpid()
        reader, writer = os.pipe()
        children: list[int] = []
        for index in range(1, count):
            pid = os.fork()
            if pid == 0:
                os.close(writer)
                _die_with(parent)
                return cls(index, count, sock, board, parent, [], None, reader)
            children.append(pid)
        os.close(reader)
        return cls(0, count, sock, board, parent, children, writer, None)

    @property
    def is_parent(self) -> bool:
        return self.index == 0

    def stop_workers(self) -> None:
        """The parent: tell every worker to finish its requests in flight and exit."""
        if self.stop_writer is not None:
            os.close(self.stop_writer)
            self.stop_writer = None

    def reap(self) -> tuple[int, int] | None:
        """The parent: (pid, exit code) of a worker that has exited, or None.  Each worker by its
        pid: the model's own subprocesses are not ours to reap."""
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                self.children.remove(pid)
                continue
            if done == pid:
                self.children.remove(pid)
                return pid, os.waitstatus_to_exitcode(status)
        return None

    def wait_for_workers(self, timeout: float) -> None:
        """The parent, after stop_workers: wait up to ``timeout`` seconds for them to exit."""
        deadline = time.monotonic() + timeout
        while self.children and time.monotonic() < deadline:
            if self.reap() is None:
                time.sleep(0.05)
        if self.children:
            logger.warning("%d worker(s) still running after %.0f s; leaving them to exit", len(self.children), timeout)


def _die_with(parent: int) -> None:
    """This worker gets SIGKILL when the parent dies, however it dies."""
    libc_name = ctypes.util.find_library("c")
    libc: Any = ctypes.CDLL(libc_name, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
