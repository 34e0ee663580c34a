"""Each Modelfleet process's heartbeat: its resource use, written to Redis for the fleet-wide ``/metrics``.

Web, Celery worker, Celery beat and the runtime agent may run on several hosts or containers, so
the web process that answers a scrape cannot read their ``/proc``. Instead each runs a daemon
thread that every ``INTERVAL_SECONDS`` writes one Redis hash (``mf:proc:<role>:<host>:<pid>``):
CPU seconds, resident memory, open file descriptors and threads of the process (a worker's pool
children added in: they do its work), its start time and the time of the beat. The hash outlives
the process by ``KEEP_SECONDS``, so a process that died shows as down (its beat too old) for a while
before its series disappear.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import cast

import psutil

from endpoints_app.redis_client import get_redis

log = logging.getLogger(__name__)

KEY_PREFIX = "mf:proc:"
INTERVAL_SECONDS = 10.0
DOWN_AFTER_SECONDS = 3 * INTERVAL_SECONDS
KEEP_SECONDS = 3600
ROLES = ("web", "worker", "beat", "agent")


@dataclass(frozen=True)
class ProcessBeat:
    role: str
    instance: str  # host:pid
    cpu_seconds: float
    resident_memory_bytes: float
    open_fds: float
    threads: float
    start_time_seconds: float
    beat_at: float

    def up(self, now: float) -> bool:
        return now - self.beat_at <= DOWN_AFTER_SECONDS


def sample(process: psutil.Process, *, include_children: bool) -> dict[str, float]:
    """Resource use of the process (and of its children when asked), as heartbeat fields."""
    members = [process]
    if include_children:
        try:
            members += process.children(recursive=True)
        except psutil.Error:
            pass
    cpu = rss = fds = threads = 0.0
    for member in members:
        try:
            with member.oneshot():
                times = member.cpu_times()
                cpu += times.user + times.system
                rss += member.memory_info().rss
                fds += member.num_fds()
                threads += member.num_threads()
        except psutil.Error:  # a pool child that just exited
            continue
    return {
        "cpu_seconds": cpu,
        "resident_memory_bytes": rss,
        "open_fds": fds,
        "threads": threads,
        "start_time_seconds": process.create_time(),
        "beat_at": time.time(),
    }


class Heartbeat:
    """The daemon thread of one process; ``start`` is idempotent per process (forks start anew)."""

    def __init__(self, role: str, *, include_children: bool = False) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown process role {role!r}")
        self.role = role
        self.include_children = include_children
        self.pid = os.getpid()
        self.key = f"{KEY_PREFIX}{role}:{socket.gethostname()}:{self.pid}"
        self._stop = threading.Event()

    def beat(self) -> None:
        fields = sample(psutil.Process(self.pid), include_children=self.include_children)
        pipe = get_redis().pipeline(transaction=False)
        pipe.hset(self.key, mapping={name: repr(value) for name, value in fields.items()})
        pipe.expire(self.key, KEEP_SECONDS)
        pipe.execute()

    def run(self) -> None:
        while True:
            try:
                self.beat()
            except Exception as exc:  # Redis away: try again at the next beat
                log.debug("process heartbeat not written: %s", exc)
            if self._stop.wait(INTERVAL_SECONDS):
                return

    def stop(self) -> None:
        self._stop.set()


_started: dict[int, Heartbeat] = {}
_lock = threading.Lock()


def start(role: str, *, include_children: bool = False) -> Heartbeat:
    """Start this process's heartbeat thread (once per process) and name its role in its log lines."""
    os.environ["MODELFLEET_PROCESS_ROLE"] = role
    with _lock:
        beat = _started.get(os.getpid())
        if beat is None:
            beat = Heartbeat(role, include_children=include_children)
            threading.Thread(target=beat.run, name="process-heartbeat", daemon=True).start()
            _started[os.getpid()] = beat
        return beat


def read_all() -> list[ProcessBeat]:
    """Every heartbeat in Redis, newest state of each process (SCAN, not KEYS: it never blocks Redis)."""
    client = get_redis()
    keys = sorted(cast(list[str], list(client.scan_iter(match=f"{KEY_PREFIX}*", count=500))))
    if not keys:
        return []
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    beats = []
    for key, fields in zip(keys, pipe.execute(), strict=True):
        role, _, instance = key[len(KEY_PREFIX) :].partition(":")
        if not fields or role not in ROLES:
            continue
        try:
            values = {
                name: float(fields[name])
                for name in ProcessBeat.__dataclass_fields__
                if name not in ("role", "instance")
            }
        except (KeyError, ValueError):
            continue
        beats.append(ProcessBeat(role=role, instance=instance, **values))
    return beats


def connect_celery_signals() -> None:
    """Heartbeats for the Celery worker (its pool children included) and beat, from their own signals."""
    from celery import signals

    def _worker_init(**kwargs: object) -> None:  # before the pool forks: its children log as the worker too
        os.environ["MODELFLEET_PROCESS_ROLE"] = "worker"

    def _worker_ready(**kwargs: object) -> None:
        start("worker", include_children=True)

    def _beat_init(**kwargs: object) -> None:
        start("beat")

    signals.worker_init.connect(_worker_init, weak=False)
    signals.worker_ready.connect(_worker_ready, weak=False)
    signals.beat_init.connect(_beat_init, weak=False)
