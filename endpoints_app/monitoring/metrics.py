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

import functools
import math
import os
import time
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import requests
import urllib3
from django.conf import settings
from django.db import IntegrityError, OperationalError, transaction
from django.utils import timezone

from endpoints_app.backends import get_backend
from endpoints_app.gateway.metrics import BUCKET_LABELS, UNATTRIBUTED, redis_key
from endpoints_app.models import ConfigVersion, Endpoint, MetricCursor, MetricPoint, ServedEntity
from endpoints_app.monitoring import bulk, scrape, store
from endpoints_app.monitoring.store import quantile
from endpoints_app.redis_client import get_redis
from endpoints_app.runtime.credentials import ReplicaTarget

BASE_RESOLUTION = store.BASE_RESOLUTION
RESOLUTIONS = store.RESOLUTIONS
SHADOW_FIELDS = ("shadow_compared", "shadow_agreed", "shadow_dropped")  # gateway.shadow
COUNTER_FIELDS = ("count", "4xx", "5xx", "sum", *(f"b{label}" for label in BUCKET_LABELS), *SHADOW_FIELDS)
MAX_CHART_POINTS = 300
SCRAPE_THREADS = 32  # https replicas' /metrics read at once by one batch (threads)
SCRAPE_CONCURRENCY = 64  # plain http replicas' /metrics read at once by one batch (scrape.fetch_many)


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


@functools.lru_cache(maxsize=4096)
def _path_of(url: str) -> str:
    return urllib3.util.parse_url(url).path or ""


def scrape_replica(
    replica: ReplicaTarget, timeout: float, http: urllib3.PoolManager | urllib3.HTTPConnectionPool | None = None
) -> ReplicaGauges:
    """A replica's gauges from its /metrics. ``http``: a batch's shared pool (a manager, or the
    replica's own connection pool), whose kept-alive connections spare each scrape a TCP connect
    and the ``requests`` session set-up."""
    if http is None:
        response = requests.get(f"{replica.url}/metrics", headers=replica.headers(), timeout=timeout)
        response.raise_for_status()
        return parse_gauges(response.text)
    if isinstance(http, urllib3.HTTPConnectionPool):
        answer = http.urlopen(
            "GET",
            f"{_path_of(replica.url)}/metrics",
            headers=replica.headers(),
            timeout=timeout,
            retries=False,
            redirect=False,
        )
    else:
        answer = http.request(
            "GET", f"{replica.url}/metrics", headers=replica.headers(), timeout=timeout, retries=False, redirect=False
        )
    if answer.status >= 400:
        raise requests.HTTPError(f"{answer.status} from {replica.url}/metrics")
    return parse_gauges(answer.data.decode("utf-8", errors="replace"))


def parse_gauges(text: str) -> ReplicaGauges:
    gauges = ReplicaGauges()
    for name, _, value in parse_prometheus(text):
        if name == "cpu_usage_percentage":
            gauges.cpu_pct = value
        elif name == "mem_usage_percentage":
            gauges.mem_pct = value
        elif name == "in_flight_requests":
            gauges.in_flight = value
        elif name == "gpu_usage_percentage":
            gauges.gpu_pct.append(value)
    return gauges


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


class _Entity(NamedTuple):
    """What a metrics batch reads of a served entity."""

    name: str
    deployment_id: int | None


_POOL: tuple[int, ThreadPoolExecutor] | None = None


def _scrape_pool() -> ThreadPoolExecutor:
    """The process's scrape threads, started once (a batch starting its own 32 threads cost more
    than its scrapes' parsing); a forked child starts its own."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(max_workers=SCRAPE_THREADS, thread_name_prefix="metrics-scrape"))
    return _POOL[1]


def poll_metrics(endpoint: Endpoint) -> None:
    """Read the sources once and add one 15 s point per served entity and one for the endpoint."""
    error = poll_metrics_batch([endpoint]).get(endpoint.id)
    if error:
        raise MetricsPollError(error)


def poll_metrics_batch(endpoints: list[Endpoint]) -> dict[str, str]:
    """Poll many endpoints at once (the sweep's batch): the error of each endpoint whose replicas
    could not be read at all, keyed by id; the others polled.

    A fixed number of queries whatever the batch size (traffic configs, served entities, replicas,
    cursors, existing points, then bulk writes), one Redis pipeline for the gateway counters, and every replica's
    /metrics read concurrently, each with a timeout.
    """
    if not endpoints:
        return {}
    ts = int(time.time()) // BASE_RESOLUTION * BASE_RESOLUTION
    ids = [e.id for e in endpoints]
    configs = {e.id: e.active_config_id for e in endpoints}
    config_ids = [c for c in configs.values() if c is not None]
    traffic = dict(ConfigVersion.objects.filter(**bulk.in_ids("id", config_ids)).values_list("id", "traffic_config"))
    entities_by_config: dict[int, list[_Entity]] = defaultdict(list)
    for config_id, name, deployment_id in (
        ServedEntity.objects.filter(**bulk.in_ids("config_version_id", config_ids))
        .order_by("position")
        .values_list("config_version_id", "name", "deployment_id")
    ):
        entities_by_config[config_id].append(_Entity(name, deployment_id))
    entities = {eid: entities_by_config.get(c, []) if c is not None else [] for eid, c in configs.items()}
    pipe = get_redis().pipeline(transaction=False)
    for eid in ids:
        pipe.hgetall(redis_key(eid))
    counters: dict[str, dict[str, dict[str, float]]] = {}
    for eid, raw in zip(ids, pipe.execute(), strict=True):
        parsed: dict[str, dict[str, float]] = defaultdict(dict)
        for name, value in raw.items():
            entity_name, _, counter = name.rpartition("|")
            parsed[entity_name][counter] = float(value)
        counters[eid] = dict(parsed)

    # 1. Replica gauges, read concurrently, each with a timeout.
    urls_by_deployment = get_backend().ready_replicas(
        deployment_ids=[e.deployment_id for es in entities.values() for e in es if e.deployment_id]
    )
    jobs = [
        (eid, e.name, url)
        for eid, es in entities.items()
        for e in es
        if e.deployment_id is not None
        for url in urls_by_deployment.get(e.deployment_id, [])
    ]
    gauges: dict[tuple[str, str], list[ReplicaGauges]] = defaultdict(list)
    errors: dict[str, list[str]] = defaultdict(list)
    jobs_of: dict[str, int] = defaultdict(int)
    timeout = settings.POLL_HTTP_TIMEOUT_SECONDS
    # Each job's answer: the /metrics body, a https replica's gauges, or why it could not be read.
    results: list[tuple[bytes | ReplicaGauges | Exception, tuple[str, str, ReplicaTarget]]] = []
    # Plain http replicas (every local one): all read from this thread in one selectors loop
    # (``scrape.fetch_many``), a fraction of a pooled urllib3 request's CPU.
    plain = [job for job in jobs if scrape.plain_http(job[2].url)]
    if plain:
        answers = scrape.fetch_many(
            [(url.url, url.headers()) for _, _, url in plain], timeout=timeout, concurrency=SCRAPE_CONCURRENCY
        )
        results += zip(answers, plain, strict=True)
    others = [job for job in jobs if not scrape.plain_http(job[2].url)]
    if others:
        # One connection pool per replica address, made here: a PoolManager looked its pool up
        # (normalising the URL into a key) on every request, in the scrape threads.
        pools: dict[str, urllib3.HTTPConnectionPool] = {}
        for _, _, replica in others:
            if replica.url not in pools:
                pools[replica.url] = urllib3.connection_from_url(replica.url, maxsize=SCRAPE_THREADS, block=False)
        pool = _scrape_pool()
        futures = [(job, pool.submit(scrape_replica, job[2], timeout, pools[job[2].url])) for job in others]
        for job, future in futures:
            try:
                results.append((future.result(), job))
            except Exception as exc:  # noqa: BLE001 - reported below with the job's replica
                results.append((exc, job))
        for http in pools.values():
            http.close()  # the batch's connections
    for answer, (eid, name, url) in results:
        jobs_of[eid] += 1
        try:
            if isinstance(answer, Exception):
                raise answer
            if isinstance(answer, bytes):
                answer = parse_gauges(answer.decode("utf-8", errors="replace"))
            gauges[(eid, name)].append(answer)
        except Exception as exc:  # a dead replica is reported, the others still count
            errors[eid].append(f"{url}: {type(exc).__name__}: {exc}")

    # 2. Per-interval counts from the gateway's cumulative counters.
    cursors = {
        (eid, name): counters
        for eid, name, counters in MetricCursor.objects.filter(
            **bulk.in_ids("endpoint_id", ids, "varchar"), source="gateway"
        ).values_list("endpoint_id", "served_entity_name", "counters")
    }
    points: list[tuple[str, str, int, int, dict[str, Any]]] = []
    new_cursors: list[list[Any]] = []  # endpoint, served entity, source, counters, read at
    read_at = timezone.now()
    for eid in ids:
        intervals: dict[str, Interval] = {}
        for name in {e.name for e in entities[eid]} | set(counters[eid]):
            current = counters[eid].get(name, {})
            interval = Interval()
            interval.add_counts(counter_delta(cursors.get((eid, name)), current))
            if current:
                new_cursors.append([eid, name, "gateway", current, read_at])
            replica_gauges = gauges.get((eid, name), [])
            interval.cpu = [g.cpu_pct for g in replica_gauges if g.cpu_pct is not None]
            interval.mem = [g.mem_pct for g in replica_gauges if g.mem_pct is not None]
            interval.gpu = [v for g in replica_gauges for v in g.gpu_pct]
            if name != UNATTRIBUTED:
                interval.replicas = float(len(replica_gauges))
                interval.concurrency = float(sum(g.in_flight for g in replica_gauges))
            intervals[name] = interval
        active_id = configs[eid]
        total = endpoint_total(intervals, shadow_names(traffic.get(active_id) if active_id is not None else None))
        for name, interval in intervals.items():
            if name != UNATTRIBUTED:
                points.append((eid, name, BASE_RESOLUTION, ts, interval_values(interval)))
        points.append((eid, "", BASE_RESOLUTION, ts, interval_values(total)))

    # 3. Store points and cursors in one short transaction.
    store_cursors_and_points(new_cursors, points, ids)
    return {
        eid: f"could not read metrics from {len(errs)} replica(s): {'; '.join(errs)[:500]}"
        for eid, errs in errors.items()
        if len(errs) == jobs_of[eid]
    }


CURSOR_COLUMNS = (
    ("endpoint_id", "varchar"),
    ("served_entity_name", "varchar"),
    ("source", "varchar"),
    ("counters", "jsonb"),
    ("read_at", "timestamptz"),
)


def store_cursors_and_points(
    cursors: list[list[Any]], points: list[tuple[str, str, int, int, dict[str, Any]]], endpoint_ids: list[str]
) -> None:
    """Upsert counter cursors (``CURSOR_COLUMNS`` rows) and write points in one short transaction.
    An endpoint deleted meanwhile fails it (foreign keys are checked at commit), or a deadlock with
    that delete does: once more without the endpoints that are gone."""

    def store_batch(batch_cursors: list[list[Any]], batch_points: list[Any]) -> None:
        with transaction.atomic():
            bulk.upsert_rows(
                MetricCursor._meta.db_table,
                CURSOR_COLUMNS,
                batch_cursors,
                conflict=("endpoint_id", "served_entity_name", "source"),
                update=("counters", "read_at"),
            )
            store.write_points(batch_points)

    try:
        store_batch(cursors, points)
    except (IntegrityError, OperationalError):
        alive = set(Endpoint.fleet.filter(id__in=endpoint_ids).values_list("id", flat=True))
        store_batch([c for c in cursors if c[0] in alive], [p for p in points if p[0] in alive])


def endpoint_total(intervals: dict[str, Interval], shadows: set[str]) -> Interval:
    """The endpoint's interval: its entities' (and unattributed) counts added up, gauges pooled.
    A shadow's mirrors are not queries of the endpoint: its own series only (gateway.shadow)."""
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
    return total


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
    store.write_point(endpoint_id, entity, resolution, ts, interval_values(interval))


def interval_values(interval: Interval) -> dict[str, Any]:
    """One interval as the values of a hot point (``store.write_point``)."""
    return {
        "request_count": interval.request_count,
        "count_4xx": interval.count_4xx,
        "count_5xx": interval.count_5xx,
        "latency_sum_ms": interval.latency_sum_ms,
        "latency_buckets": interval.buckets,
        "p50_ms": quantile(interval.buckets, 0.5),
        "p90_ms": quantile(interval.buckets, 0.9),
        "p99_ms": quantile(interval.buckets, 0.99),
        "cpu_pct": _mean(interval.cpu),
        "mem_pct": _mean(interval.mem),
        "gpu_pct": _mean(interval.gpu),
        "replicas": interval.replicas,
        "concurrency": interval.concurrency,
        "samples": 1,
        "shadow_compared": interval.shadow_compared,
        "shadow_agreed": interval.shadow_agreed,
        "shadow_dropped": interval.shadow_dropped,
    }


def merge_points(points: list[MetricPoint]) -> dict[str, Any]:
    """Field values of one point made of several: counts and buckets add up, gauges average."""
    return store.merge_values(
        [{**{f: getattr(p, f) for f in store.FIELDS}, "latency_buckets": p.latency_buckets} for p in points]
    )


# --- downsampling and retention -------------------------------------------------------------------


def rollup(now: float | None = None) -> int:
    """Downsample and pack (``store.rollup``)."""
    return store.rollup(now)


def prune(now: float | None = None) -> int:
    """Apply each tier's retention (``store.prune``)."""
    return store.prune(now)


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
    # end + 1: the interval that starts at ``end`` is shown too (a chart that ends now shows the
    # interval polled this second, not only from the next second on).
    ts, columns = store.read_columns(endpoint.id, resolution=resolution, start=start, end=end + 1, entity=served_entity)
    buckets, index = np.unique(ts // step * step, return_inverse=True)
    values = _bucket_values(columns, index, len(buckets), step)
    out: dict[str, list[list[float | None]]] = {
        m: [[int(b) * 1000, v] for b, v in zip(buckets.tolist(), values[m], strict=True)] for m in metrics
    }
    return {"resolution": resolution, "step": step, "start": start * 1000, "end": end * 1000, "series": out}


def _bucket_values(
    columns: dict[str, np.ndarray], index: np.ndarray, n: int, step: int
) -> dict[str, list[float | None]]:
    """Each chart bucket (``index`` maps intervals to buckets): rates from summed counts, p50/p90
    weighted by requests, the worst p99, gauges averaged over the intervals that have them."""

    def total(field_name: str) -> np.ndarray:
        return np.bincount(index, weights=np.nan_to_num(columns[field_name]), minlength=n)

    def mean(field_name: str) -> np.ndarray:
        column = columns[field_name]
        has = ~np.isnan(column)
        counts = np.bincount(index, weights=has, minlength=n)
        sums = np.bincount(index, weights=np.where(has, column, 0.0), minlength=n)
        return np.divide(sums, counts, out=np.full(n, np.nan), where=counts > 0)

    def weighted(field_name: str) -> np.ndarray:
        column, requests = columns[field_name], np.nan_to_num(columns["request_count"])
        has = ~np.isnan(column)
        weight = np.bincount(index, weights=np.where(has, requests, 0.0), minlength=n)
        sums = np.bincount(index, weights=np.where(has, column * requests, 0.0), minlength=n)
        return np.divide(sums, weight, out=np.full(n, np.nan), where=weight > 0)

    p99 = np.full(n, -np.inf)
    np.maximum.at(p99, index, np.where(np.isnan(columns["p99_ms"]), -np.inf, columns["p99_ms"]))
    p99[np.isinf(p99)] = np.nan
    compared = total("shadow_compared")
    arrays = {
        "request_rate": total("request_count") / step,
        "error_4xx_rate": total("count_4xx") / step,
        "error_5xx_rate": total("count_5xx") / step,
        "p50_ms": weighted("p50_ms"),
        "p90_ms": weighted("p90_ms"),
        "p99_ms": p99,
        "cpu_pct": mean("cpu_pct"),
        "mem_pct": mean("mem_pct"),
        "gpu_pct": mean("gpu_pct"),
        "replicas": mean("replicas"),
        "concurrency": mean("concurrency"),
        "agreement_rate": np.divide(total("shadow_agreed"), compared, out=np.full(n, np.nan), where=compared > 0),
        "shadow_dropped_rate": total("shadow_dropped") / step,
    }
    return {name: [None if v != v else v for v in array.tolist()] for name, array in arrays.items()}
