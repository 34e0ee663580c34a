"""Health and alerts (``…/health``, ``…/alert-rules``, ``…/alert-events``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from endpoints_app.api.serializers.common import ms, user_label
from endpoints_app.models import AlertEvent, AlertRule, Endpoint, HealthChange, PollTarget


def serialize_health(
    endpoint: Endpoint, history: Iterable[HealthChange], polls: Iterable[PollTarget]
) -> dict[str, Any]:
    return {
        "status": endpoint.health,
        "reason": endpoint.health_reason,
        "changed_at": ms(endpoint.health_changed_at),
        "history": [{"at": ms(c.at), "previous": c.previous, "status": c.status, "reason": c.reason} for c in history],
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
            for t in polls
        ],
    }


def serialize_alert_rule(rule: AlertRule) -> dict[str, Any]:
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
        "created_by": user_label(rule.created_by),
        "created_at": ms(rule.created_at),
    }


def serialize_alert_event(event: AlertEvent) -> dict[str, Any]:
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
