"""API views for endpoint health and alerts, under ``/api/2.0/modelfleet/serving-endpoints/<name>/``.

- ``GET  …/health``                    current status and its history (newest first, ``limit``)
- ``GET  …/alert-rules``               ``{"rules": [rule…]}``
- ``POST …/alert-rules``               create a rule → the rule
- ``GET | PATCH | DELETE …/alert-rules/<rule_id>``
- ``GET  …/alert-events``              ``{"events": [event…]}`` (``state`` FIRING|RESOLVED, ``limit``)

Times are epoch milliseconds. Views parse, look up, call one service or selector and render.
"""

from __future__ import annotations

from typing import Any

from django.urls import URLPattern, path
from rest_framework.response import Response

from endpoints_app.api.serializers import ms
from endpoints_app.api.views import ApiView, request_body
from endpoints_app.authenticated import AuthenticatedRequest
from endpoints_app.errors import InvalidParameterValue
from endpoints_app.models import AlertEvent, AlertRule, HealthChange, PermissionLevel, PollTarget
from endpoints_app.monitoring import alerts

MAX_LIMIT = 1000


def _limit(request: AuthenticatedRequest, default: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:  # "²" is a digit int() refuses
        raise InvalidParameterValue(f"'limit' must be an integer between 1 and {MAX_LIMIT}")
    return int(raw)


def serialize_rule(rule: AlertRule) -> dict[str, Any]:
    creator = rule.created_by
    return {
        "id": rule.id,
        "name": rule.name,
        "metric": rule.metric,
        "comparison": rule.comparison,
        "threshold": rule.threshold,
        "for_seconds": rule.for_seconds,
        "enabled": rule.enabled,
        "notify_emails": rule.notify_emails,
        "state": "FIRING" if getattr(rule, "firing", False) else "OK",
        "created_by": (creator.email or creator.username) if creator else "",
        "created_at": ms(rule.created_at),
    }


def serialize_event(event: AlertEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "rule_id": event.rule_id,
        "rule_name": event.rule.name,
        "state": event.state,
        "started_at": ms(event.started_at),
        "resolved_at": ms(event.resolved_at),
        "value": event.value,
        "message": event.message,
    }


class EndpointHealthView(ApiView):
    def get(self, request: AuthenticatedRequest, name: str) -> Response:
        endpoint = self.endpoint(request, name, PermissionLevel.CAN_VIEW)
        # health_change_idx (endpoint, at) serves this.
        history = HealthChange.objects.filter(endpoint=endpoint).order_by("-at", "-id")[: _limit(request, 50)]
        return Response(
            {
                "status": endpoint.health,
                "reason": endpoint.health_reason,
                "changed_at": ms(endpoint.health_changed_at),
                "history": [
                    {"at": ms(c.at), "previous": c.previous, "status": c.status, "reason": c.reason} for c in history
                ],
                # Each poller's state, so a page can say "metrics failing since …".
                "polls": [
                    {
                        "kind": t.kind,
                        "last_polled_at": ms(t.last_polled_at),
                        "last_ok_at": ms(t.last_ok_at),
                        "failing_since": ms(t.failing_since),
                        "consecutive_failures": t.consecutive_failures,
                        "last_error": t.last_error,
                        "next_poll_at": ms(t.next_poll_at),
                    }
                    for t in PollTarget.objects.filter(endpoint=endpoint).order_by("kind")
                ],
            }
        )


class AlertRuleListView(ApiView):
    def get(self, request: AuthenticatedRequest, name: str) -> Response:
        endpoint = self.endpoint(request, name, PermissionLevel.CAN_VIEW)
        return Response({"rules": [serialize_rule(r) for r in alerts.rules_of(endpoint)]})

    def post(self, request: AuthenticatedRequest, name: str) -> Response:
        endpoint = self.endpoint(request, name, PermissionLevel.CAN_MANAGE)
        rule = alerts.create_alert_rule(endpoint=endpoint, actor=request.user, data=request_body(request))
        return Response(serialize_rule(alerts.rule_of(endpoint, rule.id)))


class AlertRuleDetailView(ApiView):
    def get(self, request: AuthenticatedRequest, name: str, rule_id: str) -> Response:
        return Response(serialize_rule(alerts.rule_of(self.endpoint(request, name, PermissionLevel.CAN_VIEW), rule_id)))

    def patch(self, request: AuthenticatedRequest, name: str, rule_id: str) -> Response:
        endpoint = self.endpoint(request, name, PermissionLevel.CAN_MANAGE)
        rule = alerts.rule_of(endpoint, rule_id)
        alerts.update_alert_rule(rule=rule, actor=request.user, data=request_body(request))
        return Response(serialize_rule(alerts.rule_of(endpoint, rule.id)))

    def delete(self, request: AuthenticatedRequest, name: str, rule_id: str) -> Response:
        rule = alerts.rule_of(self.endpoint(request, name, PermissionLevel.CAN_MANAGE), rule_id)
        alerts.delete_alert_rule(rule=rule, actor=request.user)
        return Response({})


class AlertEventListView(ApiView):
    def get(self, request: AuthenticatedRequest, name: str) -> Response:
        endpoint = self.endpoint(request, name, PermissionLevel.CAN_VIEW)
        state = request.query_params.get("state") or None
        if state is not None and state not in AlertEvent.State.values:
            raise InvalidParameterValue(f"'state' must be one of {', '.join(AlertEvent.State.values)}")
        events = alerts.events_of(endpoint, state=state, limit=_limit(request, 100))
        return Response({"events": [serialize_event(e) for e in events]})


EP = "api/2.0/modelfleet/serving-endpoints/<str:name>"

urlpatterns: list[URLPattern] = [
    path(f"{EP}/health", EndpointHealthView.as_view()),
    path(f"{EP}/alert-rules", AlertRuleListView.as_view()),
    path(f"{EP}/alert-rules/<str:rule_id>", AlertRuleDetailView.as_view()),
    path(f"{EP}/alert-events", AlertEventListView.as_view()),
]
