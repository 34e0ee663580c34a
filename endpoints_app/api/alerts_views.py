"""API views for endpoint health and alerts, under ``/api/2.0/modelfleet/serving-endpoints/<name>/``.

- ``GET  …/health``                    current status and its history (newest first, ``limit``)
- ``GET  …/alert-rules``               ``{"rules": [rule…]}``
- ``POST …/alert-rules``               create a rule → the rule
- ``GET | PATCH | DELETE …/alert-rules/<rule_id>``
- ``GET  …/alert-events``              ``{"events": [event…]}`` (``state`` FIRING|RESOLVED, ``limit``)

Times are epoch milliseconds. Views parse (``filters``), look up, call one service or selector
and render (``serializers.alerts``).
"""

from __future__ import annotations

from django.urls import URLPattern, path
from rest_framework.response import Response

from endpoints_app.api.serializers.alerts import serialize_alert_event, serialize_alert_rule, serialize_health
from endpoints_app.api.views import ApiView, request_body
from endpoints_app.authenticated import AuthenticatedRequest
from endpoints_app.filters import AlertEventFilterSet, HealthHistoryFilterSet
from endpoints_app.models import HealthChange, PermissionLevel, PollTarget
from endpoints_app.monitoring import alerts


class EndpointHealthView(ApiView):
    def get(self, request: AuthenticatedRequest, name: str) -> Response:
        endpoint = self.endpoint(request, name, PermissionLevel.CAN_VIEW)
        filters = HealthHistoryFilterSet(request.query_params)
        filters.raise_if_invalid()
        # health_change_idx (endpoint, at) serves this.
        history = HealthChange.objects.filter(endpoint=endpoint).order_by("-at", "-id")[: filters.value("limit")]
        polls = PollTarget.objects.filter(endpoint=endpoint).order_by("kind")
        return Response(serialize_health(endpoint, history, polls))


class AlertRuleListView(ApiView):
    def get(self, request: AuthenticatedRequest, name: str) -> Response:
        endpoint = self.endpoint(request, name, PermissionLevel.CAN_VIEW)
        return Response({"rules": [serialize_alert_rule(r) for r in alerts.rules_of(endpoint)]})

    def post(self, request: AuthenticatedRequest, name: str) -> Response:
        endpoint = self.endpoint(request, name, PermissionLevel.CAN_MANAGE)
        rule = alerts.create_alert_rule(endpoint=endpoint, actor=request.user, data=request_body(request))
        return Response(serialize_alert_rule(alerts.rule_of(endpoint, rule.id)))


class AlertRuleDetailView(ApiView):
    def get(self, request: AuthenticatedRequest, name: str, rule_id: str) -> Response:
        return Response(
            serialize_alert_rule(alerts.rule_of(self.endpoint(request, name, PermissionLevel.CAN_VIEW), rule_id))
        )

    def patch(self, request: AuthenticatedRequest, name: str, rule_id: str) -> Response:
        endpoint = self.endpoint(request, name, PermissionLevel.CAN_MANAGE)
        rule = alerts.rule_of(endpoint, rule_id)
        alerts.update_alert_rule(rule=rule, actor=request.user, data=request_body(request))
        return Response(serialize_alert_rule(alerts.rule_of(endpoint, rule.id)))

    def delete(self, request: AuthenticatedRequest, name: str, rule_id: str) -> Response:
        rule = alerts.rule_of(self.endpoint(request, name, PermissionLevel.CAN_MANAGE), rule_id)
        alerts.delete_alert_rule(rule=rule, actor=request.user)
        return Response({})


class AlertEventListView(ApiView):
    def get(self, request: AuthenticatedRequest, name: str) -> Response:
        endpoint = self.endpoint(request, name, PermissionLevel.CAN_VIEW)
        filters = AlertEventFilterSet(request.query_params)
        filters.raise_if_invalid()
        events = alerts.events_of(endpoint, state=filters.value("state") or None, limit=filters.value("limit"))
        return Response({"events": [serialize_alert_event(e) for e in events]})


EP = "api/2.0/modelfleet/serving-endpoints/<str:name>"

urlpatterns: list[URLPattern] = [
    path(f"{EP}/health", EndpointHealthView.as_view()),
    path(f"{EP}/alert-rules", AlertRuleListView.as_view()),
    path(f"{EP}/alert-rules/<str:rule_id>", AlertRuleDetailView.as_view()),
    path(f"{EP}/alert-events", AlertEventListView.as_view()),
]
