"""Alert rules: their write services, and their evaluation over the 15 s metric series.

A rule holds when ``metric <comparison> threshold`` is true for the whole of the last
``for_seconds``, judged from the endpoint-wide 15 s ``MetricPoint`` rows ("" entity):

1. The window ends where the data ends: at the end of the newest interval, provided that ended
   less than ``STALE_AFTER_SECONDS`` ago (the poller writes each interval a little after it
   starts filling, so "now" would always look partly empty). No fresh point: no verdict at all,
   the rule keeps its state (a metrics poll that fails already shows on the endpoint's health).
2. The intervals in the window must cover at least ``MIN_COVERAGE`` of it, so a rule does not
   fire on a few points after a gap.
3. Every interval that has a value must breach, so one spike cannot fire a 5-minute rule.
   Request-based metrics (4xx/5xx %, latency) have no value in an interval without requests.
4. The rule fires (one open FIRING event per rule, emailed to ``notify_emails``) when 1–3 hold,
   and resolves (emailed too) when the newest interval no longer breaches.

The value shown on an event is the window's aggregate: rates are ratios of summed counts,
latency is the request-weighted mean of the intervals' percentiles, ``request_rate`` is requests
per second over the seconds covered, CPU and memory are plain means.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, Prefetch, QuerySet
from django.utils import timezone

from endpoints_app import audit
from endpoints_app.errors import InvalidParameterValue, ResourceAlreadyExists, ResourceDoesNotExist
from endpoints_app.models import AlertEvent, AlertMetric, AlertRule, Endpoint, MetricPoint
from endpoints_app.monitoring import notifications, store
from endpoints_app.monitoring.metrics import BASE_RESOLUTION

log = logging.getLogger(__name__)

POINT_SECONDS = BASE_RESOLUTION  # the finest metric resolution
STALE_AFTER_SECONDS = 60
MIN_COVERAGE = 0.8
MIN_FOR_SECONDS, MAX_FOR_SECONDS = 15, 86_400
MAX_NOTIFY_EMAILS = 50

# Metrics that only mean something when there were requests in the interval.
REQUEST_METRICS = {
    AlertMetric.ERROR_5XX_RATE_PCT,
    AlertMetric.ERROR_4XX_RATE_PCT,
    AlertMetric.P50_LATENCY_MS,
    AlertMetric.P99_LATENCY_MS,
}
# How each metric reads in a message: label and unit.
METRIC_TEXT: dict[str, tuple[str, str]] = {
    AlertMetric.ERROR_5XX_RATE_PCT: ("5xx rate", "%"),
    AlertMetric.ERROR_4XX_RATE_PCT: ("4xx rate", "%"),
    AlertMetric.P50_LATENCY_MS: ("p50 latency", " ms"),
    AlertMetric.P99_LATENCY_MS: ("p99 latency", " ms"),
    AlertMetric.REQUEST_RATE: ("request rate", " req/s"),
    AlertMetric.CPU_PCT: ("CPU", "%"),
    AlertMetric.MEM_PCT: ("memory", "%"),
}
_POINT_FIELDS = ("ts", "request_count", "count_4xx", "count_5xx", "p50_ms", "p99_ms", "cpu_pct", "mem_pct")


# --- reads ----------------------------------------------------------------------------------------


def rules_of(endpoint: Endpoint) -> QuerySet[AlertRule]:
    """The endpoint's rules, each annotated ``firing`` (has an open event), in one query."""
    open_event = AlertEvent.objects.filter(rule=OuterRef("pk"), state=AlertEvent.State.FIRING)
    return (
        AlertRule.objects.filter(endpoint=endpoint)
        .select_related("endpoint", "created_by")
        .annotate(firing=Exists(open_event))
        .order_by("name")
    )


def rule_of(endpoint: Endpoint, rule_id: str | int) -> AlertRule:
    """One rule of the endpoint; a rule of another endpoint does not exist here."""
    valid = str(rule_id).isdigit() and len(str(rule_id)) <= 18  # fits a bigint
    rule = rules_of(endpoint).filter(id=int(rule_id)).first() if valid else None
    if rule is None:
        raise ResourceDoesNotExist(f"Alert rule '{rule_id}' does not exist on endpoint '{endpoint.name}'")
    return rule


def events_of(endpoint: Endpoint, *, state: str | None = None, limit: int = 100) -> list[AlertEvent]:
    # alert_event_idx (endpoint, started_at) serves this.
    events = AlertEvent.objects.filter(endpoint=endpoint).select_related("rule").order_by("-started_at", "-id")
    if state:
        events = events.filter(state=state)
    return list(events[:limit])


# --- write services -------------------------------------------------------------------------------


def parse_rule(data: Any, *, partial: bool) -> dict[str, Any]:
    """The rule fields in a create (or, ``partial``, a patch) body; unknown fields are ignored."""
    if not isinstance(data, Mapping):
        raise InvalidParameterValue("the request body must be a JSON object")
    out: dict[str, Any] = {}
    required = () if partial else ("name", "metric", "threshold")
    for field in required:
        if field not in data:
            raise InvalidParameterValue(f"'{field}' is required")
    if "name" in data:
        name = data["name"]
        if not isinstance(name, str) or not name.strip() or len(name.strip()) > 255:
            raise InvalidParameterValue("'name' must be a non-empty string of at most 255 characters")
        out["name"] = name.strip()
    if "metric" in data:
        if data["metric"] not in AlertMetric.values:
            raise InvalidParameterValue(f"'metric' must be one of {', '.join(AlertMetric.values)}")
        out["metric"] = data["metric"]
    if "comparison" in data:
        if data["comparison"] not in ("gt", "lt"):
            raise InvalidParameterValue("'comparison' must be 'gt' or 'lt'")
        out["comparison"] = data["comparison"]
    if "threshold" in data:
        threshold = data["threshold"]
        try:
            value = float(threshold) if isinstance(threshold, int | float) and not isinstance(threshold, bool) else None
        except OverflowError:  # a JSON integer too large for a float
            value = None
        if value is None or not math.isfinite(value):
            raise InvalidParameterValue("'threshold' must be a finite number")
        out["threshold"] = value
    if "for_seconds" in data:
        seconds = data["for_seconds"]
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int)
            or not MIN_FOR_SECONDS <= seconds <= MAX_FOR_SECONDS
        ):
            raise InvalidParameterValue(
                f"'for_seconds' must be an integer between {MIN_FOR_SECONDS} and {MAX_FOR_SECONDS}"
            )
        out["for_seconds"] = seconds
    if "enabled" in data:
        if not isinstance(data["enabled"], bool):
            raise InvalidParameterValue("'enabled' must be true or false")
        out["enabled"] = data["enabled"]
    if "notify_emails" in data:
        emails = data["notify_emails"]
        if (
            not isinstance(emails, list)
            or len(emails) > MAX_NOTIFY_EMAILS
            or not all(isinstance(e, str) and "@" in e.strip()[1:-1] for e in emails)
        ):
            raise InvalidParameterValue(
                f"'notify_emails' must be a list of at most {MAX_NOTIFY_EMAILS} email addresses"
            )
        out["notify_emails"] = list(dict.fromkeys(e.strip() for e in emails))
    return out


def _rule_snapshot(rule: AlertRule) -> dict[str, Any]:
    return {
        "name": rule.name,
        "metric": rule.metric,
        "comparison": rule.comparison,
        "threshold": rule.threshold,
        "for_seconds": rule.for_seconds,
        "enabled": rule.enabled,
        "notify_emails": rule.notify_emails,
    }


def _duplicate(endpoint: Endpoint, name: str) -> ResourceAlreadyExists:
    return ResourceAlreadyExists(f"An alert rule named '{name}' already exists on endpoint '{endpoint.name}'")


def create_alert_rule(*, endpoint: Endpoint, actor: User | None, data: Any) -> AlertRule:
    fields = parse_rule(data, partial=False)
    try:
        with transaction.atomic():
            with transaction.atomic():  # the duplicate check below needs this savepoint
                rule = AlertRule.objects.create(endpoint=endpoint, created_by=actor, **fields)
            audit.record(
                actor=actor,
                action="alert_rule.create",
                object_type="alert_rule",
                object_id=str(rule.id),
                object_name=f"{endpoint.name}/{rule.name}",
                after=_rule_snapshot(rule),
            )
    except IntegrityError:  # unique_alert_rule_name: race-safe, unlike a check before the insert
        raise _duplicate(endpoint, fields["name"]) from None
    log.info("%s created alert rule %r on %s", actor, rule.name, endpoint.name)
    return rule


def update_alert_rule(*, rule: AlertRule, actor: User | None, data: Any) -> AlertRule:
    """Change the given fields. Disabling a firing rule resolves its open event (quietly: whoever
    disabled it knows)."""
    fields = parse_rule(data, partial=True)
    now = timezone.now()
    try:
        with transaction.atomic():
            locked = AlertRule.objects.select_for_update().filter(id=rule.id).first()
            if locked is None:
                raise ResourceDoesNotExist(f"Alert rule '{rule.id}' does not exist")
            before = _rule_snapshot(locked)
            for key, value in fields.items():
                setattr(locked, key, value)
            locked.save()
            audit.record(
                actor=actor,
                action="alert_rule.update",
                object_type="alert_rule",
                object_id=str(locked.id),
                object_name=f"{rule.endpoint.name}/{locked.name}",
                before=before,
                after=_rule_snapshot(locked),
            )
            if fields.get("enabled") is False:
                AlertEvent.objects.filter(rule=locked, state=AlertEvent.State.FIRING).update(
                    state=AlertEvent.State.RESOLVED, resolved_at=now
                )
    except IntegrityError:
        raise _duplicate(rule.endpoint, fields.get("name", rule.name)) from None
    log.info("%s updated alert rule %r on %s: %s", actor, locked.name, rule.endpoint.name, sorted(fields))
    return locked


def delete_alert_rule(*, rule: AlertRule, actor: User | None) -> None:
    """Delete the rule and its events."""
    with transaction.atomic():
        audit.record(
            actor=actor,
            action="alert_rule.delete",
            object_type="alert_rule",
            object_id=str(rule.id),
            object_name=f"{rule.endpoint.name}/{rule.name}",
            before=_rule_snapshot(rule),
        )
        AlertRule.objects.filter(id=rule.id).delete()
    log.info("%s deleted alert rule %r on %s", actor, rule.name, rule.endpoint.name)


# --- evaluation -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    ts: int
    request_count: float
    count_4xx: float
    count_5xx: float
    p50_ms: float | None
    p99_ms: float | None
    cpu_pct: float | None
    mem_pct: float | None


@dataclass(frozen=True)
class Verdict:
    """``window``: the condition held over the whole window (None: not enough data to say).
    ``latest``: it holds in the newest interval (None: no fresh data). ``value``: window aggregate."""

    window: bool | None
    latest: bool | None
    value: float | None


def interval_value(metric: str, p: Point) -> float | None:
    """The metric in one interval; None where the interval says nothing about it."""
    if metric in REQUEST_METRICS and p.request_count <= 0:
        return None
    if metric == AlertMetric.ERROR_5XX_RATE_PCT:
        return p.count_5xx / p.request_count * 100
    if metric == AlertMetric.ERROR_4XX_RATE_PCT:
        return p.count_4xx / p.request_count * 100
    if metric == AlertMetric.P50_LATENCY_MS:
        return p.p50_ms
    if metric == AlertMetric.P99_LATENCY_MS:
        return p.p99_ms
    if metric == AlertMetric.REQUEST_RATE:
        return p.request_count / POINT_SECONDS
    if metric == AlertMetric.CPU_PCT:
        return p.cpu_pct
    if metric == AlertMetric.MEM_PCT:
        return p.mem_pct
    raise ValueError(f"unknown metric {metric!r}")


def window_value(metric: str, points: Sequence[Point]) -> float | None:
    """The metric over the window.

    Latency is the request-weighted mean of the intervals' p50/p99 rather than their maximum:
    firing already requires every interval to breach, so the value only has to describe the
    window, and a mean weighted by traffic is the closer stand-in for the window's percentile
    (the max would report the single worst 15 s, which a 1-request interval can dominate).
    """
    requests = sum(p.request_count for p in points)
    if metric == AlertMetric.ERROR_5XX_RATE_PCT:
        return sum(p.count_5xx for p in points) / requests * 100 if requests > 0 else None
    if metric == AlertMetric.ERROR_4XX_RATE_PCT:
        return sum(p.count_4xx for p in points) / requests * 100 if requests > 0 else None
    if metric == AlertMetric.REQUEST_RATE:
        return requests / (len(points) * POINT_SECONDS) if points else None
    if metric in (AlertMetric.P50_LATENCY_MS, AlertMetric.P99_LATENCY_MS):
        pairs = [(p.request_count, interval_value(metric, p)) for p in points]
        weighted = [(w, v) for w, v in pairs if v is not None and w > 0]
        total = sum(w for w, _ in weighted)
        return sum(w * v for w, v in weighted) / total if total > 0 else None
    values = [v for p in points if (v := interval_value(metric, p)) is not None]
    return sum(values) / len(values) if values else None


def breaches(rule: AlertRule, value: float | None) -> bool:
    if value is None:
        return False
    return value > rule.threshold if rule.comparison == "gt" else value < rule.threshold


def judge(rule: AlertRule, points: Sequence[Point], *, now: float) -> Verdict:
    """Apply the rule to points sorted by time (steps 1–3 of the module docstring)."""
    if not points or points[-1].ts + POINT_SECONDS < now - STALE_AFTER_SECONDS:
        return Verdict(window=None, latest=None, value=None)
    newest = points[-1]
    latest = breaches(rule, interval_value(rule.metric, newest))
    end = newest.ts + POINT_SECONDS
    in_window = [p for p in points if p.ts >= end - rule.for_seconds]
    value = window_value(rule.metric, in_window)
    expected = math.ceil(rule.for_seconds / POINT_SECONDS)
    if len(in_window) < max(1, math.floor(MIN_COVERAGE * expected)):
        return Verdict(window=None, latest=latest, value=value)
    judged = [v for p in in_window if (v := interval_value(rule.metric, p)) is not None]
    if not judged:  # e.g. no requests at all: a rate says nothing
        return Verdict(window=None, latest=latest, value=value)
    return Verdict(window=all(breaches(rule, v) for v in judged), latest=latest, value=value)


def load_points(rule: AlertRule, *, now: float) -> list[Point]:
    oldest = int(now) - rule.for_seconds - STALE_AFTER_SECONDS - POINT_SECONDS
    if oldest < now - settings.METRICS_HOT_MINUTES[POINT_SECONDS] * 60:
        # A window longer than the hot rows keep: read the compact chunks too (monitoring.store).
        stored = store.read_points(rule.endpoint_id, resolution=POINT_SECONDS, start=oldest, end=int(now) + 1)
        return [Point(*(getattr(p, f) for f in _POINT_FIELDS)) for p in stored]
    # metric_point_read_idx (endpoint, resolution, ts) serves this.
    rows = (
        MetricPoint.objects.filter(
            endpoint_id=rule.endpoint_id, served_entity_name="", resolution=POINT_SECONDS, ts__gte=oldest
        )
        .order_by("ts")
        .values_list(*_POINT_FIELDS)
    )
    return [Point(*row) for row in rows]


def evaluate_alerts(now: datetime | None = None) -> int:
    """Beat: evaluate every enabled rule; returns how many raised or resolved.

    A rule that fails (bad data, database hiccup) is logged and skipped; the others still run.
    """
    now = now or timezone.now()
    open_events = Prefetch(
        "events", queryset=AlertEvent.objects.filter(state=AlertEvent.State.FIRING), to_attr="open_events"
    )
    rules = AlertRule.objects.filter(enabled=True).select_related("endpoint").prefetch_related(open_events)
    changed = 0
    for rule in rules.order_by("id"):
        try:
            changed += evaluate_rule(rule, now=now)
        except Exception:
            log.exception("evaluating alert rule %s (%r on %s) failed", rule.id, rule.name, rule.endpoint.name)
    return changed


def evaluate_rule(rule: AlertRule, *, now: datetime) -> bool:
    """Raise or resolve one rule's alert; True if its state changed."""
    verdict = judge(rule, load_points(rule, now=now.timestamp()), now=now.timestamp())
    if hasattr(rule, "open_events"):  # prefetched by evaluate_alerts
        open_events: list[AlertEvent] = rule.open_events
    else:
        open_events = list(rule.events.filter(state=AlertEvent.State.FIRING))
    if open_events:
        if verdict.latest is False:
            return resolve(rule, open_events[0], now=now)
        return False
    if verdict.window:
        return raise_alert(rule, verdict.value, now=now)
    return False


def describe(rule: AlertRule, value: float | None = None) -> str:
    """ "5xx rate 12.5% > 5% for 60 s" (with a value) or "5xx rate > 5% for 60 s"."""
    label, unit = METRIC_TEXT.get(rule.metric, (rule.metric, ""))
    shown = f" {number(value)}{unit}" if value is not None else ""
    sign = ">" if rule.comparison == "gt" else "<"
    return f"{label}{shown} {sign} {number(rule.threshold)}{unit} for {rule.for_seconds} s"


def number(value: float) -> str:
    """A few significant digits, never an exponent: 0.05, 11.2, 1234."""
    text = f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 1000 else f"{value:.0f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def raise_alert(rule: AlertRule, value: float | None, *, now: datetime) -> bool:
    """Open a FIRING event unless one is open (checked under the rule's row lock), then email."""
    with transaction.atomic():
        if AlertRule.objects.select_for_update().filter(id=rule.id).first() is None:
            return False
        if AlertEvent.objects.filter(rule=rule, state=AlertEvent.State.FIRING).exists():
            return False
        event = AlertEvent.objects.create(
            rule=rule, endpoint_id=rule.endpoint_id, started_at=now, value=value, message=describe(rule, value)
        )
    endpoint = endpoint_label(rule.endpoint)
    log.warning("alert %r on %s firing: %s", rule.name, endpoint, event.message)
    notifications.send(
        notifications.recipients(rule.notify_emails),
        f'{notifications.SUBJECT_PREFIX} {endpoint}: alert "{rule.name}" firing',
        f'Alert "{rule.name}" on serving endpoint {endpoint} is firing.\n\n'
        f"Condition: {describe(rule)}\n"
        f"Observed:  {event.message}\n"
        f"Since:     {notifications.when(now)}\n\n"
        "You will get another email when it resolves.\n",
    )
    return True


def endpoint_label(endpoint: Endpoint) -> str:
    """How an alert names its endpoint: a remote one (issue 16) with its workspace."""
    if endpoint.workspace_id is None or endpoint.workspace is None:
        return endpoint.name
    return f"{endpoint.name} (workspace {endpoint.workspace.name})"


def resolve(rule: AlertRule, event: AlertEvent, *, now: datetime) -> bool:
    """Resolve the open event (a conditional UPDATE: only one evaluation resolves it), then email."""
    resolved = AlertEvent.objects.filter(id=event.id, state=AlertEvent.State.FIRING).update(
        state=AlertEvent.State.RESOLVED, resolved_at=now
    )
    if resolved != 1:
        return False
    endpoint = endpoint_label(rule.endpoint)
    log.info("alert %r on %s resolved", rule.name, endpoint)
    notifications.send(
        notifications.recipients(rule.notify_emails),
        f'{notifications.SUBJECT_PREFIX} {endpoint}: alert "{rule.name}" resolved',
        f'Alert "{rule.name}" on serving endpoint {endpoint} has resolved.\n\n'
        f"Condition: {describe(rule)}\n"
        f"Fired:     {notifications.when(event.started_at)} ({event.message})\n"
        f"Resolved:  {notifications.when(now)}\n",
    )
    return True
