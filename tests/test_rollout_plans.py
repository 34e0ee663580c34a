"""Rollout plans (issue 17) without the stack: the API's validation and errors, each step applied
through the config service (audited with its readings), the gates read from the gateway's real
counters in Redis (written here as the gateway writes them), rollback, close, a manual change
pausing the plan, approval once for the whole plan, and who may do what."""

from __future__ import annotations

import pytest
from django.core import mail
from rest_framework.test import APIClient

from endpoints_app.gateway.metrics import BUCKET_LABELS, LATENCY_BUCKETS_MS, redis_key
from endpoints_app.models import (
    ApprovalPolicy,
    AuditEvent,
    ChangeRequest,
    ConfigUpdate,
    Deployment,
    Endpoint,
    EndpointPermission,
    PermissionLevel,
    Role,
    RolloutPlan,
    UserProfile,
)
from endpoints_app.redis_client import get_redis
from endpoints_app.services import rollout_plans
from endpoints_app.services.tokens import create_token
from tests.conftest import endpoint_body
from tests.test_api_endpoints import create, mark_ready

pytestmark = pytest.mark.django_db
URL = "/api/2.0/modelfleet/serving-endpoints/{}/rollouts"
GATES = {"min_requests": 10, "max_4xx_rate_increase": 0.05, "max_p99_latency_ratio": 2.0, "p99_latency_floor_ms": 50}


def client_with_role(django_user_model, name: str, role: str, grant: str | None = None, endpoint=None) -> APIClient:
    user = django_user_model.objects.create_user(name, f"{name}@example.com", "pw-123456789")
    UserProfile.objects.create(user=user, role=role)
    if grant:
        EndpointPermission.objects.create(endpoint=endpoint, user=user, level=grant)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {create_token(user=user)[1]}")
    return client


@pytest.fixture
def live(api, registered_models) -> Endpoint:
    body = endpoint_body("canary", (registered_models["iris"], "1"))
    body["email_notifications"] = {"on_update_failure": ["oncall@example.com"]}
    create(api, body)
    mark_ready("canary")
    return Endpoint.objects.get(name="canary")


def plan_body(registered_models, **extra) -> dict:
    return {
        "served_entity": {"entity_name": registered_models["iris"], "entity_version": "2", "workload_size": "Small"},
        "steps": [50, 100],
        "bake_seconds": 0,
        "gates": GATES,
        **extra,
    }


def count(endpoint: Endpoint, entity: str, n: int, *, status: int = 200, latency_ms: float = 3.0) -> None:
    """Requests as the gateway counts them (gateway.metrics flushes exactly these fields)."""
    label = next((f"{b:g}" for b in LATENCY_BUCKETS_MS if latency_ms <= b), BUCKET_LABELS[-1])
    pipe = get_redis().pipeline()
    key = redis_key(endpoint.id)
    pipe.hincrbyfloat(key, f"{entity}|count", n)
    if 400 <= status < 500:
        pipe.hincrbyfloat(key, f"{entity}|4xx", n)
    elif status >= 500:
        pipe.hincrbyfloat(key, f"{entity}|5xx", n)
    pipe.hincrbyfloat(key, f"{entity}|sum", n * latency_ms)
    pipe.hincrbyfloat(key, f"{entity}|b{label}", n)
    pipe.execute()


def evaluate(plan: RolloutPlan) -> RolloutPlan:
    RolloutPlan.objects.filter(pk=plan.pk).update(next_evaluation_at=None)
    rollout_plans.evaluate(plan.pk)
    plan.refresh_from_db()
    return plan


def routes(endpoint: Endpoint) -> dict[str, int]:
    endpoint.refresh_from_db()
    config = endpoint.active_config
    return {r["served_entity_name"]: r["traffic_percentage"] for r in config.traffic_config["routes"]}


def start(api, live, body) -> RolloutPlan:
    response = api.post(URL.format("canary"), body, format="json")
    assert response.status_code == 200, response.content
    return RolloutPlan.objects.get(pk=response.json()["id"])


def test_a_good_version_goes_through_every_step_and_each_step_is_audited(api, live, registered_models):
    old_deployment = Deployment.objects.get(endpoint=live)
    response = api.post(URL.format("canary"), plan_body(registered_models, steps=[20, 50, 100]), format="json")
    assert response.json()["current_share"] == 20 and response.json()["state"] == "RUNNING"
    plan = RolloutPlan.objects.get(pk=response.json()["id"])
    assert plan.state == "RUNNING" and plan.current_step == 0
    live.refresh_from_db()
    assert live.config_update == ConfigUpdate.IN_PROGRESS
    mark_ready("canary")
    assert routes(live) == {"iris-1": 80, "iris-2": 20}
    # The current version's replicas were reused, not restarted.
    assert Deployment.objects.get(endpoint=live, served_entity_name="iris-1").id == old_deployment.id

    plan = evaluate(plan)  # the step's config is active: its window starts now
    assert plan.step_started_at is not None
    count(live, "iris-1", 40)
    count(live, "iris-2", 5)
    plan = evaluate(plan)
    assert plan.current_step == 0 and plan.readings["status"] == "WAITING"  # 5 < min_requests
    count(live, "iris-2", 5)
    plan = evaluate(plan)
    assert plan.current_step == 1, plan.readings
    mark_ready("canary")
    assert routes(live) == {"iris-1": 50, "iris-2": 50}
    row = AuditEvent.objects.filter(action="endpoint.update_config", object_name="canary").order_by("-id").first()
    assert row.after["rollout_plan"]["plan"] == plan.pk and row.after["rollout_plan"]["share"] == 50
    assert row.after["rollout_plan"]["readings"]["new_version"]["requests"] == 10
    assert row.after["rollout_plan"]["readings"]["status"] == "PASS"

    plan = evaluate(plan)
    count(live, "iris-1", 20)
    count(live, "iris-2", 20)
    plan = evaluate(plan)
    assert plan.current_step == 2
    mark_ready("canary")
    plan = evaluate(plan)
    assert plan.state == "SUCCEEDED" and not plan.is_open
    assert routes(live) == {"iris-2": 100}
    got = api.get(f"{URL.format('canary')}/{plan.pk}").json()
    assert got["state"] == "SUCCEEDED" and got["current_share"] == 100 and len(got["history"]) == 3
    assert api.post(f"{URL.format('canary')}/{plan.pk}/pause").status_code == 409


def test_a_breach_rolls_back_at_once_emails_and_keeps_the_new_version_at_zero(api, live, registered_models):
    plan = start(api, live, plan_body(registered_models))
    mark_ready("canary")
    plan = evaluate(plan)
    count(live, "iris-1", 30)
    count(live, "iris-2", 7)
    count(live, "iris-2", 3, status=400)  # 30 % of the new version's queries fail
    mail.outbox.clear()
    plan = evaluate(plan)
    assert plan.state == "ROLLED_BACK" and plan.is_open
    assert "4xx_rate_increase 0.3 > 0.05" in plan.reason
    assert plan.readings["new_version"]["rate_4xx"] == 0.3
    mark_ready("canary")
    assert routes(live) == {"iris-1": 100, "iris-2": 0}  # deployed at 0 % for inspection
    assert mail.outbox and "rolled back" in mail.outbox[-1].subject
    assert set(mail.outbox[-1].to) == {"oncall@example.com", "alice@example.com"}
    assert "4xx_rate_increase" in mail.outbox[-1].body

    # A second plan waits until this one is closed; closing removes the new version.
    again = api.post(URL.format("canary"), plan_body(registered_models), format="json")
    assert again.status_code == 409 and again.json()["error_code"] == "RESOURCE_CONFLICT"
    assert api.post(f"{URL.format('canary')}/{plan.pk}/resume").status_code == 409
    closed = api.post(f"{URL.format('canary')}/{plan.pk}/close")
    assert closed.status_code == 200, closed.content
    mark_ready("canary")
    assert routes(live) == {"iris-1": 100}
    for verb in ("pause", "resume", "abort", "promote", "close"):
        r = api.post(f"{URL.format('canary')}/{plan.pk}/{verb}")
        assert r.status_code == 409 and r.json()["error_code"] == "RESOURCE_CONFLICT", verb


def test_the_5xx_gate_is_judged_apart_from_4xx_and_against_the_current_version(api, live, registered_models):
    """5xx rates are compared on their own: the current version's own 5xx are not held against the
    new one, a 4xx share under its gate does not hide a 5xx breach, and the reason names 5xx."""
    plan = start(api, live, plan_body(registered_models, gates={**GATES, "max_5xx_rate_increase": 0.02}))
    mark_ready("canary")
    plan = evaluate(plan)
    count(live, "iris-1", 90)
    count(live, "iris-1", 10, status=503)  # the current version fails 10 % of its queries too
    count(live, "iris-2", 19)
    count(live, "iris-2", 1, status=400)  # 5 % 4xx: at the 4xx gate, not over it
    count(live, "iris-2", 2, status=500)  # 2 of 22 = 9.1 %: within 0.02 of the current 10 %
    plan = evaluate(plan)
    assert plan.state == "RUNNING" and plan.current_step == 1, plan.readings
    passed = plan.history[-1]["readings"]  # what allowed the step
    assert passed["status"] == "PASS" and passed["new_version"]["requests"] == 22
    assert abs(passed["new_version"]["rate_5xx"] - 2 / 22) < 1e-3 and passed["current_version"]["rate_5xx"] == 0.1
    mark_ready("canary")
    plan = evaluate(plan)
    assert plan.state == "SUCCEEDED"

    # A new version whose queries fail with 5xx where the current one's do not.
    second = {
        **plan_body(registered_models, gates={**GATES, "max_5xx_rate_increase": 0.02}),
        "served_entity": {"entity_name": registered_models["slow"], "entity_version": "1", "workload_size": "Small"},
    }
    plan = start(api, live, second)
    mark_ready("canary")
    plan = evaluate(plan)
    count(live, "iris-2", 100)
    count(live, "slow-1", 17)
    count(live, "slow-1", 3, status=502)  # 15 % 5xx against 0 %
    plan = evaluate(plan)
    assert plan.state == "ROLLED_BACK", plan.readings
    assert "5xx_rate_increase" in plan.reason and "4xx" not in plan.reason
    assert plan.readings["new_version"]["rate_5xx"] == 0.15
    mark_ready("canary")
    assert routes(live) == {"iris-2": 100, "slow-1": 0}


def test_the_p99_gate_compares_against_the_current_version(api, live, registered_models):
    plan = start(api, live, plan_body(registered_models))
    mark_ready("canary")
    plan = evaluate(plan)
    count(live, "iris-1", 50, latency_ms=4)
    count(live, "iris-2", 20, latency_ms=60)  # under the floor's ratio: 60 / 50 < 2
    plan = evaluate(plan)
    assert plan.state == "RUNNING" and plan.current_step == 1
    mark_ready("canary")
    plan = evaluate(plan)
    assert plan.state == "SUCCEEDED"

    # Another plan, whose new version is slow.
    create_second = {
        **plan_body(registered_models),
        "served_entity": {"entity_name": registered_models["slow"], "entity_version": "1", "workload_size": "Small"},
    }
    plan = start(api, live, create_second)
    mark_ready("canary")
    plan = evaluate(plan)
    count(live, "iris-2", 50, latency_ms=4)
    count(live, "slow-1", 20, latency_ms=400)
    plan = evaluate(plan)
    assert plan.state == "ROLLED_BACK" and "p99_latency_ratio" in plan.reason
    assert plan.readings["gates"][2]["status"] == "FAIL"


@pytest.mark.parametrize(
    ("change", "status", "says"),
    [
        ({"steps": [50, 25, 100]}, 400, "increase"),
        ({"steps": [5, 25, 50]}, 400, "end at 100"),
        ({"steps": [0, 100]}, 400, "between"),
        ({"steps": []}, 400, "non-empty"),
        ({"steps": list(range(1, 101))}, 400, "at most"),
        ({"steps": [50, "x", 100]}, 400, "number"),
        ({"steps": [50.5, 100]}, 400, "whole"),
        ({"bake_seconds": -1}, 400, "between"),
        ({"bake_seconds": 10**12}, 400, "between"),
        ({"bake_seconds": True}, 400, "number"),
        ({"gates": {"min_requests": 0}}, 400, "between"),
        ({"gates": {"max_p99_latency_ratio": 0.5}}, 400, "between"),
        ({"gates": {"max_4xx_rate_increase": 2}}, 400, "between"),
        ({"gates": {"nope": 1}}, 400, "unknown"),
        ({"gates": []}, 400, "gates"),
        ({"extra": 1}, 400, "unknown"),
        ({"served_entity": {"entity_name": "main.default.nope", "entity_version": "1"}}, 404, "does not exist"),
        ({"served_entity": {"entity_name": "main.default.iris", "entity_version": "99"}}, 404, "does not exist"),
        ({"served_entity": {"entity_name": "main.default.iris", "entity_version": "1"}}, 400, "already in"),
        ({"served_entity": "x"}, 400, "served_entity"),
        ({"config": {"served_entities": []}}, 400, "config"),
    ],
)
def test_bad_plans_are_refused_with_an_error_code(api, live, registered_models, change, status, says):
    response = api.post(URL.format("canary"), {**plan_body(registered_models), **change}, format="json")
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error_code", "message"} and says in body["message"], body
    assert not RolloutPlan.objects.exists() and Endpoint.objects.get(name="canary").config_versions.count() == 1


def test_missing_things_and_second_plans(api, live, registered_models):
    both = {**plan_body(registered_models), "config": {"served_entities": []}}
    assert api.post(URL.format("canary"), both, format="json").status_code == 400
    assert api.post(URL.format("canary"), [1], format="json").status_code == 400
    assert api.post(URL.format("nope"), plan_body(registered_models), format="json").status_code == 404
    assert api.get(f"{URL.format('canary')}/12345").status_code == 404
    assert api.post(f"{URL.format('canary')}/12345/abort").status_code == 404
    plan = start(api, live, plan_body(registered_models))
    second = api.post(URL.format("canary"), plan_body(registered_models), format="json")
    assert second.status_code == 409 and "already has rollout plan" in second.json()["message"]
    listed = api.get(URL.format("canary")).json()["rollouts"]
    assert [p["id"] for p in listed] == [plan.pk]
    # Aborting while the first step still deploys: the update in progress must end first.
    assert api.post(f"{URL.format('canary')}/{plan.pk}/abort").status_code == 409
    mark_ready("canary")
    aborted = api.post(f"{URL.format('canary')}/{plan.pk}/abort")
    assert aborted.status_code == 200 and aborted.json()["state"] == "ABORTED"
    mark_ready("canary")
    assert routes(live) == {"iris-1": 100, "iris-2": 0}


def test_a_manual_change_pauses_the_plan_and_resume_applies_the_step_again(api, live, registered_models):
    plan = start(api, live, plan_body(registered_models))
    mark_ready("canary")
    assert routes(live) == {"iris-1": 50, "iris-2": 50}
    manual = {
        "served_entities": [
            {
                "name": "iris-1",
                "entity_name": registered_models["iris"],
                "entity_version": "1",
                "workload_size": "Small",
            },
            {
                "name": "iris-2",
                "entity_name": registered_models["iris"],
                "entity_version": "2",
                "workload_size": "Small",
            },
        ],
        "traffic_config": {
            "routes": [
                {"served_model_name": "iris-1", "traffic_percentage": 90},
                {"served_model_name": "iris-2", "traffic_percentage": 10},
            ]
        },
    }
    assert api.put("/api/2.0/serving-endpoints/canary/config", manual, format="json").status_code == 200
    plan.refresh_from_db()
    assert plan.state == "PAUSED" and "by hand" in plan.reason
    mark_ready("canary")
    plan = evaluate(plan)  # a paused plan does nothing
    assert routes(live) == {"iris-1": 90, "iris-2": 10}
    resumed = api.post(f"{URL.format('canary')}/{plan.pk}/resume")
    assert resumed.status_code == 200 and resumed.json()["state"] == "RUNNING", resumed.content
    mark_ready("canary")
    assert routes(live) == {"iris-1": 50, "iris-2": 50}
    paused = api.post(f"{URL.format('canary')}/{plan.pk}/pause")
    assert paused.status_code == 200 and paused.json()["state"] == "PAUSED"
    promoted = api.post(f"{URL.format('canary')}/{plan.pk}/promote")
    assert promoted.status_code == 200 and promoted.json()["state"] == "RUNNING"
    mark_ready("canary")
    plan = evaluate(plan)
    assert plan.state == "SUCCEEDED" and routes(live) == {"iris-2": 100}


def test_a_covered_endpoint_opens_one_change_request_and_approval_starts_the_plan(
    api, live, registered_models, django_user_model
):
    ApprovalPolicy.objects.create(endpoint_name="canary")
    approver = client_with_role(django_user_model, "paula", Role.APPROVER)
    response = api.post(URL.format("canary"), plan_body(registered_models, steps=[25, 50, 100]), format="json")
    assert response.status_code == 200, response.content
    plan = response.json()
    assert plan["state"] == "PENDING_APPROVAL" and plan["change_request_id"]
    change = ChangeRequest.objects.get(pk=plan["change_request_id"])
    assert change.action == "rollout_plan" and change.status == "PENDING"
    assert Endpoint.objects.get(name="canary").config_versions.count() == 1  # nothing applied yet
    # The author cannot approve it; an approver does, once.
    assert api.post(f"/api/2.0/modelfleet/change-requests/{change.pk}/approve").status_code == 403
    approved = approver.post(f"/api/2.0/modelfleet/change-requests/{change.pk}/approve", {}, format="json")
    assert approved.status_code == 200, approved.content
    rollout = RolloutPlan.objects.get(pk=plan["id"])
    assert rollout.state == "RUNNING"
    mark_ready("canary")
    assert routes(live) == {"iris-1": 75, "iris-2": 25}
    # The next steps need no further approval.
    rollout = evaluate(rollout)
    count(live, "iris-1", 30)
    count(live, "iris-2", 10)
    rollout = evaluate(rollout)
    assert rollout.current_step == 1, (rollout.state, rollout.reason)
    mark_ready("canary")
    assert routes(live) == {"iris-1": 50, "iris-2": 50}
    assert ChangeRequest.objects.count() == 1
    # A direct config change is still refused there.
    assert api.put("/api/2.0/serving-endpoints/canary/config", {}, format="json").status_code == 403


def test_a_rejected_plan_ends_without_changing_anything(api, live, registered_models, django_user_model):
    ApprovalPolicy.objects.create(endpoint_name="canary")
    approver = client_with_role(django_user_model, "paula", Role.APPROVER)
    plan = api.post(URL.format("canary"), plan_body(registered_models), format="json").json()
    rejected = approver.post(
        f"/api/2.0/modelfleet/change-requests/{plan['change_request_id']}/reject", {}, format="json"
    )
    assert rejected.status_code == 200
    got = api.get(f"{URL.format('canary')}/{plan['id']}").json()
    assert got["state"] == "REJECTED" and not got["open"]
    assert Endpoint.objects.get(name="canary").config_versions.count() == 1
    assert api.post(URL.format("canary"), plan_body(registered_models), format="json").status_code == 200


@pytest.mark.parametrize(
    ("role", "grant", "can_read", "can_change"),
    [
        (Role.NONE, None, False, False),
        (Role.VIEWER, None, True, False),
        (Role.NONE, PermissionLevel.CAN_QUERY, True, False),
        (Role.NONE, PermissionLevel.CAN_MANAGE, True, True),
    ],
)
def test_who_may_read_start_and_act(api, live, registered_models, django_user_model, role, grant, can_read, can_change):
    plan = start(api, live, plan_body(registered_models))
    mark_ready("canary")
    client = client_with_role(django_user_model, "mallory", role, grant, live)
    read = client.get(URL.format("canary"))
    assert read.status_code == (200 if can_read else 404)
    started = client.post(URL.format("canary"), plan_body(registered_models), format="json")
    for verb in ("pause", "abort", "promote", "close", "resume"):
        r = client.post(f"{URL.format('canary')}/{plan.pk}/{verb}")
        if not can_read:
            assert r.status_code == 404
        elif not can_change:
            assert r.status_code == 403 and r.json()["error_code"] == "PERMISSION_DENIED", verb
    if not can_read:
        assert started.status_code == 404
    elif not can_change:
        assert started.status_code == 403
        plan.refresh_from_db()
        assert plan.state == "RUNNING"
    else:
        assert started.status_code == 409  # one open plan per endpoint


def test_a_whole_new_config_is_rolled_out_the_same_way(api, live, registered_models):
    iris = registered_models["iris"]
    body = {
        "config": {
            "served_entities": [
                {"name": "next-a", "entity_name": iris, "entity_version": "2", "workload_size": "Small"},
                {"name": "next-b", "entity_name": registered_models["constant"], "entity_version": "1"},
            ],
            "traffic_config": {
                "routes": [
                    {"served_model_name": "next-a", "traffic_percentage": 75},
                    {"served_model_name": "next-b", "traffic_percentage": 25},
                ]
            },
        },
        "steps": [40, 100],
        "bake_seconds": 0,
        "gates": GATES,
    }
    plan = start(api, live, body)
    assert plan.new_entity_names == ["next-a", "next-b"]
    mark_ready("canary")
    assert routes(live) == {"iris-1": 60, "next-a": 30, "next-b": 10}  # the new config's split, scaled
    plan = evaluate(plan)
    count(live, "iris-1", 30)
    count(live, "next-a", 8)
    count(live, "next-b", 4)
    plan = evaluate(plan)
    assert plan.current_step == 1, plan.readings
    assert plan.readings["new_version"]["requests"] == 12
    mark_ready("canary")
    plan = evaluate(plan)
    assert plan.state == "SUCCEEDED" and routes(live) == {"next-a": 75, "next-b": 25}
