"""Metric polling into time series, downsampling, retention and series reads.

Sources, per endpoint:
- the gateway's cumulative request counters in Redis (every query passes the gateway, including
  the ones that failed before reaching a model): request count, 4xx, 5xx, latency histogram;
- each ready replica's /metrics (CPU %, memory %, in-flight requests), read with a timeout.

Each poll turns cumulative counters into per-interval counts with a ``MetricCursor``: a counter
lower than last time means its source restarted, and the new value is the whole delta, so a
restart never produces a negative or spiking rate. Points are 15 s intervals; ``rollup`` merges
them into 1 min and 1 h points (recomputed idempotently from the finer points, so totals are
kept exactly), and ``prune`` applies each resolution's retention.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Avg, F, Max, Q, Sum, Value
from django.db.models.functions import Cast
from django.utils import timezone

from endpoints_app.backends import get_backend
from endpoints_app.gateway.metrics import BUCKET_LABELS, UNATTRIBUTED, read_counters
from endpoints_app.models import Endpoint, MetricCursor, MetricPoint
from endpoints_app.runtime.credentials import ReplicaTarget

BASE_RESOLUTION = 15
RESOLUTIONS = (15, 60, 3600)
SHADOW_FIELDS = ("shadow_compared", "shadow_agreed", "shadow_dropped")  # gateway.shadow
COUNTER_FIELDS = ("count", "4xx", "5xx", "sum", *(f"b{label}" for label in BUCKET_LABELS), *SHADOW_FIELDS)
MAX_CHART_POINTS = 300


class MetricsPollError(Exception):
    """Raised after storing what could be read, so the poll run is recorded as failed."""


# --- reading the sources ------------------------------------------------------------------------


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Samples of a Prometheus text exposition: (name, labels, value). Comments are skipped."""
    samples = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            name, _, rest = line.partition("{")
            label_text, _, value_text = rest.rpartition("}")
            labels = dict(_labels(label_text))
        else:
            name, _, value_text = line.partition(" ")
            labels = {}
        try:
            value = float(value_text.strip().split(" ")[0])
        except ValueError:
            continue
        samples.append((name.strip(), labels, value))
    return samples


def _labels(text: str) -> Iterable[tuple[str, str]]:
    i = 0
    while i < len(text):
        eq = text.find("=", i)
        if eq < 0:
            return
        key = text[i:eq].strip().lstrip(",").strip()
        j = eq + 2  # skip ="
        value = []
        while j < len(text) and text[j] != '"':
            if text[j] == "\\" and j + 1 < len(text):
                j += 1
                value.append({"n": "\n"}.get(text[j], text[j]))
            else:
                value.append(text[j])
            j += 1
        yield key, "".join(value)
        i = j + 1


@dataclass
class ReplicaGauges:
    cpu_pct: float | None = None
    mem_pct: float | None = None
    gpu_pct: list[float] = field(default_factory=list)
    in_flight: float = 0.0


def scrape_replica(replica: ReplicaTarget, timeout: float) -> ReplicaGauges:
    response = requests.get(f"{replica.url}/metrics", headers=replica.headers(), timeout=timeout)
    response.raise_for_status()
    gauges = ReplicaGauges()
    for name, _, value in parse_prometheus(response.text):
        if name == "cpu_usage_percentage":
            gauges.cpu_pct = value
        elif name == "mem_usage_percentage":
            gauges.mem_pct = value
        elif name == "in_flight_requests":
            gauges.in_flight = value
        elif name == "gpu_usage_percentage":
            gauges.gpu_pct.append(value)
    return gauges


# --- histogram maths ------------------------------------------------------------------------------


def _upper(label: str) -> float:
    return math.inf if label == "+Inf" else float(label)


def quantile(buckets: dict[str, float], q: float) -> float | None:
    """``histogram_quantile`` over per-bucket (non-cumulative) counts, interpolating linearly."""
    total = sum(buckets.get(label, 0.0) for label in BUCKET_LABELS)
    if total <= 0:
        return None
    rank = q * total
    cumulative = 0.0
    lower = 0.0
    last_finite = _upper(BUCKET_LABELS[-2])
    for label in BUCKET_LABELS:
        count = buckets.get(label, 0.0)
        upper = _upper(label)
        if cumulative + count >= rank and count > 0:
            if math.isinf(upper):
                return last_finite
            return lower + (upper - lower) * (rank - cumulative) / count
        cumulative += count
        if not math.isinf(upper):
            lower = upper
    return last_finite


# --- one interval's values ----------------------------------------------------------------------


@dataclass
class Interval:
    request_count: float = 0.0
    count_4xx: float = 0.0
    count_5xx: float = 0.0
    latency_sum_ms: float = 0.0
    buckets: dict[str, float] = field(default_factory=dict)
    cpu: list[float] = field(default_factory=list)
    mem: list[float] = field(default_factory=list)
    gpu: list[float] = field(default_factory=list)
    replicas: float | None = None
    concurrency: float | None = None
    shadow_compared: float = 0.0
    shadow_agreed: float = 0.0
    shadow_dropped: float = 0.0

    def add_counts(self, delta: dict[str, float]) -> None:
        self.shadow_compared += delta.get("shadow_compared", 0.0)
        self.shadow_agreed += delta.get("shadow_agreed", 0.0)
        self.shadow_dropped += delta.get("shadow_dropped", 0.0)
        self.request_count += delta.get("count", 0.0)
        self.count_4xx += delta.get("4xx", 0.0)
        self.count_5xx += delta.get("5xx", 0.0)
        self.latency_sum_ms += delta.get("sum", 0.0)
        for label in BUCKET_LABELS:
            value = delta.get(f"b{label}", 0.0)
            if value:
                self.buckets[label] = self.buckets.get(label, 0.0) + value


def counter_delta(previous: dict[str, float] | None, current: dict[str, float]) -> dict[str, float]:
    """Per-interval counts from two cumulative reads; a decrease means the source restarted."""
    if not previous:
        return dict(current)
    if any(current.get(k, 0.0) < previous.get(k, 0.0) for k in COUNTER_FIELDS):
        return dict(current)
    return {k: current.get(k, 0.0) - previous.get(k, 0.0) for k in COUNTER_FIELDS if k in current}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


# --- the poll -----------------------------------------------------------------------------------


def poll_metrics(endpoint: Endpoint) -> None:
    """Read the sources once and add one 15 s point per served entity and one for the endpoint."""
    ts = int(time.time()) // BASE_RESOLUTION * BASE_RESOLUTION
    config = endpoint.active_config  # None without a query when there is no active config
    entities = list(config.served_entities.all()) if config is not None else []
    counters = read_counters(endpoint.id)

    # 1. Replica gauges, read in parallel, each with a timeout.
    urls_by_deployment = get_backend().ready_replicas(
        deployment_ids=[e.deployment_id for e in entities if e.deployment_id]
    )
    jobs = [
        (e.name, url)
        for e in entities
        if e.deployment_id is not None
        for url in urls_by_deployment.get(e.deployment_id, [])
    ]
    gauges: dict[str, list[ReplicaGauges]] = defaultdict(list)
    errors: list[str] = []
    if jobs:
        timeout = settings.POLL_HTTP_TIMEOUT_SECONDS
        with ThreadPoolExecutor(max_workers=min(8, len(jobs))) as pool:
            futures = [(name, url, pool.submit(scrape_replica, url, timeout)) for name, url in jobs]
            for name, url, future in futures:
                try:
                    gauges[name].append(future.result())
                except Exception as exc:  # a dead replica is reported, the others still count
                    errors.append(f"{url}: {type(exc).__name__}: {exc}")

    # 2. Per-interval counts from the gateway's cumulative counters.
    cursors = {c.served_entity_name: c for c in MetricCursor.objects.filter(endpoint=endpoint, source="gateway")}
    names = {e.name for e in entities} | set(counters)
    intervals: dict[str, Interval] = {}
    new_cursors: dict[str, dict[str, float]] = {}
    for name in names:
        current = counters.get(name, {})
        previous = cursors[name].counters if name in cursors else None
        interval = Interval()
        interval.add_counts(counter_delta(previous, current))
        if current:
            new_cursors[name] = current
        replica_gauges = gauges.get(name, [])
        interval.cpu = [g.cpu_pct for g in replica_gauges if g.cpu_pct is not None]
        interval.mem = [g.mem_pct for g in replica_gauges if g.mem_pct is not None]
        interval.gpu = [v for g in replica_gauges for v in g.gpu_pct]
        if name != UNATTRIBUTED:
            interval.replicas = float(len(replica_gauges))
            interval.concurrency = float(sum(g.in_flight for g in replica_gauges))
        intervals[name] = interval

    # A shadow's mirrors are not queries of the endpoint: its own series only (gateway.shadow).
    shadows = shadow_names(config.traffic_config if config is not None else None)
    total = Interval(replicas=0.0, concurrency=0.0)
    for name, interval in intervals.items():
        if name in shadows:
            continue
        total.add_counts(_as_delta(interval))
        total.cpu += interval.cpu
        total.mem += interval.mem
        total.gpu += interval.gpu
        total.replicas = (total.replicas or 0.0) + (interval.replicas or 0.0)
        total.concurrency = (total.concurrency or 0.0) + (interval.concurrency or 0.0)

    # 3. Store points and cursors in one short transaction.
    with transaction.atomic():
        for name, values in new_cursors.items():
            MetricCursor.objects.update_or_create(
                endpoint=endpoint,
                served_entity_name=name,
                source="gateway",
                defaults={"counters": values, "read_at": timezone.now()},
            )
        for name, interval in intervals.items():
            if name != UNATTRIBUTED:
                add_point(endpoint.id, name, BASE_RESOLUTION, ts, interval)
        add_point(endpoint.id, "", BASE_RESOLUTION, ts, total)
    if errors and len(errors) == len(jobs):
        raise MetricsPollError(f"could not read metrics from {len(errors)} replica(s): {'; '.join(errors)[:500]}")


def shadow_names(traffic_config: Any) -> set[str]:
    """The served entities a config mirrors queries to (``traffic_config.shadow``)."""
    if not isinstance(traffic_config, dict):
        return set()
    return {
        str(s["served_entity_name"])
        for s in traffic_config.get("shadow") or []
        if isinstance(s, dict) and s.get("served_entity_name")
    }


def _as_delta(interval: Interval) -> dict[str, float]:
    delta = {
        "count": interval.request_count,
        "4xx": interval.count_4xx,
        "5xx": interval.count_5xx,
        "sum": interval.latency_sum_ms,
    }
    delta.update({f"b{label}": value for label, value in interval.buckets.items()})
    return delta


def add_point(endpoint_id: str, entity: str, resolution: int, ts: int, interval: Interval) -> None:
    """Add an interval into the point at (entity, resolution, ts), creating it if needed."""
    cpu, mem, gpu = _mean(interval.cpu), _mean(interval.mem), _mean(interval.gpu)
    for _attempt in range(2):
        point = (
            MetricPoint.objects.select_for_update()
            .filter(endpoint_id=endpoint_id, served_entity_name=entity, resolution=resolution, ts=ts)
            .first()
        )
        if point is None:
            try:
                with transaction.atomic():
                    MetricPoint.objects.create(
                        endpoint_id=endpoint_id,
                        served_entity_name=entity,
                        resolution=resolution,
                        ts=ts,
                        request_count=interval.request_count,
                        count_4xx=interval.count_4xx,
                        count_5xx=interval.count_5xx,
                        latency_sum_ms=interval.latency_sum_ms,
                        latency_buckets=interval.buckets,
                        p50_ms=quantile(interval.buckets, 0.5),
                        p90_ms=quantile(interval.buckets, 0.9),
                        p99_ms=quantile(interval.buckets, 0.99),
                        cpu_pct=cpu,
                        mem_pct=mem,
                        replicas=interval.replicas,
                        concurrency=interval.concurrency,
                        shadow_compared=interval.shadow_compared,
                        shadow_agreed=interval.shadow_agreed,
                        shadow_dropped=interval.shadow_dropped,
                    )
                return
            except IntegrityError:
                continue  # another poll created it first: merge into it
        merged = merge_points([point, _point_like(interval, cpu, mem, gpu)])
        for key, value in merged.items():
            setattr(point, key, value)
        point.save()
        return


def _point_like(interval: Interval, cpu: float | None, mem: float | None, gpu: float | None) -> MetricPoint:
    return MetricPoint(
        gpu_pct=gpu,
        request_count=interval.request_count,
        count_4xx=interval.count_4xx,
        count_5xx=interval.count_5xx,
        latency_sum_ms=interval.latency_sum_ms,
        latency_buckets=interval.buckets,
        cpu_pct=cpu,
        mem_pct=mem,
        replicas=interval.replicas,
        concurrency=interval.concurrency,
        shadow_compared=interval.shadow_compared,
        shadow_agreed=interval.shadow_agreed,
        shadow_dropped=interval.shadow_dropped,
        samples=1,
    )


def merge_points(points: list[MetricPoint]) -> dict[str, Any]:
    """Field values of one point made of several: counts and buckets add up, gauges average."""
    buckets: dict[str, float] = {}
    for p in points:
        for label, count in (p.latency_buckets or {}).items():
            buckets[label] = buckets.get(label, 0.0) + count

    def weighted(attr: str) -> float | None:
        pairs = [(getattr(p, attr), p.samples or 1) for p in points if getattr(p, attr) is not None]
        weight = sum(w for _, w in pairs)
        return sum(v * w for v, w in pairs) / weight if weight else None

    return {
        "request_count": sum(p.request_count for p in points),
        "count_4xx": sum(p.count_4xx for p in points),
        "count_5xx": sum(p.count_5xx for p in points),
        "latency_sum_ms": sum(p.latency_sum_ms for p in points),
        "latency_buckets": buckets,
        "p50_ms": quantile(buckets, 0.5),
        "p90_ms": quantile(buckets, 0.9),
        "p99_ms": quantile(buckets, 0.99),
        "cpu_pct": weighted("cpu_pct"),
        "mem_pct": weighted("mem_pct"),
        "gpu_pct": weighted("gpu_pct"),
        "replicas": weighted("replicas"),
        "concurrency": weighted("concurrency"),
        "samples": sum(p.samples or 1 for p in points),
        "shadow_compared": sum(p.shadow_compared for p in points),
        "shadow_agreed": sum(p.shadow_agreed for p in points),
        "shadow_dropped": sum(p.shadow_dropped for p in points),
    }


# --- downsampling and retention -------------------------------------------------------------------


def rollup(now: float | None = None) -> int:
    """Recompute recent 1 min points from 15 s ones and 1 h points from 1 min ones (idempotent)."""
    now = now if now is not None else time.time()
    written = _rollup(15, 60, start=int(now - 10 * 60) // 60 * 60, end=int(now) // 60 * 60)
    written += _rollup(60, 3600, start=int(now - 3 * 3600) // 3600 * 3600, end=int(now) // 3600 * 3600)
    return written


def _rollup(source: int, target: int, *, start: int, end: int) -> int:
    if end <= start:
        return 0
    groups: dict[tuple[str, str, int], list[MetricPoint]] = defaultdict(list)
    for point in MetricPoint.objects.filter(resolution=source, ts__gte=start, ts__lt=end).iterator(chunk_size=2000):
        groups[(point.endpoint_id, point.served_entity_name, point.ts // target * target)].append(point)
    rows = [
        MetricPoint(endpoint_id=eid, served_entity_name=entity, resolution=target, ts=ts, **merge_points(points))
        for (eid, entity, ts), points in groups.items()
    ]
    with transaction.atomic():
        MetricPoint.objects.filter(resolution=target, ts__gte=start, ts__lt=end).delete()
        MetricPoint.objects.bulk_create(rows, batch_size=1000)
    return len(rows)


def prune(now: float | None = None) -> int:
    now = now if now is not None else time.time()
    deleted = 0
    for resolution, hours in settings.METRICS_RETENTION_HOURS.items():
        count, _ = MetricPoint.objects.filter(resolution=resolution, ts__lt=int(now - hours * 3600)).delete()
        deleted += count
    return deleted


# --- reading series for charts --------------------------------------------------------------------

SERIES = (
    "request_rate",
    "error_4xx_rate",
    "error_5xx_rate",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "cpu_pct",
    "mem_pct",
    "replicas",
    "concurrency",
    "agreement_rate",  # a shadow's: predictions that agreed with the primary's / compared (0-1)
    "shadow_dropped_rate",  # a shadow's mirrors dropped per second
)


def choose_resolution(start: int, end: int, now: float | None = None) -> int:
    """The finest kept resolution that covers the range in at most 5,000 points (SQL reduces them to ~300)."""
    now = now if now is not None else time.time()
    span = end - start
    for resolution in RESOLUTIONS:
        kept_from = now - settings.METRICS_RETENTION_HOURS[resolution] * 3600
        if span / resolution <= 5000 and start >= kept_from - resolution:
            return resolution
    return RESOLUTIONS[-1]


def series(
    endpoint: Endpoint, metrics: list[str], *, start: int, end: int, served_entity: str = "", now: float | None = None
) -> dict[str, Any]:
    """Chart series between two times (epoch s), aggregated in SQL into at most ~300 buckets."""
    resolution = choose_resolution(start, end, now)
    step = max(resolution, math.ceil((end - start) / MAX_CHART_POINTS / resolution) * resolution)
    bucket = Cast(F("ts") / Value(step), output_field=MetricPoint._meta.get_field("ts")) * Value(step)
    rows = (
        MetricPoint.objects.filter(
            endpoint=endpoint, served_entity_name=served_entity, resolution=resolution, ts__gte=start, ts__lt=end
        )
        .annotate(bucket=bucket)
        .values("bucket")
        .annotate(
            requests=Sum("request_count"),
            c4xx=Sum("count_4xx"),
            c5xx=Sum("count_5xx"),
            p50w=Sum(F("p50_ms") * F("request_count")),
            p90w=Sum(F("p90_ms") * F("request_count")),
            weight=Sum("request_count", filter=Q(p50_ms__isnull=False)),
            p99=Max("p99_ms"),
            cpu=Avg("cpu_pct"),
            mem=Avg("mem_pct"),
            gpu=Avg("gpu_pct"),
            replicas_avg=Avg("replicas"),
            concurrency_avg=Avg("concurrency"),
            compared=Sum("shadow_compared"),
            agreed=Sum("shadow_agreed"),
            dropped=Sum("shadow_dropped"),
        )
        .order_by("bucket")
    )
    out: dict[str, list[list[float | None]]] = {m: [] for m in metrics}
    for row in rows:
        ts_ms = int(row["bucket"]) * 1000
        values = {
            "request_rate": (row["requests"] or 0.0) / step,
            "error_4xx_rate": (row["c4xx"] or 0.0) / step,
            "error_5xx_rate": (row["c5xx"] or 0.0) / step,
            "p50_ms": row["p50w"] / row["weight"] if row["weight"] and row["p50w"] is not None else None,
            "p90_ms": row["p90w"] / row["weight"] if row["weight"] and row["p90w"] is not None else None,
            "p99_ms": row["p99"],
            "cpu_pct": row["cpu"],
            "mem_pct": row["mem"],
            "gpu_pct": row["gpu"],
            "replicas": row["replicas_avg"],
            "concurrency": row["concurrency_avg"],
            "agreement_rate": row["agreed"] / row["compared"] if row["compared"] else None,
            "shadow_dropped_rate": (row["dropped"] or 0.0) / step,
        }
        for m in metrics:
            out[m].append([ts_ms, values[m]])
    return {"resolution": resolution, "step": step, "start": start * 1000, "end": end * 1000, "series": out}
