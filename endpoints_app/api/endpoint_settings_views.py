"""An endpoint's settings beside its config (reference §1, rows 15, 17 and 18), each one service call:

- ``PUT …/rate-limits`` (SDK ``put``, mlflow ``update_endpoint_rate_limits``): the legacy rate
  limits, stored and enforced as AI-gateway rate limits; answers ``{"rate_limits": [...]}``.
- ``PATCH …/notifications`` (SDK ``update_notifications``): ``email_notifications``; answers
  ``{"name", "email_notifications"}``.
- ``PATCH …/telemetry-config`` (``patch_telemetry_config`` of SDKs that have it): answers the
  endpoint, as Databricks does.

Each needs CAN_MANAGE and honours If-Match.
"""

from __future__ import annotations

from django.urls import URLPattern, path
from rest_framework.response import Response

from endpoints_app.api.views import ApiView, detailed, if_match, request_body
from endpoints_app.authenticated import AuthenticatedRequest
from endpoints_app.services import ai_gateway
from endpoints_app.services import endpoints as endpoint_services


class EndpointRateLimitsView(ApiView):
    def put(self, request: AuthenticatedRequest, name: str) -> Response:
        outcome = ai_gateway.put_rate_limits(
            actor=request.user, name=name, body=request_body(request), if_match=if_match(request)
        )
        return Response({"rate_limits": outcome.applied()})


class EndpointNotificationsView(ApiView):
    def patch(self, request: AuthenticatedRequest, name: str) -> Response:
        endpoint = endpoint_services.update_notifications(
            actor=request.user, name=name, body=request_body(request), if_match=if_match(request)
        )
        body: dict[str, object] = {"name": endpoint.name}
        if endpoint.email_notifications:
            body["email_notifications"] = endpoint.email_notifications
        return Response(body)


class EndpointTelemetryConfigView(ApiView):
    def patch(self, request: AuthenticatedRequest, name: str) -> Response:
        endpoint_services.patch_telemetry_config(
            actor=request.user, name=name, body=request_body(request), if_match=if_match(request)
        )
        return detailed(request, name)


EP = "api/2.0/serving-endpoints/<str:name>"
urlpatterns: list[URLPattern] = [
    path(f"{EP}/rate-limits", EndpointRateLimitsView.as_view()),
    path(f"{EP}/notifications", EndpointNotificationsView.as_view()),
    path(f"{EP}/telemetry-config", EndpointTelemetryConfigView.as_view()),
]
