"""Rollout plans on the endpoint page (issue 17 part 5): the start form with its defaults, the
progress strip (state, steps, share, gate readings), the buttons by state, and the server's checks:
CSRF on every POST, viewers get 403 and change nothing, a covered endpoint's plan goes to approval."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from endpoints_app.models import (
    ApprovalPolicy,
    Endpoint,
    EndpointPermission,
    PermissionLevel,
    Role,
    RolloutPlan,
    UserProfile,
)
from tests.conftest import endpoint_body
from tests.test_api_endpoints import create, mark_ready
from tests.test_rollout_plans import count, evaluate

pytestmark = pytest.mark.django_db


@pytest.fixture
def live(api, registered_models) -> Endpoint:
    create(api, endpoint_body("strip", (registered_models["iris"], "1")))
    mark_ready("strip")
    return Endpoint.objects.get(name="strip")


@pytest.fixture
def manager(user) -> Client:
    client = Client()
    client.force_login(user)  # alice created the endpoint: she manages it
    return client


def viewer_client(django_user_model, live) -> Client:
    viewer = django_user_model.objects.create_user("vic", "vic@example.com", "pw-123456789")
    UserProfile.objects.create(user=viewer, role=Role.VIEWER)
    EndpointPermission.objects.create(endpoint=live, user=viewer, level=PermissionLevel.CAN_QUERY)
    client = Client()
    client.force_login(viewer)
    return client


FORM = {
    "entity_name": "main.default.iris",
    "entity_version": "2",
    "steps": "50,100",
    "bake_seconds": "0",
    "min_requests": "5",
    "max_4xx_rate_increase": "0.05",
    "max_5xx_rate_increase": "0.01",
    "max_p99_latency_ratio": "2",
    "p99_latency_floor_ms": "50",
}


def test_the_form_has_defaults_and_starts_a_plan_whose_strip_shows_progress(manager, live):
    page = manager.get("/endpoints/strip/").content.decode()
    assert 'id="rollout"' in page and 'id="rollout-form"' in page
    assert 'name="entity_name" value="main.default.iris"' in page
    assert 'name="entity_version" value="2"' in page  # the newest registered version
    assert (
        'name="steps" value="5,25,50,100"' in page and 'name="bake_seconds" type="number" min="0" value="300"' in page
    )
    assert page.index('id="rollout"') < page.index('id="metrics"')  # over the charts

    response = manager.post("/endpoints/strip/rollouts/start", FORM)
    assert response.status_code == 302 and response["Location"].endswith("/endpoints/strip/#rollout")
    plan = RolloutPlan.objects.get()
    assert plan.state == "RUNNING" and plan.steps == [50, 100] and plan.gates["min_requests"] == 5
    mark_ready("strip")
    plan = evaluate(plan)
    count(live, "iris-1", 20)
    count(live, "iris-2", 3)
    plan = evaluate(plan)
    page = manager.get("/endpoints/strip/").content.decode()
    assert 'data-rollout-state="RUNNING"' in page and "<strong data-rollout-share>50 %</strong>" in page
    assert "4xx_rate_increase" in page and "WAITING" in page
    assert re.search(r'<li class="current" aria-current="step">50 %</li>', page)
    assert 'data-rollout-action="pause"' in page and 'data-rollout-action="abort"' in page
    assert 'id="rollout-form"' not in page  # one open plan at a time

    assert manager.post(f"/endpoints/strip/rollouts/{plan.pk}/pause").status_code == 302
    page = manager.get("/endpoints/strip/").content.decode()
    assert 'data-rollout-state="PAUSED"' in page and 'data-rollout-action="resume"' in page
    assert manager.post(f"/endpoints/strip/rollouts/{plan.pk}/abort").status_code == 302
    plan.refresh_from_db()
    assert plan.state == "ABORTED"
    mark_ready("strip")
    page = manager.get("/endpoints/strip/").content.decode()
    assert 'data-rollout-action="close"' in page
    assert manager.post(f"/endpoints/strip/rollouts/{plan.pk}/close").status_code == 302
    # A finished plan: 409 page, nothing changes.
    assert manager.post(f"/endpoints/strip/rollouts/{plan.pk}/resume").status_code == 409
    assert manager.post(f"/endpoints/strip/rollouts/{plan.pk}/explode").status_code == 404


def test_bad_form_input_is_a_400_page(manager, live):
    for change in ({"steps": "50,25"}, {"steps": "a,b"}, {"bake_seconds": "-5"}, {"min_requests": "x"}):
        response = manager.post("/endpoints/strip/rollouts/start", {**FORM, **change})
        assert response.status_code == 400, change
    assert manager.post("/endpoints/strip/rollouts/start", {**FORM, "entity_version": "99"}).status_code == 404
    assert not RolloutPlan.objects.exists()


def test_viewers_see_the_strip_but_cannot_start_or_act(manager, live, django_user_model):
    manager.post("/endpoints/strip/rollouts/start", FORM)
    plan = RolloutPlan.objects.get()
    viewer = viewer_client(django_user_model, live)
    page = viewer.get("/endpoints/strip/").content.decode()
    assert 'id="rollout"' in page and "data-rollout-action" not in page and 'id="rollout-form"' not in page
    assert viewer.post("/endpoints/strip/rollouts/start", FORM).status_code == 403
    for action in ("pause", "abort", "promote", "close", "resume"):
        assert viewer.post(f"/endpoints/strip/rollouts/{plan.pk}/{action}").status_code == 403, action
    plan.refresh_from_db()
    assert plan.state == "RUNNING" and RolloutPlan.objects.count() == 1
    outsider = django_user_model.objects.create_user("out", "out@example.com", "pw-123456789")
    client = Client()
    client.force_login(outsider)
    assert client.post(f"/endpoints/strip/rollouts/{plan.pk}/abort").status_code == 404


def test_every_post_needs_the_csrf_token(user, live):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    assert client.get("/endpoints/strip/rollouts/start").status_code == 405
    assert client.post("/endpoints/strip/rollouts/start", FORM).status_code == 403
    assert not RolloutPlan.objects.exists()
    page = client.get("/endpoints/strip/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    assert client.post("/endpoints/strip/rollouts/start", {**FORM, "csrfmiddlewaretoken": token}).status_code == 302
    plan = RolloutPlan.objects.get()
    assert client.post(f"/endpoints/strip/rollouts/{plan.pk}/pause").status_code == 403
    plan.refresh_from_db()
    assert plan.state == "RUNNING"


def test_on_a_covered_endpoint_the_form_opens_a_change_request(manager, live):
    ApprovalPolicy.objects.create(endpoint_name="strip")
    response = manager.post("/endpoints/strip/rollouts/start", FORM)
    plan = RolloutPlan.objects.get()
    assert plan.state == "PENDING_APPROVAL"
    assert response.status_code == 302 and response["Location"] == f"/change-requests/{plan.change_request_id}/"
    detail = manager.get(response["Location"]).content.decode()
    assert "rollout_plan" in detail and "main.default.iris" in detail  # the whole plan, for the approver
    page = manager.get("/endpoints/strip/").content.decode()
    assert "waits for an approver" in page and 'data-rollout-action="abort"' in page
