"""The fleet-wide Prometheus scrape target (``GET /metrics``), built with ``prometheus_client``.

Per endpoint and served entity, the series of the per-endpoint export (``monitoring.export``) under
the same Databricks names and labels (``endpoint``, ``served_entity``): the gateway's cumulative
request counters and latency histogram (live, from Redis) and the gauges of the newest 15 s point
the poller stored (CPU %, memory %, GPU %, concurrency, replicas). Then what only the fleet knows:
each endpoint's health and update state, and the heartbeats of every Modelfleet process (web,
worker, beat, agent) with their CPU, memory, file descriptors and threads (``observability.processes``).

A scrape costs a fixed number of queries whatever the fleet's size (``QUERY_BUDGET``, asserted in
tests/test_ops.py) and one Redis pipeline for all endpoints' counters.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from typing import cast

from django.db.models import Count
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector

from endpoints_app.gateway.metrics import UNATTRIBUTED, cumulative_buckets, redis_key
from endpoints_app.models import ConfigUpdate, Deployment, Endpoint, HealthStatus, MetricPoint, Replica, ServedEntity
from endpoints_app.observability import processes
from endpoints_app.redis_client import get_redis

GAUGE_MAX_AGE_SECONDS = 120
QUERY_BUDGET = 5  # endpoints, served entities, newest points, deployments, replica starts
ENDPOINT_LABELS = ["endpoint", "served_entity"]
PROCESS_LABELS = ["role", "instance"]

# (Databricks name, MetricPoint column, help): the gauges the per-endpoint export also serves.
GAUGES: tuple[tuple[str, str, str], ...] = (
    ("cpu_usage_percentage", "cpu_pct", "CPU used by the served entity's replicas, mean % of one core."),
    ("mem_usage_percentage", "mem_pct", "Memory used by the served entity's replicas, mean % of the host."),
    ("gpu_usage_percentage", "gpu_pct", "GPU utilisation of the served entity's replicas, mean %."),
    ("provisioned_concurrent_requests_total", "concurrency", "Requests being handled by the served entity now."),
    ("replicas", "replicas", "Ready replicas of the served entity."),
)


class FleetCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        now = time.time()
        endpoints = list(Endpoint.objects.only("id", "name", "active_config_id", "health", "config_update"))
        active = {e.active_config_id: e for e in endpoints if e.active_config_id is not None}
        entities: dict[str, list[str]] = defaultdict(list)  # endpoint id -> served entity names
        deployment_entity: dict[int, tuple[str, str]] = {}  # deployment id -> (endpoint name, entity)
        for config_id, name, deployment_id in ServedEntity.objects.filter(
            config_version_id__in=list(active)
        ).values_list("config_version_id", "name", "deployment_id"):
            endpoint = active[config_id]
            entities[endpoint.id].append(name)
            if deployment_id is not None:
                deployment_entity[deployment_id] = (endpoint.name, name)

        yield from self._requests(endpoints, entities)
        yield from self._gauges(endpoints, entities, now)
        yield from self._deployments(deployment_entity)
        yield from self._endpoint_states(endpoints)

    @staticmethod
    def _requests(endpoints: list[Endpoint], entities: dict[str, list[str]]) -> Iterator[Metric]:
        pipe = get_redis().pipeline(transaction=False)
        for endpoint in endpoints:
            pipe.hgetall(redis_key(endpoint.id))
        raw_counters = cast(list[dict[str, str]], pipe.execute()) if endpoints else []
        families = {
            field: CounterMetricFamily(name, help_text, labels=ENDPOINT_LABELS)
            for field, name, help_text in (
                ("count", "request_count", "Queries answered by the endpoint."),
                ("4xx", "request_4xx_count", "Queries answered with a 4xx status."),
                ("5xx", "request_5xx_count", "Queries answered with a 5xx status."),
            )
        }
        latency = HistogramMetricFamily(
            "request_latency_ms", "Query latency seen by the gateway, milliseconds.", labels=ENDPOINT_LABELS
        )
        for endpoint, raw in zip(endpoints, raw_counters, strict=True):
            counters: dict[str, dict[str, float]] = defaultdict(dict)
            for field, value in raw.items():
                entity, _, name = field.rpartition("|")
                counters[entity][name] = float(value)
            for entity in sorted(set(entities.get(endpoint.id, [])) | set(counters)):
                values = counters.get(entity, {})
                labels = [endpoint.name, "" if entity == UNATTRIBUTED else entity]
                for field, family in families.items():
                    family.add_metric(labels, values.get(field, 0.0))
                latency.add_metric(labels, cumulative_buckets(values), values.get("sum", 0.0))
        yield from families.values()
        yield latency

    @staticmethod
    def _gauges(endpoints: list[Endpoint], entities: dict[str, list[str]], now: float) -> Iterator[Metric]:
        names = {e.id: e.name for e in endpoints}
        latest: dict[tuple[str, str], dict[str, float | None]] = {}
        columns = [column for _, column, _ in GAUGES]
        points = (
            MetricPoint.objects.filter(resolution=15, ts__gte=int(now) - GAUGE_MAX_AGE_SECONDS)
            .order_by("ts")
            .values_list("endpoint_id", "served_entity_name", *columns)
        )
        for endpoint_id, entity, *values in points:
            if entity in entities.get(endpoint_id, ()):
                latest[(endpoint_id, entity)] = dict(zip(columns, values, strict=True))
        for name, column, help_text in GAUGES:
            family = GaugeMetricFamily(name, help_text, labels=ENDPOINT_LABELS)
            for (endpoint_id, entity), values in sorted(latest.items()):
                value = values[column]
                if value is not None:
                    family.add_metric([names[endpoint_id], entity], value)
            yield family

    @staticmethod
    def _deployments(deployment_entity: dict[int, tuple[str, str]]) -> Iterator[Metric]:
        target = GaugeMetricFamily(
            "replicas_target", "Replicas the autoscaler wants for the served entity.", labels=ENDPOINT_LABELS
        )
        for deployment_id, desired in Deployment.objects.filter(id__in=list(deployment_entity)).values_list(
            "id", "desired_replicas"
        ):
            target.add_metric(list(deployment_entity[deployment_id]), desired)
        yield target
        starts = CounterMetricFamily(
            "cold_starts", "Replicas started for the served entity (each load of the model).", labels=ENDPOINT_LABELS
        )
        counts = (
            Replica.objects.filter(deployment_id__in=list(deployment_entity))
            .values_list("deployment_id")
            .annotate(n=Count("id"))
        )
        for deployment_id, n in sorted(counts, key=lambda row: deployment_entity[row[0]]):
            starts.add_metric(list(deployment_entity[deployment_id]), n)
        yield starts

    @staticmethod
    def _endpoint_states(endpoints: list[Endpoint]) -> Iterator[Metric]:
        health = GaugeMetricFamily(
            "modelfleet_endpoint_health",
            "1 for the endpoint's current health from the status poller, 0 for the others.",
            labels=["endpoint", "health"],
        )
        updating = GaugeMetricFamily(
            "modelfleet_endpoint_config_updating",
            "1 while a config update of the endpoint is in progress (or failed and not yet replaced).",
            labels=["endpoint", "config_update"],
        )
        for endpoint in endpoints:
            for state in HealthStatus.values:
                health.add_metric([endpoint.name, state], 1.0 if endpoint.health == state else 0.0)
            updating.add_metric(
                [endpoint.name, endpoint.config_update],
                0.0 if endpoint.config_update == ConfigUpdate.NOT_UPDATING else 1.0,
            )
        yield health
        yield updating
        count = GaugeMetricFamily("modelfleet_endpoints", "Serving endpoints in the fleet.")
        count.add_metric([], len(endpoints))
        yield count


class ProcessCollector(Collector):
    """The heartbeats of every Modelfleet process, wherever it runs (one Redis SCAN and pipeline)."""

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        beats = processes.read_all()
        up = GaugeMetricFamily(
            "modelfleet_process_up",
            f"1 while the process's heartbeat is at most {processes.DOWN_AFTER_SECONDS:g} s old.",
            labels=PROCESS_LABELS,
        )
        cpu = CounterMetricFamily(
            "modelfleet_process_cpu_seconds",
            "User and system CPU time of the process (a worker's pool children included).",
            labels=PROCESS_LABELS,
        )
        gauges = {
            "resident_memory_bytes": GaugeMetricFamily(
                "modelfleet_process_resident_memory_bytes", "Resident memory of the process.", labels=PROCESS_LABELS
            ),
            "open_fds": GaugeMetricFamily(
                "modelfleet_process_open_fds", "Open file descriptors of the process.", labels=PROCESS_LABELS
            ),
            "threads": GaugeMetricFamily(
                "modelfleet_process_threads", "Threads of the process.", labels=PROCESS_LABELS
            ),
            "start_time_seconds": GaugeMetricFamily(
                "modelfleet_process_start_time_seconds", "When the process started, Unix time.", labels=PROCESS_LABELS
            ),
        }
        age = GaugeMetricFamily(
            "modelfleet_process_heartbeat_age_seconds",
            "Seconds since the process's last heartbeat.",
            labels=PROCESS_LABELS,
        )
        for beat in beats:
            labels = [beat.role, beat.instance]
            up.add_metric(labels, 1.0 if beat.up(now) else 0.0)
            cpu.add_metric(labels, beat.cpu_seconds)
            for field, family in gauges.items():
                family.add_metric(labels, getattr(beat, field))
            age.add_metric(labels, max(0.0, now - beat.beat_at))
        yield up
        yield cpu
        yield from gauges.values()
        yield age


def render(*, openmetrics: bool = False) -> bytes:
    """The whole fleet's exposition (a fresh registry per scrape: nothing is cached between scrapes)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector())
    registry.register(ProcessCollector())
    return generate_openmetrics(registry) if openmetrics else generate_latest(registry)


def render_processes() -> bytes:
    """Only the processes' series (no database query)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProcessCollector())
    return generate_latest(registry)
