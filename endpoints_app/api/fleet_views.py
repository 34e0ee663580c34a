"""The fleet API (issue 16): every workspace's endpoints in one list, and one endpoint's charts and
logs whichever workspace it is in.

- ``GET /api/2.0/modelfleet/fleet/endpoints``: the fleet list's rows, filtered, sorted and paged
  exactly as the page (``q``, ``workspace``, ``state``, ``health``, ``tag``, ``owner``, ``sort``,
  ``page``, ``per_page``; see ``selectors.fleet.FleetQuery``), each with its workspace and
  whether its data is stale. A user sees the workspaces granted to them only.
- ``GET …/fleet/endpoints/<workspace>/<name>``: one endpoint in the same shape.
- ``GET …/fleet/endpoints/<workspace>/<name>/metric-series`` and ``/log-lines``: the series and
  the stored log lines, as the local routes answer them (``local`` finds local endpoints).
- ``GET | POST …/fleet/endpoints/<workspace>/<name>/alert-rules``: its alert rules (creating one
  needs CAN_MANAGE on a local endpoint, the editor role or higher in a remote one's workspace).

Remote endpoints are read here; their changes go through the approval gate at
``/api/2.0/modelfleet/workspaces/<workspace>/serving-endpoints/…`` (``api.remote_changes_views``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from django.core.paginator import Paginator
from django.urls import URLPattern, path
from rest_framework.response import Response

from endpoints_app.api.serializers.alerts import serialize_alert_rule
from endpoints_app.api.serializers.fleet import serialize_fleet_endpoint
from endpoints_app.api.serializers.logs import serialize_log_line
from endpoints_app.api.views import ApiView, request_body
from endpoints_app.authenticated import AuthenticatedRequest
from endpoints_app.filters import LogLineFilterSet, MetricSeriesFilterSet
from endpoints_app.filters.fields import to_epoch_seconds
from endpoints_app.models import Endpoint
from endpoints_app.monitoring import alerts, logs, metrics
from endpoints_app.selectors import endpoint_is_ready
from endpoints_app.selectors.fleet import FleetQuery, FleetRows, fleet_endpoint, matching_endpoints

if TYPE_CHECKING:
    from endpoints_app.selectors.fleet import FleetEndpoint


def _ready(endpoint: Endpoint, *, serving: bool | None = None) -> str:
    if endpoint.workspace_id is not None:
        return (endpoint.remote_state or {}).get("ready") or "NOT_READY"
    ok = serving if serving is not None else endpoint_is_ready(endpoint)
    return "READY" if ok else "NOT_READY"


class FleetEndpointListView(ApiView):
    def get(self, request: AuthenticatedRequest) -> Response:
        now = time.time()
        moment = datetime.fromtimestamp(now, tz=UTC)
        query = FleetQuery.parse(request.query_params)
        paginator: Paginator[FleetEndpoint] = Paginator(
            FleetRows(matching_endpoints(request.user, query, now=now)),  # type: ignore[arg-type]
            query.per_page,
        )
        page = paginator.get_page(query.page)
        rows = [
            serialize_fleet_endpoint(
                e, ready=_ready(e, serving=bool(e.serving)), now=moment, last_polled=e.last_polled_at
            )
            for e in page.object_list
        ]
        return Response(
            {
                "endpoints": rows,
                "page": page.number,
                "per_page": query.per_page,
                "total": paginator.count,
                "has_next": page.has_next(),
            }
        )


class FleetEndpointView(ApiView):
    def get(self, request: AuthenticatedRequest, workspace: str, name: str) -> Response:
        endpoint = fleet_endpoint(request.user, workspace, name)
        return Response(serialize_fleet_endpoint(endpoint, ready=_ready(endpoint), now=datetime.now(UTC)))


class FleetMetricSeriesView(ApiView):
    def get(self, request: AuthenticatedRequest, workspace: str, name: str) -> Response:
        endpoint = fleet_endpoint(request.user, workspace, name)
        now = datetime.now(UTC)
        filters = MetricSeriesFilterSet(request.query_params, now=now)
        filters.raise_if_invalid()
        served = filters.value("served_model") or ""
        data = metrics.series(
            endpoint,
            filters.value("metrics"),
            start=to_epoch_seconds(filters.value("start")),
            end=to_epoch_seconds(filters.value("end")),
            served_entity=served,
            now=now.timestamp(),
        )
        return Response({"endpoint": endpoint.name, "workspace": workspace, "served_model": served or None, **data})


class FleetLogLinesView(ApiView):
    def get(self, request: AuthenticatedRequest, workspace: str, name: str) -> Response:
        endpoint = fleet_endpoint(request.user, workspace, name)
        filters = LogLineFilterSet(request.query_params)
        filters.raise_if_invalid()
        page = logs.log_lines(endpoint=endpoint, query=filters.log_query())
        return Response(
            {"lines": [serialize_log_line(line) for line in page.lines], "next_page_token": page.next_page_token}
        )


class FleetAlertRulesView(ApiView):
    """An endpoint's alert rules whichever workspace it is in: evaluated and emailed as local ones."""

    def get(self, request: AuthenticatedRequest, workspace: str, name: str) -> Response:
        endpoint = fleet_endpoint(request.user, workspace, name)
        return Response({"rules": [serialize_alert_rule(r) for r in alerts.rules_of(endpoint)]})

    def post(self, request: AuthenticatedRequest, workspace: str, name: str) -> Response:
        endpoint = fleet_endpoint(request.user, workspace, name, manage=True)
        rule = alerts.create_alert_rule(endpoint=endpoint, actor=request.user, data=request_body(request))
        return Response(serialize_alert_rule(alerts.rule_of(endpoint, rule.id)))


F = "api/2.0/modelfleet/fleet/endpoints"
urlpatterns: list[URLPattern] = [
    path(F, FleetEndpointListView.as_view()),
    path(f"{F}/<str:workspace>/<str:name>", FleetEndpointView.as_view()),
    path(f"{F}/<str:workspace>/<str:name>/metric-series", FleetMetricSeriesView.as_view()),
    path(f"{F}/<str:workspace>/<str:name>/log-lines", FleetLogLinesView.as_view()),
    path(f"{F}/<str:workspace>/<str:name>/alert-rules", FleetAlertRulesView.as_view()),
]
