"""The fleet list's rows, headers and page links, shaped for its templates.

Row cells with loops are built here as HTML rather than in the template: 50 rows of nested template
loops cost more than every query of the page together. Every value goes through ``format_html``.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from django.core.paginator import Page
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from endpoints_app.models import ConfigUpdate, Endpoint, EndpointTag, HealthStatus, ServedEntity
from endpoints_app.models.workspaces import LOCAL_WORKSPACE
from endpoints_app.monitoring.remote import stale_reason
from endpoints_app.selectors.fleet import METRIC_SORTS, STATES, FleetQuery, RowMetrics

if TYPE_CHECKING:
    from endpoints_app.selectors.fleet import FleetEndpoint


def sparkline(values: list[float | None], *, width: int = 120, height: int = 28) -> list[str]:
    """SVG polyline ``points`` for the values: one polyline per run without gaps (None is a gap)."""
    top = max((v for v in values if v is not None), default=0.0) or 1.0
    step = width / max(len(values) - 1, 1)
    runs: list[list[str]] = []
    current: list[str] = []
    for i, value in enumerate(values):
        if value is None:
            if current:
                runs.append(current)
            current = []
            continue
        current.append(f"{i * step:.1f},{height - 1 - (value / top) * (height - 2):.1f}")
    if current:
        runs.append(current)
    # A lone point is drawn as a short flat line so it shows.
    return [" ".join(run if len(run) > 1 else [run[0], _nudge(run[0])]) for run in runs]


def _nudge(point: str) -> str:
    x, y = point.split(",")
    return f"{float(x) + 1.5:.1f},{y}"


def state_label(state_key: str, serving: bool) -> str:
    """The badge words Databricks' UI uses (reference §2.6)."""
    if state_key == "updating":
        return "Ready (Updating)" if serving else "Not ready (Updating)"
    if state_key == "update_failed":
        return "Ready (Update failed)" if serving else "Not ready (Update failed)"
    return STATES[state_key]


def traffic_split(endpoint: Endpoint) -> list[dict[str, Any]]:
    """The routes of the serving config (the pending one while nothing serves yet), for the split bar."""
    config = endpoint.active_config or endpoint.pending_config
    if config is None:
        return []
    routes = (config.traffic_config or {}).get("routes") or []
    return [
        {
            "name": r.get("served_model_name") or r.get("served_entity_name") or "",
            "pct": r.get("traffic_percentage") or 0,
            "colour": i % 6,
        }
        for i, r in enumerate(routes)
    ]


def _entities_html(active: list[ServedEntity], pending: list[ServedEntity]) -> SafeString:
    def model(e: ServedEntity) -> str:
        if e.external_model:
            return f"{e.external_model.get('provider', '')} {e.external_model.get('name', '')}"
        return f"{e.entity_name} v{e.entity_version}"

    html = format_html_join(
        "",
        '<div><span class="entity-name">{}</span> <span class="muted">{}</span></div>',
        ((e.name, model(e)) for e in active or pending),
    )
    if active and pending:
        names = ", ".join(e.name for e in pending)
        html += format_html('<div class="muted small">updating to: {}</div>', names)
    return html


def _split_html(split: list[dict[str, Any]]) -> SafeString:
    if not split:
        return mark_safe('<span class="muted">–</span>')
    return format_html(
        '<div class="split" role="img" aria-label="Traffic split: {}">{}</div><div class="split-legend small">{}</div>',
        ", ".join(f"{r['name']} {r['pct']}%" for r in split),
        format_html_join(
            "",
            '<span class="seg c{} share-{}" title="{} {}%"></span>',  # share-N: no style attribute (CSP)
            ((r["colour"], r["pct"], r["name"], r["pct"]) for r in split if r["pct"]),
        ),
        format_html_join(
            "", '<span><i class="dot c{}" aria-hidden="true"></i>{}%</span>', ((r["colour"], r["pct"]) for r in split)
        ),
    )


def _spark_html(metrics: RowMetrics) -> SafeString:
    if not metrics.has_points:
        return mark_safe("")
    peak = format_rate(max((v for v in metrics.buckets if v is not None), default=0.0))
    return format_html(
        '<svg class="spark" viewBox="0 0 120 28" width="120" height="28" preserveAspectRatio="none" role="img" '
        'aria-label="Requests per second over the last hour, peak {}"><title>Requests/s, last hour (peak {})</title>'
        "{}</svg>",
        peak,
        peak,
        format_html_join("", '<polyline points="{}"/>', ((points,) for points in sparkline(metrics.buckets))),
    )


def _tags_html(tags: list[EndpointTag]) -> SafeString:
    if not tags:
        return mark_safe("")
    return format_html(
        '<div class="tags">{}</div>',
        format_html_join(
            "", '<span class="tag">{}</span>', ((f"{t.key}={t.value}" if t.value else t.key,) for t in tags)
        ),
    )


def row(endpoint: FleetEndpoint, metrics: RowMetrics | None, *, now: datetime) -> dict[str, Any]:
    """One table row: ``endpoint`` as ``FleetRows`` loads it, ``metrics`` none when it has no points."""
    active = list(endpoint.active_config.served_entities.all()) if endpoint.active_config is not None else []
    pending: list[ServedEntity] = []
    updating = endpoint.config_update in (ConfigUpdate.IN_PROGRESS, ConfigUpdate.UPDATE_FAILED)
    if updating and endpoint.pending_config is not None:
        pending = list(endpoint.pending_config.served_entities.all())
    metrics = metrics or RowMetrics()
    polled = endpoint.last_polled_at
    workspace = endpoint.workspace.name if endpoint.workspace is not None else LOCAL_WORKSPACE
    return {
        "name": endpoint.name,
        "workspace": workspace,
        "url": endpoint_url(endpoint),
        "stale": stale_reason(endpoint, now=now),
        "state": state_label(endpoint.state_key, endpoint.serving),
        "badge": endpoint.state_key,
        "health_key": endpoint.health.lower(),
        "health": HealthStatus(endpoint.health).label if endpoint.health in HealthStatus.values else endpoint.health,
        "health_reason": endpoint.health_reason,
        "owner": endpoint.creator.username
        if endpoint.creator is not None
        else ((endpoint.remote_state or {}).get("creator") or "–"),  # a remote endpoint: its remote creator
        "tags_html": _tags_html(list(endpoint.tags.all())),
        "entities_html": _entities_html(active, pending),
        "split_html": _split_html(traffic_split(endpoint)),
        "spark_html": _spark_html(metrics),
        "rate": format_rate(metrics.request_rate),
        "error_pct": format_pct(metrics.error_pct),
        "client_error_pct": format_pct(metrics.client_error_pct),
        "p99": format_ms(metrics.recent_p99),
        "polled_iso": polled.isoformat() if polled else "",
        "polled_ago": format_ago((now - polled).total_seconds()) if polled else "",
    }


def endpoint_url(endpoint: Endpoint) -> str:
    """The endpoint page: ``/endpoints/<name>/`` for a local one, under its workspace for a remote one."""
    if endpoint.workspace_id is None:
        return f"/endpoints/{quote(endpoint.name, safe='')}/"
    assert endpoint.workspace is not None
    return f"/workspaces/{quote(endpoint.workspace.name, safe='')}/endpoints/{quote(endpoint.name, safe='')}/"


def columns(query: FleetQuery) -> list[dict[str, Any]]:
    """Sortable column headers: label, link (toggling the direction) and aria-sort."""
    columns = []
    for key, label in (
        ("name", "Name"),
        ("workspace", "Workspace"),
        ("state", "State"),
        (None, "Served models"),
        (None, "Traffic"),
        ("requests", "Requests/s"),
        ("errors", "Errors"),
        ("p99", "p99"),
        ("health", "Health"),
        ("owner", "Owner"),
        ("polled", "Last polled"),
    ):
        column: dict[str, Any] = {"key": key, "label": label}
        if key is not None:
            current = query.sort == key
            descending = not query.descending if current else key in METRIC_SORTS or key in ("updated", "polled")
            column["url"] = "?" + query.querystring(sort=("-" if descending else "") + key, page="1")
            column["aria_sort"] = ("descending" if query.descending else "ascending") if current else ""
        columns.append(column)
    return columns


def page_links(page: Page, query: FleetQuery) -> list[dict[str, Any]]:
    """Links to the first, last and nearby pages, with gaps marked by None."""
    total = page.paginator.num_pages
    wanted = sorted({1, total, *range(max(1, page.number - 2), min(total, page.number + 2) + 1)})
    links: list[dict[str, Any]] = []
    previous = 0
    for number in wanted:
        if number - previous > 1:
            links.append({"gap": True})
        links.append({"number": number, "url": "?" + query.querystring(page=number), "current": number == page.number})
        previous = number
    return links


def format_rate(value: float | None) -> str:
    if value is None:
        return "–"
    if value == 0:
        return "0"
    if value < 0.1:
        return f"{value:.3f}"
    return f"{value:.2f}" if value < 10 else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def format_ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def format_pct(value: float | None) -> str:
    if value is None:
        return "–"
    return "0 %" if value == 0 else f"{value:.2f} %" if value < 10 else f"{value:.0f} %"


def format_ms(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{value:.1f} ms" if value < 100 else f"{value:,.0f} ms"
