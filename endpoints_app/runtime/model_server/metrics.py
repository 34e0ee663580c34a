"""The replica's /metrics: request counters and a latency histogram for /invocations, plus this
process's CPU, memory and (when pinned to one) GPU use, in Prometheus text exposition written by
hand (no extra dependency).
"""

from __future__ import annotations

import bisect
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LATENCY_BUCKETS_MS: tuple[float, ...] = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Metrics:
    """Counters for /invocations requests, exposed in Prometheus text format.

    Only touched from the event loop thread, so no locking is needed.
    """

    labels: str
    request_count: int = 0
    request_4xx_count: int = 0
    request_5xx_count: int = 0
    # Per-bucket (not cumulative) counts; the last slot is the +Inf overflow.
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    latency_sum_ms: float = 0.0
    start_time: float = field(default_factory=time.time)

    @classmethod
    def for_replica(cls, *, name: str, replica_id: int) -> Metrics:
        """Metrics labelled with the served entity and the replica, as every series this replica exposes is."""
        return cls(labels=f'served_entity="{_label_value(name)}",replica="{replica_id}"')

    def observe(self, status: int, latency_ms: float) -> None:
        self.request_count += 1
        if 400 <= status < 500:
            self.request_4xx_count += 1
        elif status >= 500:
            self.request_5xx_count += 1
        self.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += 1
        self.latency_sum_ms += latency_ms

    def render(
        self,
        *,
        in_flight: int,
        load_seconds: float | None,
        batches: int = 0,
        batched_requests: int = 0,
        resource_usage: Callable[[], tuple[float, float] | None] | None = None,
    ) -> bytes:
        """The exposition; ``resource_usage`` gives (CPU %, memory %) when this process alone is
        not the replica (workers.py), else this process's are measured."""
        labels = self.labels
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, value: float) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.append(f"{name}{{{labels}}} {value}")

        metric("request_count_total", "counter", "Invocation requests answered.", self.request_count)
        metric("request_4xx_count_total", "counter", "Invocation requests answered with 4xx.", self.request_4xx_count)
        metric("request_5xx_count_total", "counter", "Invocation requests answered with 5xx.", self.request_5xx_count)
        lines.append("# HELP request_latency_ms Invocation latency inside the model server, milliseconds.")
        lines.append("# TYPE request_latency_ms histogram")
        cumulative = 0
        for bound, count in zip((*LATENCY_BUCKETS_MS, None), self.latency_buckets, strict=True):
            cumulative += count
            le = "+Inf" if bound is None else f"{bound:g}"
            lines.append(f'request_latency_ms_bucket{{{labels},le="{le}"}} {cumulative}')
        lines.append(f"request_latency_ms_sum{{{labels}}} {self.latency_sum_ms:.3f}")
        lines.append(f"request_latency_ms_count{{{labels}}} {self.request_count}")
        metric("in_flight_requests", "gauge", "Invocation requests being handled now.", in_flight)
        # Whether concurrent requests really share predict calls (batching.py).
        metric(
            "batch_count_total", "counter", "Batches of two or more requests given to the model as one call.", batches
        )
        metric(
            "batched_request_count_total",
            "counter",
            "Invocation requests that went into such batches.",
            batched_requests,
        )
        for gpu, util, mem_used_pct in _gpu_usage():
            lines.append(f'gpu_usage_percentage{{{labels},gpu="{gpu}"}} {util}')
            lines.append(f'gpu_mem_usage_percentage{{{labels},gpu="{gpu}"}} {mem_used_pct}')
        usage = (resource_usage or _resource_usage)()
        if usage is not None:
            cpu, mem = usage
            metric(
                "cpu_usage_percentage", "gauge", "CPU used by this replica since the last scrape, % of one core.", cpu
            )
            metric("mem_usage_percentage", "gauge", "Resident memory of this replica, % of the host's memory.", mem)
        if load_seconds is not None:
            metric("model_load_seconds", "gauge", "Seconds it took to load the model.", round(load_seconds, 3))
        metric(
            "process_start_time_seconds", "gauge", "Start time of the process, Unix seconds.", round(self.start_time, 3)
        )
        return ("\n".join(lines) + "\n").encode()


_process: Any = None
_gpu_cache: tuple[float, list[tuple[str, float, float]]] = (0.0, [])


def _gpu_usage() -> list[tuple[str, float, float]]:
    """(gpu index, utilisation %, memory used %) of the GPUs this replica is pinned to.

    Only when the runtime pinned it (CUDA_VISIBLE_DEVICES) and nvidia-smi exists; cached for 5 s
    because nvidia-smi takes tens of milliseconds.
    """
    global _gpu_cache
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if not visible or visible == "-1":
        return []
    now = time.monotonic()
    if now - _gpu_cache[0] < 5.0:
        return _gpu_cache[1]
    result: list[tuple[str, float, float]] = []
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [
                    smi,
                    "--query-gpu=index,utilization.gpu,memory.used,memory.total",
                    "--format=csv,noheader,nounits",
                    "-i",
                    visible,
                ],
                capture_output=True,
                text=True,
                timeout=2,
                check=True,
            ).stdout
            for row in out.strip().splitlines():
                index, util, used, total = (part.strip() for part in row.split(","))
                result.append(
                    (index, float(util), round(100.0 * float(used) / float(total), 2) if float(total) else 0.0)
                )
        except (OSError, subprocess.SubprocessError, ValueError):
            result = []
    _gpu_cache = (now, result)
    return result


def _resource_usage() -> tuple[float, float] | None:
    """(CPU %, memory %) of this process via psutil (an MLflow dependency); None without it."""
    global _process
    try:
        # Imported on the first scrape, not at start-up: psutil comes with MLflow but is optional here.
        import psutil
    except ImportError:
        return None
    if _process is None:
        _process = psutil.Process()
        _process.cpu_percent(interval=None)  # the first call only sets the baseline
    return round(_process.cpu_percent(interval=None), 2), round(_process.memory_percent(), 3)


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
