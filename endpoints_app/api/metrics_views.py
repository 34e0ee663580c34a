"""Metrics export (Databricks' GET …/metrics) and the chart series API."""

from __future__ import annotations

import time

from django.http import HttpResponse
from django.urls import path
from rest_framework.request import Request
from rest_framework.response import Response

from endpoints_app.api.views import ApiView, RawResponseApiView
from endpoints_app.errors import InvalidParameterValue
from endpoints_app.models import PermissionLevel, ScalingDecision
from endpoints_app.monitoring import export, metrics


class EndpointMetricsExportView(RawResponseApiView):
    def get(self, request: Request, name: str) -> HttpResponse:
        endpoint = self.endpoint(request, name, PermissionLevel.CAN_VIEW)
        openmetrics = "application/openmetrics-text" in request.headers.get("Accept", "")
        body = export.render(endpoint, openmetrics=openmetrics)
        content_type = export.OPENMETRICS_CONTENT_TYPE if openmetrics else export.PROMETHEUS_CONTENT_TYPE
        return HttpResponse(body, content_type=content_type)


def _epoch_ms(request: Request, name: str, default: float) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return int(default)
    try:
        return int(raw) // 1000
    except ValueError:
        raise InvalidParameterValue(f"{name} must be epoch milliseconds, got {raw!r}") from None


class EndpointMetricSeriesView(ApiView):
    """``GET …/metric-series?metrics=request_rate,p99_ms&start=<ms>&end=<ms>&served_model=<name>``."""

    def get(self, request: Request, name: str) -> Response:
        endpoint = self.endpoint(request, name, PermissionLevel.CAN_VIEW)
        now = time.time()
        end = _epoch_ms(request, "end", now)
        start = _epoch_ms(request, "start", end - 3600)
        if start >= end:
            raise InvalidParameterValue("start must be before end")
        if end - start > 90 * 86400:
            raise InvalidParameterValue("the range may span at most 90 days")
        wanted = [m for m in (request.query_params.get("metrics") or "request_rate").split(",") if m]
        unknown = [m for m in wanted if m not in metrics.SERIES]
        if unknown:
            raise InvalidParameterValue(
                f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(metrics.SERIES)}"
            )
        served = request.query_params.get("served_model") or ""
        data = metrics.series(endpoint, wanted, start=start, end=end, served_entity=served, now=now)
        return Response({"endpoint": endpoint.name, "served_model": served or None, **data})


class EndpointScalingDecisionsView(ApiView):
    """``GET …/scaling-decisions?limit=100``: the autoscaler's decisions for the endpoint, newest first."""

    def get(self, request: Request, name: str) -> Response:
        endpoint = self.endpoint(request, name, PermissionLevel.CAN_VIEW)
        raw = request.query_params.get("limit") or "100"
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 1000:
            raise InvalidParameterValue("limit must be a whole number from 1 to 1000")
        decisions = (
            ScalingDecision.objects.filter(deployment__endpoint=endpoint)
            .select_related("deployment")
            .order_by("-at", "-id")[: int(raw)]
        )
        return Response(
            {
                "decisions": [
                    {
                        "at": int(d.at.timestamp() * 1000),
                        "served_model_name": d.deployment.served_entity_name,
                        "from_replicas": d.from_replicas,
                        "to_replicas": d.to_replicas,
                        "reason": d.reason,
                    }
                    for d in decisions
                ]
            }
        )


urlpatterns = [
    path("api/2.0/serving-endpoints/<str:name>/metrics", EndpointMetricsExportView.as_view()),
    path("api/2.0/modelfleet/serving-endpoints/<str:name>/metric-series", EndpointMetricSeriesView.as_view()),
    path("api/2.0/modelfleet/serving-endpoints/<str:name>/scaling-decisions", EndpointScalingDecisionsView.as_view()),
]
