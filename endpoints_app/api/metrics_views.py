"""Metrics export (Databricks' GET …/metrics) and the chart series API."""

from __future__ import annotations

from datetime import UTC, datetime

from django.http import HttpResponse
from django.urls import path
from rest_framework.response import Response

from endpoints_app.api.serializers.metrics import serialize_scaling_decision
from endpoints_app.api.views import ApiView, RawResponseApiView
from endpoints_app.authenticated import AuthenticatedRequest
from endpoints_app.filters import MetricSeriesFilterSet, ScalingDecisionFilterSet
from endpoints_app.filters.fields import to_epoch_seconds
from endpoints_app.models import PermissionLevel, ScalingDecision
from endpoints_app.monitoring import export, metrics


class EndpointMetricsExportView(RawResponseApiView):
    def get(self, request: AuthenticatedRequest, name: str) -> HttpResponse:
        endpoint = self.endpoint(request, name, PermissionLevel.CAN_VIEW)
        openmetrics = "application/openmetrics-text" in request.headers.get("Accept", "")
        body = export.render(endpoint, openmetrics=openmetrics)
        content_type = export.OPENMETRICS_CONTENT_TYPE if openmetrics else export.PROMETHEUS_CONTENT_TYPE
        return HttpResponse(body, content_type=content_type)


class EndpointMetricSeriesView(ApiView):
    """``GET …/metric-series?metrics=request_rate,p99_ms&start=<ms>&end=<ms>&served_model=<name>``."""

    def get(self, request: AuthenticatedRequest, name: str) -> Response:
        endpoint = self.endpoint(request, name, PermissionLevel.CAN_VIEW)
        now = datetime.now(UTC)
        filters = MetricSeriesFilterSet(request.query_params, now=now)
        filters.raise_if_invalid()
        served = filters.value("served_model") or ""
        data = metrics.series(
            endpoint,
            filters.value("metrics"),
            start=to_epoch_seconds(filters.value("start")),  # the last hour unless told
            end=to_epoch_seconds(filters.value("end")),
            served_entity=served,
            now=now.timestamp(),
        )
        return Response({"endpoint": endpoint.name, "served_model": served or None, **data})


class EndpointScalingDecisionsView(ApiView):
    """``GET …/scaling-decisions?limit=100``: the autoscaler's decisions for the endpoint, newest first."""

    def get(self, request: AuthenticatedRequest, name: str) -> Response:
        endpoint = self.endpoint(request, name, PermissionLevel.CAN_VIEW)
        filters = ScalingDecisionFilterSet(request.query_params)
        filters.raise_if_invalid()
        decisions = (
            ScalingDecision.objects.filter(deployment__endpoint=endpoint)
            .select_related("deployment")
            .order_by("-at", "-id")[: filters.value("limit")]
        )
        return Response({"decisions": [serialize_scaling_decision(d) for d in decisions]})


urlpatterns = [
    path("api/2.0/serving-endpoints/<str:name>/metrics", EndpointMetricsExportView.as_view()),
    path("api/2.0/modelfleet/serving-endpoints/<str:name>/metric-series", EndpointMetricSeriesView.as_view()),
    path("api/2.0/modelfleet/serving-endpoints/<str:name>/scaling-decisions", EndpointScalingDecisionsView.as_view()),
]
