"""An endpoint's metrics in Prometheus (or OpenMetrics) text, for scrapers and the SDK's export_metrics.

Counters and the latency histogram are the gateway's cumulative ones (live, from Redis); gauges
(CPU %, memory %, replicas, concurrency) come from the newest 15 s point the poller stored.
Metric names follow Databricks' (reference §4.6).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from django.db.models import Count

from endpoints_app.gateway.metrics import UNATTRIBUTED, cumulative_buckets, read_counters
from endpoints_app.models import Deployment, Endpoint, MetricPoint, Replica, ScalingDecision

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
GAUGE_MAX_AGE_SECONDS = 120


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(endpoint: Endpoint, *, openmetrics: bool = False) -> str:
    lines: list[str] = []
    counters = read_counters(endpoint.id)
    config = endpoint.active_config  # None without a query when there is no active config
    entities = [e.name for e in config.served_entities.all()] if config is not None else []
    names = sorted(set(entities) | set(counters))

    def labels(entity: str, extra: str = "") -> str:
        served = "" if entity == UNATTRIBUTED else entity
        text = f'endpoint="{_escape(endpoint.name)}",served_entity="{_escape(served)}"'
        return "{" + text + (f",{extra}" if extra else "") + "}"

    def family(name: str, kind: str, help_text: str) -> None:
        # OpenMetrics names a counter family without its _total suffix.
        family_name = name[: -len("_total")] if openmetrics and kind == "counter" and name.endswith("_total") else name
        lines.append(f"# HELP {family_name} {help_text}")
        lines.append(f"# TYPE {family_name} {kind}")

    for metric, field, help_text in (
        ("request_count_total", "count", "Queries answered by the endpoint."),
        ("request_4xx_count_total", "4xx", "Queries answered with a 4xx status."),
        ("request_5xx_count_total", "5xx", "Queries answered with a 5xx status."),
    ):
        family(metric, "counter", help_text)
        for entity in names:
            lines.append(f"{metric}{labels(entity)} {counters.get(entity, {}).get(field, 0.0):g}")

    family("request_latency_ms", "histogram", "Query latency seen by the gateway, milliseconds.")
    for entity in names:
        values = counters.get(entity, {})
        for le, count in cumulative_buckets(values):
            le_label = f'le="{le}"'
            lines.append(f"request_latency_ms_bucket{labels(entity, le_label)} {count:g}")
        lines.append(f"request_latency_ms_sum{labels(entity)} {values.get('sum', 0.0):.3f}")
        lines.append(f"request_latency_ms_count{labels(entity)} {values.get('count', 0.0):g}")

    # Shadows (gateway.shadow): listed only when some entity has mirrored queries.
    shadows = [entity for entity in names if any(k.startswith("shadow_") for k in counters.get(entity, {}))]
    for metric, field, help_text in (
        ("shadow_predictions_compared_total", "shadow_compared", "A shadow's predictions compared with the primary's."),
        ("shadow_predictions_agreed_total", "shadow_agreed", "A shadow's predictions that agreed with the primary's."),
        ("shadow_mirrors_dropped_total", "shadow_dropped", "Queries not mirrored to a shadow: queue full, no replica."),
    ):
        if shadows:
            family(metric, "counter", help_text)
        for entity in shadows:
            lines.append(f"{metric}{labels(entity)} {counters[entity].get(field, 0.0):g}")

    latest = _latest_points(endpoint, entities)
    for metric, attr, help_text in (
        ("cpu_usage_percentage", "cpu_pct", "CPU used by the served entity's replicas, mean % of one core."),
        ("mem_usage_percentage", "mem_pct", "Memory used by the served entity's replicas, mean % of the host."),
        ("gpu_usage_percentage", "gpu_pct", "GPU utilisation of the served entity's replicas, mean %."),
        ("provisioned_concurrent_requests_total", "concurrency", "Requests being handled by the served entity now."),
        ("replicas", "replicas", "Ready replicas of the served entity."),
    ):
        family(metric, "gauge", help_text)
        for entity in entities:
            point = latest.get(entity)
            value = getattr(point, attr) if point is not None else None
            if value is not None:
                lines.append(f"{metric}{labels(entity)} {value:g}")
    _cold_starts(endpoint, family, labels, lines)
    if openmetrics:
        lines.append("# EOF")
    return "\n".join(lines) + "\n"


def _latest_points(endpoint: Endpoint, entities: list[str]) -> dict[str, MetricPoint]:
    since = int(time.time()) - GAUGE_MAX_AGE_SECONDS
    latest: dict[str, MetricPoint] = {}
    for point in MetricPoint.objects.filter(
        endpoint=endpoint, resolution=15, ts__gte=since, served_entity_name__in=entities
    ).order_by("ts"):
        latest[point.served_entity_name] = point
    return latest


def _cold_starts(
    endpoint: Endpoint,
    family: Callable[[str, str, str], None],
    labels: Callable[[str], str],
    lines: list[str],
) -> None:
    """Replica starts of each active served entity and how long the latest took to become ready."""
    config = endpoint.active_config
    if config is None:
        return
    entities = {e.deployment_id: e.name for e in config.served_entities.all() if e.deployment_id}
    starts: dict[str, int] = {}
    latest: dict[str, float] = {}
    for replica in Replica.objects.filter(deployment_id__in=list(entities)).order_by("started_at"):
        name = entities[replica.deployment_id]
        starts[name] = starts.get(name, 0) + 1
        if replica.ready_at is not None:
            latest[name] = (replica.ready_at - replica.started_at).total_seconds()
    family("cold_starts_total", "counter", "Replicas started for the served entity (each load of the model).")
    for name, count in sorted(starts.items()):
        lines.append(f"cold_starts_total{labels(name)} {count}")
    family("cold_start_duration_seconds", "gauge", "Seconds the latest replica took from start to ready.")
    for name, seconds in sorted(latest.items()):
        lines.append(f"cold_start_duration_seconds{labels(name)} {seconds:.3f}")
    deployments = {d.id: d for d in Deployment.objects.filter(id__in=list(entities))}
    family("replicas_target", "gauge", "Replicas the autoscaler wants for the served entity.")
    for deployment_id, name in sorted(entities.items(), key=lambda item: item[1]):
        if deployment_id in deployments:
            lines.append(f"replicas_target{labels(name)} {deployments[deployment_id].desired_replicas}")
    decisions = dict(
        ScalingDecision.objects.filter(deployment_id__in=list(entities))
        .values_list("deployment_id")
        .annotate(n=Count("id"))
    )
    family("scaling_decisions_total", "counter", "Autoscaler decisions (scale up, down, to zero, wake-up).")
    for deployment_id, name in sorted(entities.items(), key=lambda item: item[1]):
        lines.append(f"scaling_decisions_total{labels(name)} {decisions.get(deployment_id, 0)}")
