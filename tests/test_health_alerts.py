"""Endpoint health, alert rules and their evaluation, update emails, and the health/alerts API."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.core import mail
from django.utils import timezone

from endpoints_app.models import (
    AlertEvent,
    AlertRule,
    Deployment,
    DeploymentState,
    Endpoint,
    HealthChange,
    HealthStatus,
    MetricPoint,
    PollKind,
    PollTarget,
    Replica,
    ReplicaState,
)
from endpoints_app.monitoring import alerts, health, notifications
from endpoints_app.services import rollouts
from tests.conftest import endpoint_body

pytestmark = pytest.mark.django_db

URL = "/api/2.0/modelfleet/serving-endpoints"


# --- helpers --------------------------------------------------------------------------------------


def create_endpoint(api, name: str, *entities: tuple[str, str], scale_to_zero: bool = False) -> Endpoint:
    body = endpoint_body(name, *entities)
    for entity in body["config"]["served_entities"]:
        entity["scale_to_zero_enabled"] = scale_to_zero
    if len(entities) > 1:
        share = 100 // len(entities)
        names = [f"{e.rsplit('.', 1)[-1]}-{v}" for e, v in entities]
        routes = [{"served_model_name": n, "traffic_percentage": share} for n in names]
        routes[0]["traffic_percentage"] += 100 - share * len(entities)
        body["config"]["traffic_config"] = {"routes": routes}
    response = api.post("/api/2.0/serving-endpoints", body, format="json")
    assert response.status_code == 200, response.content
    return Endpoint.objects.get(name=name)


def go_live(endpoint: Endpoint) -> Endpoint:
    """Play the runtime's part: the deployments are ready, so the config becomes active."""
    rollouts.start_rollout(endpoint_id=endpoint.id)
    Deployment.objects.filter(endpoint=endpoint).update(state=DeploymentState.READY)
    assert rollouts.advance_rollout(endpoint_id=endpoint.id, claim=False)
    return Endpoint.objects.get(id=endpoint.id)


def deployment(endpoint: Endpoint, entity_name: str) -> Deployment:
    return Deployment.objects.get(endpoint=endpoint, served_entity_name=entity_name)


def add_replica(dep: Deployment, state: str = ReplicaState.READY, index: int = 0) -> Replica:
    return Replica.objects.create(
        deployment=dep, agent_id="test", index=index, host="127.0.0.1", port=40000 + index, state=state
    )


def poll(endpoint: Endpoint, now: datetime | None = None) -> Endpoint:
    health.poll_status(Endpoint.objects.get(id=endpoint.id), now=now)
    return Endpoint.objects.get(id=endpoint.id)


def point(endpoint: Endpoint, ts: int, requests: float = 100, e5xx: float = 0, **fields) -> MetricPoint:
    return MetricPoint.objects.create(
        endpoint=endpoint, served_entity_name="", resolution=15, ts=ts, request_count=requests, count_5xx=e5xx, **fields
    )


def bucket(now: datetime) -> int:
    return int(now.timestamp()) // 15 * 15


@pytest.fixture
def live(api, registered_models) -> Endpoint:
    """An endpoint serving iris v1 from one ready replica."""
    endpoint = go_live(create_endpoint(api, "live", (registered_models["iris"], "1")))
    add_replica(deployment(endpoint, "iris-1"))
    return endpoint


# --- health ---------------------------------------------------------------------------------------


def test_an_endpoint_whose_first_config_is_deploying_is_down(api, registered_models):
    endpoint = create_endpoint(api, "new", (registered_models["iris"], "1"))
    assert endpoint.health == HealthStatus.NOT_POLLED
    endpoint = poll(endpoint)
    assert endpoint.health == HealthStatus.DOWN
    assert "still deploying" in endpoint.health_reason
    change = HealthChange.objects.get(endpoint=endpoint)
    assert (change.previous, change.status) == (HealthStatus.NOT_POLLED, HealthStatus.DOWN)


def test_a_ready_endpoint_is_healthy_and_history_grows_only_on_change(live):
    t0 = timezone.now()
    endpoint = poll(live, t0)
    assert endpoint.health == HealthStatus.HEALTHY
    assert endpoint.health_changed_at == t0
    poll(live, t0 + timedelta(seconds=10))
    poll(live, t0 + timedelta(seconds=20))
    assert HealthChange.objects.filter(endpoint=live).count() == 1
    assert Endpoint.objects.get(id=live.id).health_changed_at == t0

    Replica.objects.filter(deployment__endpoint=live).update(state=ReplicaState.FAILED)
    endpoint = poll(live, t0 + timedelta(seconds=30))
    assert endpoint.health == HealthStatus.DOWN
    assert [(c.previous, c.status) for c in HealthChange.objects.filter(endpoint=live).order_by("at")] == [
        (HealthStatus.NOT_POLLED, HealthStatus.HEALTHY),
        (HealthStatus.HEALTHY, HealthStatus.DOWN),
    ]


def test_an_entity_without_a_ready_replica_takes_the_endpoint_down_naming_it(api, registered_models):
    iris = registered_models["iris"]
    endpoint = go_live(create_endpoint(api, "two", (iris, "1"), (iris, "2")))
    add_replica(deployment(endpoint, "iris-1"))
    add_replica(deployment(endpoint, "iris-2"), ReplicaState.STARTING)
    endpoint = poll(endpoint)
    assert endpoint.health == HealthStatus.DOWN
    assert endpoint.health_reason == "served entity iris-2 has no ready replica (1 starting)"


def test_a_failed_deployment_takes_the_endpoint_down_with_its_message(live):
    Deployment.objects.filter(endpoint=live).update(state=DeploymentState.FAILED, state_message="model load failed")
    endpoint = poll(live)
    assert endpoint.health == HealthStatus.DOWN
    assert endpoint.health_reason == "served entity iris-1 deployment failed: model load failed"


def test_a_recovering_deployment_is_degraded(live):
    Deployment.objects.filter(endpoint=live).update(
        state=DeploymentState.RECOVERING, state_message="1 of 2 replica(s) ready; restarting the others."
    )
    endpoint = poll(live)
    assert endpoint.health == HealthStatus.DEGRADED
    assert "iris-1 is recovering: 1 of 2 replica(s) ready" in endpoint.health_reason


def test_fewer_ready_replicas_than_desired_is_degraded(live):
    Deployment.objects.filter(endpoint=live).update(desired_replicas=3)
    assert poll(live).health_reason == "served entity iris-1 has 1 of 3 replicas ready"
    assert poll(live).health == HealthStatus.DEGRADED


def test_a_recent_5xx_rate_over_5_percent_is_degraded_and_an_old_one_is_not(live):
    now = timezone.now()
    point(live, bucket(now) - 300, requests=100, e5xx=50)  # older than 2 minutes: ignored
    assert poll(live, now).health == HealthStatus.HEALTHY
    point(live, bucket(now), requests=100, e5xx=12)
    endpoint = poll(live, now)
    assert endpoint.health == HealthStatus.DEGRADED
    assert endpoint.health_reason == "5xx rate 12% over the last 15 s (12 of 100 requests)"
    point(live, bucket(now) + 15, requests=100, e5xx=5)  # exactly 5% is not over 5%
    assert poll(live, now + timedelta(seconds=15)).health == HealthStatus.HEALTHY


def test_failing_metrics_polling_is_degraded(live):
    since = timezone.now() - timedelta(minutes=3)
    PollTarget.objects.create(
        endpoint=live,
        kind=PollKind.METRICS,
        next_poll_at=timezone.now(),
        failing_since=since,
        consecutive_failures=4,
        last_error="ConnectionError: refused",
    )
    endpoint = poll(live)
    assert endpoint.health == HealthStatus.DEGRADED
    assert endpoint.health_reason.startswith("metrics polling failing since ")
    assert endpoint.health_reason.endswith("UTC: ConnectionError: refused")


def test_every_entity_scaled_to_zero_is_scaled_to_zero_not_down(api, registered_models):
    endpoint = go_live(create_endpoint(api, "zero", (registered_models["iris"], "1"), scale_to_zero=True))
    endpoint = poll(endpoint)
    assert endpoint.health == HealthStatus.SCALED_TO_ZERO
    # Waking up (a replica starting, none ready yet) is down until one is ready.
    add_replica(deployment(endpoint, "iris-1"), ReplicaState.STARTING)
    assert poll(endpoint).health == HealthStatus.DOWN
    Deployment.objects.filter(endpoint=endpoint).update(state=DeploymentState.FAILED)
    Replica.objects.all().delete()
    assert poll(endpoint).health == HealthStatus.DOWN


def test_a_poll_with_a_stale_status_records_nothing(live):
    stale = Endpoint.objects.get(id=live.id)
    poll(live)  # another poll got there first: HEALTHY
    Replica.objects.filter(deployment__endpoint=live).update(state=ReplicaState.FAILED)
    health.poll_status(stale)  # read as NOT_POLLED: its conditional update matches nothing
    assert Endpoint.objects.get(id=live.id).health == HealthStatus.HEALTHY
    assert HealthChange.objects.filter(endpoint=live).count() == 1


def test_a_poll_takes_few_queries(live, django_assert_max_num_queries):
    endpoint = Endpoint.objects.get(id=live.id)
    with django_assert_max_num_queries(7):  # 3 reads, update + history row (+ savepoint)
        health.poll_status(endpoint)
    endpoint = Endpoint.objects.get(id=live.id)
    with django_assert_max_num_queries(3):  # unchanged: reads only
        health.poll_status(endpoint)


# --- alert evaluation -----------------------------------------------------------------------------


@pytest.fixture
def ep(user) -> Endpoint:
    from endpoints_app.models import EndpointPermission, PermissionLevel

    created = Endpoint.objects.create(name="ep", creator=user)
    EndpointPermission.objects.create(endpoint=created, user=user, level=PermissionLevel.CAN_MANAGE)
    return created


def rule_5xx(endpoint: Endpoint, **fields) -> AlertRule:
    values = {
        "name": "5xx over 5%",
        "metric": "error_5xx_rate_pct",
        "threshold": 5,
        "for_seconds": 60,
        "notify_emails": ["oncall@example.com"],
    }
    values.update(fields)
    return AlertRule.objects.create(endpoint=endpoint, **values)


def series(endpoint: Endpoint, now: datetime, e5xx: list[float], requests: float = 100) -> None:
    """One point per 15 s, the last in the current interval."""
    base = bucket(now)
    for i, errors in enumerate(e5xx):
        point(endpoint, base - 15 * (len(e5xx) - 1 - i), requests=requests, e5xx=errors)


def test_a_rule_fires_when_every_interval_of_its_window_breaches_and_resolves_after(ep):
    rule = rule_5xx(ep)
    now = timezone.now()
    series(ep, now, [10, 8, 20, 7])  # 4 × 15 s, all over 5%
    assert alerts.evaluate_alerts(now) == 1
    event = AlertEvent.objects.get(rule=rule)
    assert event.state == AlertEvent.State.FIRING
    assert event.value == pytest.approx(11.25)  # 45 of 400 requests
    assert event.message == "5xx rate 11.2% > 5% for 60 s"
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["oncall@example.com"]
    assert mail.outbox[0].subject == '[Modelfleet] ep: alert "5xx over 5%" firing'

    # Still breaching: one open event, no second email.
    later = now + timedelta(seconds=15)
    point(ep, bucket(now) + 15, e5xx=9)
    assert alerts.evaluate_alerts(later) == 0
    assert AlertEvent.objects.filter(rule=rule).count() == 1 and len(mail.outbox) == 1

    # The newest interval is fine again: resolved.
    latest = now + timedelta(seconds=30)
    point(ep, bucket(now) + 30, e5xx=1)
    assert alerts.evaluate_alerts(latest) == 1
    event.refresh_from_db()
    assert event.state == AlertEvent.State.RESOLVED and event.resolved_at == latest
    assert mail.outbox[-1].subject == '[Modelfleet] ep: alert "5xx over 5%" resolved'
    assert len(mail.outbox) == 2


def test_one_spike_does_not_fire_a_rule_over_a_longer_window(ep):
    rule_5xx(ep)
    now = timezone.now()
    series(ep, now, [0, 1, 0, 90])  # the newest interval is terrible, the window is not
    assert alerts.evaluate_alerts(now) == 0
    assert not AlertEvent.objects.exists() and mail.outbox == []


def test_a_rule_does_not_fire_on_too_little_data(ep):
    rule_5xx(ep, for_seconds=120)
    now = timezone.now()
    series(ep, now, [50, 50, 50, 50, 50])  # 5 of 8 intervals: under 80% of the window
    assert alerts.evaluate_alerts(now) == 0
    series(ep, now - timedelta(seconds=75), [50, 50, 50])  # fills the rest of the window
    assert alerts.evaluate_alerts(now) == 1


def test_stale_or_requestless_data_neither_fires_nor_resolves(ep):
    rule = rule_5xx(ep)
    now = timezone.now()
    series(ep, now - timedelta(minutes=5), [50, 50, 50, 50])
    assert alerts.evaluate_alerts(now) == 0  # stale
    MetricPoint.objects.all().delete()
    series(ep, now, [0, 0, 0, 0], requests=0)
    assert alerts.evaluate_alerts(now) == 0  # no requests: no rate to judge

    AlertEvent.objects.create(rule=rule, endpoint=ep, started_at=now - timedelta(minutes=10), value=50)
    MetricPoint.objects.all().delete()
    series(ep, now - timedelta(minutes=5), [0, 0, 0, 0])
    assert alerts.evaluate_alerts(now) == 0  # no fresh data: stays firing
    assert AlertEvent.objects.get().state == AlertEvent.State.FIRING


def test_evaluation_takes_one_query_per_rule(ep, django_assert_max_num_queries):
    for i in range(3):
        rule_5xx(ep, name=f"rule {i}")
    with django_assert_max_num_queries(5):  # rules, their open events, then each rule's points
        alerts.evaluate_alerts(timezone.now())


def test_the_message_reads_naturally_for_latency(ep):
    AlertRule.objects.create(
        endpoint=ep, name="slow", metric="p99_latency_ms", threshold=1000, for_seconds=15, notify_emails=[]
    )
    now = timezone.now()
    point(ep, bucket(now), requests=10, p99_ms=2345.6)
    assert alerts.evaluate_alerts(now) == 1
    assert AlertEvent.objects.get().message == "p99 latency 2346 ms > 1000 ms for 15 s"
    assert mail.outbox == []  # nobody to tell


def test_disabled_rules_are_not_evaluated(ep):
    rule_5xx(ep, enabled=False)
    now = timezone.now()
    series(ep, now, [50, 50, 50, 50])
    assert alerts.evaluate_alerts(now) == 0


def test_a_failing_rule_does_not_stop_the_others(ep, caplog):
    broken = rule_5xx(ep, name="broken", metric="no_such_metric")
    rule_5xx(ep, name="fine")
    now = timezone.now()
    series(ep, now, [50, 50, 50, 50])
    assert alerts.evaluate_alerts(now) == 1
    assert AlertEvent.objects.get().rule.name == "fine"
    assert f"evaluating alert rule {broken.id}" in caplog.text


@pytest.mark.parametrize(
    ("metric", "comparison", "threshold", "expected"),
    [
        # Request-weighted mean of the intervals' p99: (100×200 + 300×400) / 400.
        ("p99_latency_ms", "gt", 150, 350.0),
        ("p50_latency_ms", "gt", 10, 35.0),
        # Requests per second over the 30 s covered: 400 / 30.
        ("request_rate", "gt", 1, 400 / 30),
        ("cpu_pct", "gt", 50, 70.0),
        ("mem_pct", "lt", 50, 30.0),
        ("error_4xx_rate_pct", "gt", 1, 2.5),
    ],
)
def test_each_metric_is_aggregated_over_the_window(ep, metric, comparison, threshold, expected):
    rule = AlertRule.objects.create(
        endpoint=ep, name=metric, metric=metric, comparison=comparison, threshold=threshold, for_seconds=30
    )
    now = timezone.now()
    base = bucket(now)
    point(ep, base - 15, requests=100, p50_ms=20, p99_ms=200, cpu_pct=60, mem_pct=20, count_4xx=4)
    point(ep, base, requests=300, p50_ms=40, p99_ms=400, cpu_pct=80, mem_pct=40, count_4xx=6)
    assert alerts.evaluate_alerts(now) == 1
    assert AlertEvent.objects.get(rule=rule).value == pytest.approx(expected)


# --- update notifications -------------------------------------------------------------------------


def test_a_successful_update_emails_the_success_list(ep):
    Endpoint.objects.filter(id=ep.id).update(
        email_notifications={"on_update_success": ["ok@example.com"], "on_update_failure": ["bad@example.com"]}
    )
    notifications.notify_update_result(endpoint_id=ep.id, version=3, ok=True, message="")
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["ok@example.com"]
    assert mail.outbox[0].subject == "[Modelfleet] ep: config version 3 is live"
    assert "Config version:  3" in mail.outbox[0].body


def test_a_failed_update_emails_the_failure_list_with_the_error(ep):
    Endpoint.objects.filter(id=ep.id).update(
        email_notifications={"on_update_success": ["ok@example.com"], "on_update_failure": ["bad@example.com"]}
    )
    notifications.notify_update_result(endpoint_id=ep.id, version=3, ok=False, message="iris-2: model load failed")
    assert [m.to for m in mail.outbox] == [["bad@example.com"]]
    assert mail.outbox[0].subject == "[Modelfleet] ep: update to config version 3 failed"
    assert "iris-2: model load failed" in mail.outbox[0].body
    assert "Update started:" in mail.outbox[0].body


def test_no_email_for_an_empty_list_or_a_deleted_endpoint(ep):
    Endpoint.objects.filter(id=ep.id).update(email_notifications={"on_update_failure": ["bad@example.com"]})
    notifications.notify_update_result(endpoint_id=ep.id, version=2, ok=True, message="")
    notifications.notify_update_result(endpoint_id="0" * 32, version=2, ok=False, message="x")
    assert mail.outbox == []


# --- API: alert rules -----------------------------------------------------------------------------

RULE = {
    "name": "High 5xx",
    "metric": "error_5xx_rate_pct",
    "comparison": "gt",
    "threshold": 5,
    "for_seconds": 300,
    "notify_emails": ["oncall@example.com"],
}


def test_rules_can_be_created_listed_read_patched_and_deleted(api, ep):
    response = api.post(f"{URL}/ep/alert-rules", {**RULE, "unknown_field": 1}, format="json")
    assert response.status_code == 200, response.content
    rule = response.json()
    assert rule["name"] == "High 5xx" and rule["threshold"] == 5.0 and rule["enabled"] is True
    assert rule["state"] == "OK" and rule["created_by"] == "alice@example.com"
    assert isinstance(rule["created_at"], int) and rule["created_at"] > 1_600_000_000_000
    assert AlertRule.objects.get(id=rule["id"]).created_by.username == "alice"

    assert api.get(f"{URL}/ep/alert-rules").json() == {"rules": [rule]}
    assert api.get(f"{URL}/ep/alert-rules/{rule['id']}").json() == rule

    response = api.patch(f"{URL}/ep/alert-rules/{rule['id']}", {"threshold": 10, "enabled": False}, format="json")
    assert response.status_code == 200, response.content
    assert response.json() == {**rule, "threshold": 10.0, "enabled": False}

    assert api.delete(f"{URL}/ep/alert-rules/{rule['id']}").json() == {}
    assert api.get(f"{URL}/ep/alert-rules/{rule['id']}").status_code == 404
    assert not AlertRule.objects.exists()


def test_a_rule_shows_firing_and_disabling_it_resolves_its_event(api, ep):
    rule = rule_5xx(ep)
    AlertEvent.objects.create(rule=rule, endpoint=ep, started_at=timezone.now(), value=9)
    assert api.get(f"{URL}/ep/alert-rules/{rule.id}").json()["state"] == "FIRING"
    api.patch(f"{URL}/ep/alert-rules/{rule.id}", {"enabled": False}, format="json")
    assert AlertEvent.objects.get().state == AlertEvent.State.RESOLVED
    assert api.get(f"{URL}/ep/alert-rules/{rule.id}").json()["state"] == "OK"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": 5}, "name"),
        ({"metric": "latency"}, "metric"),
        ({"comparison": "ge"}, "comparison"),
        ({"threshold": "5"}, "threshold"),
        ({"threshold": True}, "threshold"),
        ({"threshold": 10**400}, "threshold"),
        ({"for_seconds": 14}, "for_seconds"),
        ({"for_seconds": 86_401}, "for_seconds"),
        ({"for_seconds": 60.5}, "for_seconds"),
        ({"enabled": "yes"}, "enabled"),
        ({"notify_emails": "a@example.com"}, "notify_emails"),
        ({"notify_emails": ["not-an-email"]}, "notify_emails"),
        ({"notify_emails": [7]}, "notify_emails"),
    ],
)
def test_an_invalid_rule_is_400_naming_the_field(api, ep, change, field):
    response = api.post(f"{URL}/ep/alert-rules", {**RULE, **change}, format="json")
    assert response.status_code == 400
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert f"'{field}'" in response.json()["message"]
    assert not AlertRule.objects.exists()


@pytest.mark.parametrize("field", ["name", "metric", "threshold"])
def test_a_rule_missing_a_required_field_is_400(api, ep, field):
    body = {k: v for k, v in RULE.items() if k != field}
    response = api.post(f"{URL}/ep/alert-rules", body, format="json")
    assert response.status_code == 400
    assert response.json()["message"] == f"'{field}' is required"


def test_an_invalid_patch_is_400_and_changes_nothing(api, ep):
    rule = rule_5xx(ep)
    response = api.patch(f"{URL}/ep/alert-rules/{rule.id}", {"threshold": 1, "for_seconds": 0}, format="json")
    assert response.status_code == 400 and "'for_seconds'" in response.json()["message"]
    assert AlertRule.objects.get().threshold == 5


def test_a_duplicate_rule_name_is_409(api, ep):
    rule_5xx(ep, name="High 5xx")
    other = rule_5xx(ep, name="other")
    response = api.post(f"{URL}/ep/alert-rules", RULE, format="json")
    assert response.status_code == 409
    assert response.json()["error_code"] == "RESOURCE_ALREADY_EXISTS"
    response = api.patch(f"{URL}/ep/alert-rules/{other.id}", {"name": "High 5xx"}, format="json")
    assert response.status_code == 409
    assert AlertRule.objects.get(id=other.id).name == "other"
    # The same name on another endpoint is fine.
    from endpoints_app.models import EndpointPermission, PermissionLevel

    ep2 = Endpoint.objects.create(name="ep2")
    EndpointPermission.objects.create(endpoint=ep2, user=ep.creator, level=PermissionLevel.CAN_MANAGE)
    assert api.post(f"{URL}/ep2/alert-rules", RULE, format="json").status_code == 200


def test_unknown_endpoints_and_rules_are_404(api, ep):
    other = rule_5xx(Endpoint.objects.create(name="other"))
    for path in ("nope/alert-rules", "nope/alert-events", "nope/health", "ep/alert-rules/999999", "ep/alert-rules/x"):
        response = api.get(f"{URL}/{path}")
        assert response.status_code == 404, path
        assert response.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    # A rule of another endpoint does not exist under this one.
    assert api.get(f"{URL}/ep/alert-rules/{other.id}").status_code == 404
    assert api.delete(f"{URL}/ep/alert-rules/{other.id}").status_code == 404
    assert AlertRule.objects.filter(id=other.id).exists()


def test_without_a_token_it_is_401(anon, ep):
    rule = rule_5xx(ep)
    for path in ("ep/alert-rules", f"ep/alert-rules/{rule.id}", "ep/alert-events", "ep/health"):
        response = anon.get(f"{URL}/{path}")
        assert response.status_code == 401, path
        assert response.json()["error_code"] == "UNAUTHENTICATED"
    assert anon.post(f"{URL}/ep/alert-rules", RULE, format="json").status_code == 401
    assert AlertRule.objects.count() == 1


def test_a_wrong_method_is_405(api, ep):
    assert api.put(f"{URL}/ep/alert-rules", RULE, format="json").status_code == 405
    assert api.post(f"{URL}/ep/health", {}, format="json").status_code == 405


# --- API: events and health -----------------------------------------------------------------------


def test_events_list_newest_first_with_state_filter_and_limit(api, ep):
    rule = rule_5xx(ep)
    now = timezone.now()
    old = AlertEvent.objects.create(
        rule=rule,
        endpoint=ep,
        started_at=now - timedelta(hours=1),
        resolved_at=now - timedelta(minutes=50),
        state=AlertEvent.State.RESOLVED,
        value=12.5,
        message="5xx rate 12.5% > 5% for 60 s",
    )
    new = AlertEvent.objects.create(rule=rule, endpoint=ep, started_at=now, value=7, message="m")
    events = api.get(f"{URL}/ep/alert-events").json()["events"]
    assert [e["id"] for e in events] == [new.id, old.id]
    assert events[1] == {
        "id": old.id,
        "rule_id": rule.id,
        "rule_name": "5xx over 5%",
        "state": "RESOLVED",
        "started_at": int(old.started_at.timestamp() * 1000),
        "resolved_at": int(old.resolved_at.timestamp() * 1000),
        "value": 12.5,
        "message": "5xx rate 12.5% > 5% for 60 s",
    }
    assert events[0]["resolved_at"] is None
    assert [e["id"] for e in api.get(f"{URL}/ep/alert-events?state=RESOLVED").json()["events"]] == [old.id]
    assert [e["id"] for e in api.get(f"{URL}/ep/alert-events?state=FIRING").json()["events"]] == [new.id]
    assert [e["id"] for e in api.get(f"{URL}/ep/alert-events?limit=1").json()["events"]] == [new.id]
    for query in ("state=OPEN", "limit=0", "limit=x"):
        response = api.get(f"{URL}/ep/alert-events?{query}")
        assert response.status_code == 400, query
        assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"


def test_health_shows_status_and_history_newest_first(api, live):
    t0 = timezone.now()
    poll(live, t0)
    Replica.objects.filter(deployment__endpoint=live).update(state=ReplicaState.FAILED)
    poll(live, t0 + timedelta(seconds=10))
    body = api.get(f"{URL}/live/health").json()
    assert body["status"] == "DOWN"
    assert body["reason"] == "served entity iris-1 has no ready replica"
    assert body["changed_at"] == int((t0 + timedelta(seconds=10)).timestamp() * 1000)
    assert [(h["previous"], h["status"]) for h in body["history"]] == [("HEALTHY", "DOWN"), ("NOT_POLLED", "HEALTHY")]
    assert body["history"][0]["at"] == body["changed_at"]
    assert len(api.get(f"{URL}/live/health?limit=1").json()["history"]) == 1


def test_health_of_a_never_polled_endpoint(api, ep):
    assert api.get(f"{URL}/ep/health").json() == {
        "status": "NOT_POLLED",
        "reason": "",
        "changed_at": None,
        "history": [],
        "polls": [],
    }


def test_health_says_since_when_a_poller_is_failing(api, ep):
    from datetime import timedelta

    from django.utils import timezone

    from endpoints_app.models import PollKind, PollTarget

    since = timezone.now() - timedelta(minutes=3)
    PollTarget.objects.create(
        endpoint=ep,
        kind=PollKind.METRICS,
        next_poll_at=timezone.now(),
        failing_since=since,
        consecutive_failures=4,
        last_error="ConnectTimeout: replica 127.0.0.1:1",
    )
    polls = api.get(f"{URL}/ep/health").json()["polls"]
    assert polls[0]["kind"] == "metrics"
    assert polls[0]["failing_since"] == int(since.timestamp() * 1000)
    assert polls[0]["consecutive_failures"] == 4 and "ConnectTimeout" in polls[0]["last_error"]
