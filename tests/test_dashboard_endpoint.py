"""The endpoint page (config and diff, entities, logs, health and alerts, playground, permissions)
and the gateway's session-cookie path the playground uses."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from benchmarks.bench_dashboard import build_fleet
from endpoints_app.models import (
    AlertEvent,
    AlertRule,
    Endpoint,
    EndpointPermission,
    HealthChange,
    HealthStatus,
    LogKind,
    LogLine,
    PermissionLevel,
    Role,
    UserProfile,
)
from tests.conftest import endpoint_body

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-123")


@pytest.fixture
def fleet(admin) -> dict[str, Endpoint]:
    """ep-0001 serves; ep-0010 is updating from model-1 to model-2; ep-0017's update failed;
    ep-0007 splits 80/20 (see build_fleet)."""
    return {e.name: e for e in build_fleet(18, owner=admin, minutes_of_points=2)}


def persona(django_user_model, name: str, role: str = Role.NONE, grant: tuple[Endpoint, str] | None = None) -> Client:
    user = django_user_model.objects.create_user(name, f"{name}@example.com", "pw-123456789")
    UserProfile.objects.create(user=user, role=role)
    if grant:
        EndpointPermission.objects.create(endpoint=grant[0], user=user, level=grant[1])
    client = Client()
    client.force_login(user)
    return client


def as_admin(admin) -> Client:
    client = Client()
    client.force_login(admin)
    return client


def page(client: Client, name: str, query: str = "") -> str:
    response = client.get(f"/endpoints/{name}/{query}")
    assert response.status_code == 200
    return response.content.decode()


def test_anonymous_visitors_are_sent_to_sign_in(client, fleet):
    response = client.get("/endpoints/ep-0001/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_it_shows_state_config_and_served_entities(admin, fleet):
    html = page(as_admin(admin), "ep-0007")
    assert '<span class="badge badge-ready">Ready</span>' in html
    assert "&quot;entity_name&quot;: &quot;main.default.model&quot;" in html  # the active config, as JSON
    assert "model-1" in html and "model-2" in html
    assert re.search(r"model-1</th>.*?80 %.*?Ready.*?0 / 1", html, flags=re.S)  # traffic, state, replicas
    assert "env=staging" in html and "Your access</dt><dd>CAN_MANAGE" in html


def test_while_updating_it_shows_both_configs_and_a_diff(admin, fleet):
    html = page(as_admin(admin), "ep-0010")
    assert "Ready (Updating)" in html and "<strong>Updating</strong> to version 2" in html
    assert '<span class="del">-      &quot;name&quot;: &quot;model-1&quot;,</span>' in html
    assert '<span class="add">+      &quot;name&quot;: &quot;model-2&quot;,</span>' in html
    assert "Pending (version 2)" in html and "Active (version 1)" in html


def test_a_failed_update_says_so(admin, fleet):
    Endpoint.objects.filter(name="ep-0017").update(config_update_message="model-2 could not load")
    html = page(as_admin(admin), "ep-0017")
    assert "Ready (Update failed)" in html and "The update to version 2 failed" in html
    assert "model-2 could not load" in html


def test_it_shows_the_newest_log_lines_and_filters_them(admin, fleet):
    endpoint = fleet["ep-0001"]
    now = timezone.now()
    for i, message in enumerate(["model loaded", "GET /health 200", "predict took 3 ms"]):
        LogLine.objects.create(
            endpoint=endpoint,
            served_entity_name="model-1",
            kind=LogKind.SERVER,
            replica=0,
            ts=now - timedelta(seconds=10 - i),
            level="INFO",
            message=message,
        )
    LogLine.objects.create(
        endpoint=endpoint, served_entity_name="model-1", kind=LogKind.BUILD, ts=now, level="INFO", message="copied"
    )
    client = as_admin(admin)
    html = page(client, "ep-0001")
    logs = re.search(r'<pre class="logs".*?</pre>', html, flags=re.S).group(0)
    assert logs.index("model loaded") < logs.index("predict took 3 ms")  # oldest first, like a terminal
    assert "[model-1 #0]" in logs and "copied" not in logs
    filtered = re.search(r'<pre class="logs".*?</pre>', page(client, "ep-0001", "?logs_q=predict"), flags=re.S)
    assert "predict took" in filtered.group(0) and "model loaded" not in filtered.group(0)
    build = re.search(r'<pre class="logs".*?</pre>', page(client, "ep-0001", "?logs_kind=build"), flags=re.S)
    assert "copied" in build.group(0) and "model loaded" not in build.group(0)


def test_it_shows_health_changes_and_alerts(admin, fleet):
    endpoint = fleet["ep-0001"]
    HealthChange.objects.create(
        endpoint=endpoint,
        at=timezone.now(),
        previous=HealthStatus.HEALTHY,
        status=HealthStatus.DEGRADED,
        reason="5xx over 5 %",
    )
    rule = AlertRule.objects.create(endpoint=endpoint, name="too many 5xx", metric="error_5xx_rate_pct", threshold=5)
    AlertEvent.objects.create(rule=rule, endpoint=endpoint, started_at=timezone.now(), value=12.5)
    html = page(as_admin(admin), "ep-0001")
    assert "Healthy → <strong>Degraded</strong>" in html and "5xx over 5 %" in html
    assert "too many 5xx" in html and "Firing" in html.replace("FIRING", "Firing") and "12.50" in html


def test_the_charts_and_scripts_are_wired_to_the_apis(admin, fleet):
    html = page(as_admin(admin), "ep-0007")
    for canvas in ("latency", "requests", "errors", "cpu", "mem", "replicas"):
        assert f'<canvas id="chart-{canvas}"' in html
    for label in ("1 h", "6 h", "24 h", "7 d", "14 d"):
        assert f">{label}</button>" in html
    data = json.loads(re.search(r'<script id="endpoint-data" type="application/json">(.*?)</script>', html).group(1))
    assert data["entities"] == ["model-1", "model-2"]
    assert data["seriesUrl"] == "/api/2.0/modelfleet/serving-endpoints/ep-0007/metric-series"
    assert data["invocationsUrl"] == "/serving-endpoints/ep-0007/invocations"
    assert "vendor/chart.js/chart.umd.min.js" in html and "js/endpoint.js" in html


def test_the_playground_prefills_an_example_from_the_signature(user, api, registered_models):
    api.post("/api/2.0/serving-endpoints", endpoint_body("iris-ep", (registered_models["iris"], "1")), format="json")
    client = Client()
    client.force_login(user)
    html = page(client, "iris-ep")
    body = re.search(r'<textarea id="query-body"[^>]*>(.*?)</textarea>', html, flags=re.S).group(1)
    example = json.loads(body.replace("&quot;", '"'))
    assert example["dataframe_split"]["columns"] == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    assert len(example["dataframe_split"]["data"][0]) == 4


def test_a_viewer_sees_no_manage_actions_and_no_playground(django_user_model, fleet):
    html = page(persona(django_user_model, "vera", Role.VIEWER), "ep-0001")
    assert "Your access</dt><dd>CAN_VIEW" in html
    assert "/endpoints/ep-0001/edit" not in html and "/delete" not in html
    assert 'id="query-form"' not in html
    assert "data-grant-form" not in html and "data-remove-grant" not in html
    assert "group admins" in re.search(r'<section id="permissions".*?</section>', html, flags=re.S).group(0)


def test_can_query_gets_the_playground_but_no_edit(django_user_model, fleet):
    client = persona(django_user_model, "quinn", grant=(fleet["ep-0001"], PermissionLevel.CAN_QUERY))
    html = page(client, "ep-0001")
    assert 'id="query-form"' in html and "/endpoints/ep-0001/edit" not in html


def test_a_manager_gets_edit_delete_and_the_grant_form(django_user_model, fleet):
    client = persona(django_user_model, "max", grant=(fleet["ep-0001"], PermissionLevel.CAN_MANAGE))
    html = page(client, "ep-0001")
    assert 'href="/endpoints/ep-0001/edit"' in html and 'href="/endpoints/ep-0001/delete"' in html
    assert "data-grant-form" in html and 'data-principal="max"' in html and 'data-self="1"' in html


def test_an_outsider_gets_the_not_found_page(django_user_model, fleet):
    client = persona(django_user_model, "olga")
    for url in ("/endpoints/ep-0001/", "/endpoints/ep-0001/permissions", "/endpoints/nope/"):
        response = client.get(url)
        assert response.status_code == 404 and b"<h1>Not found</h1>" in response.content
    other = persona(django_user_model, "otto", grant=(fleet["ep-0002"], PermissionLevel.CAN_VIEW))
    assert other.get("/endpoints/ep-0001/").status_code == 404
    assert other.get("/endpoints/ep-0002/").status_code == 200


def test_the_permissions_panel_renders_alone_for_the_script(django_user_model, admin, fleet):
    EndpointPermission.objects.create(endpoint=fleet["ep-0001"], user=admin, level=PermissionLevel.CAN_QUERY)
    viewer = persona(django_user_model, "vera", Role.VIEWER)
    html = viewer.get("/endpoints/ep-0001/permissions").content.decode()
    assert html.lstrip().startswith('<section id="permissions"')
    assert "<td>root</td>" in html and "<td>CAN_QUERY</td>" in html
    assert "data-grant-form" not in html
    assert "data-grant-form" in as_admin(admin).get("/endpoints/ep-0001/permissions").content.decode()


def test_grants_changed_through_the_permissions_api_show_in_the_panel(admin, fleet, django_user_model):
    """The panel's script calls the permissions API with the session and the CSRF header."""
    persona(django_user_model, "gus")
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin)
    page(client, "ep-0001")
    token = client.cookies["csrftoken"].value
    url = f"/api/2.0/permissions/serving-endpoints/{fleet['ep-0001'].id}"
    body = {"access_control_list": [{"user_name": "gus", "permission_level": "CAN_QUERY"}]}
    refused = client.patch(url, body, content_type="application/json")
    assert refused.status_code == 403  # no CSRF header: a session alone changes nothing
    added = client.patch(url, body, content_type="application/json", headers={"X-CSRFToken": token})
    assert added.status_code == 200
    assert 'data-principal="gus"' in client.get("/endpoints/ep-0001/permissions").content.decode()
    removed = client.put(
        url, {"access_control_list": []}, content_type="application/json", headers={"X-CSRFToken": token}
    )
    assert removed.status_code == 200
    assert 'data-principal="gus"' not in client.get("/endpoints/ep-0001/permissions").content.decode()


def test_the_number_of_queries_does_not_grow_with_history(admin, fleet):
    client = as_admin(admin)
    endpoint = fleet["ep-0007"]
    with CaptureQueriesContext(connection) as before:
        page(client, "ep-0007")
    now = timezone.now()
    LogLine.objects.bulk_create(
        LogLine(endpoint=endpoint, served_entity_name="model-1", kind=LogKind.SERVER, ts=now, message=f"line {i}")
        for i in range(300)
    )
    HealthChange.objects.bulk_create(
        HealthChange(endpoint=endpoint, at=now, previous=HealthStatus.HEALTHY, status=HealthStatus.DEGRADED)
        for _ in range(50)
    )
    with CaptureQueriesContext(connection) as after:
        page(client, "ep-0007")
    assert len(after) == len(before) <= 25


# --- the gateway's session path (the playground) ---------------------------------------------------


def gateway_post(cookies: dict[str, str], headers: dict[str, str] | None = None, name: str = "gw") -> tuple[int, dict]:
    from asgiref.testing import ApplicationCommunicator

    from dashboard.asgi import application

    raw = [
        (b"host", b"testserver"),
        (b"content-type", b"application/json"),
        (b"cookie", "; ".join(f"{k}={v}" for k, v in cookies.items()).encode()),
    ]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {
        "type": "http",
        "method": "POST",
        "scheme": "http",
        "server": ("testserver", 80),
        "path": f"/serving-endpoints/{name}/invocations",
        "headers": raw,
        "query_string": b"",
    }

    async def call() -> tuple[int, dict]:
        comm = ApplicationCommunicator(application, scope)
        await comm.send_input({"type": "http.request", "body": b'{"inputs": [[1, 2, 3, 4]]}', "more_body": False})
        start = await comm.receive_output(timeout=10)
        body = await comm.receive_output(timeout=10)
        return start["status"], json.loads(body["body"] or b"{}")

    return asyncio.run(call())


def browser_session(user) -> tuple[dict[str, str], str]:
    """The cookies a signed-in browser holds after opening a page, and the page's CSRF token."""
    client = Client()
    client.force_login(user)
    client.get("/")
    return {
        "sessionid": client.cookies["sessionid"].value,
        "csrftoken": client.cookies["csrftoken"].value,
    }, client.cookies["csrftoken"].value


@pytest.fixture
def gw_endpoint(user, api, registered_models) -> str:
    """An endpoint alice (editor) created: she has CAN_MANAGE; nothing serves it yet."""
    response = api.post(
        "/api/2.0/serving-endpoints", endpoint_body("gw", (registered_models["iris"], "1")), format="json"
    )
    assert response.status_code == 200
    return "gw"


@pytest.mark.django_db(transaction=True)  # the gateway reads sessions and users from its own threads
class TestTheGatewayTakesTheDashboardSession:
    def test_a_session_with_the_csrf_header_passes_the_access_check(self, user, gw_endpoint):
        cookies, token = browser_session(user)
        status, body = gateway_post(cookies, {"X-CSRFToken": token, "Origin": "http://testserver"})
        # Past authentication and CAN_QUERY: the endpoint is still deploying, so 503, not 401/403.
        assert status == 503 and body["error_code"] == "TEMPORARILY_UNAVAILABLE"

    def test_without_the_csrf_header_the_cookie_alone_is_refused(self, user, gw_endpoint):
        cookies, _ = browser_session(user)
        status, body = gateway_post(cookies)
        assert status == 403 and "X-CSRFToken" in body["message"]

    def test_a_wrong_csrf_token_is_refused(self, user, gw_endpoint):
        cookies, _ = browser_session(user)
        status, body = gateway_post(cookies, {"X-CSRFToken": "x" * 32})
        assert status == 403 and "CSRF verification failed" in body["message"]

    def test_a_call_from_another_site_is_refused(self, user, gw_endpoint):
        cookies, token = browser_session(user)
        status, body = gateway_post(cookies, {"X-CSRFToken": token, "Origin": "http://evil.example"})
        assert status == 403 and "CSRF" in body["message"]

    def test_the_session_needs_can_query(self, gw_endpoint, django_user_model):
        viewer = django_user_model.objects.create_user("vera", "vera@example.com", "pw-123456789")
        UserProfile.objects.create(user=viewer, role=Role.VIEWER)
        outsider = django_user_model.objects.create_user("olga", "olga@example.com", "pw-123456789")
        cookies, token = browser_session(viewer)
        status, body = gateway_post(cookies, {"X-CSRFToken": token})
        assert status == 403 and "CAN_QUERY" in body["message"]
        cookies, token = browser_session(outsider)
        assert gateway_post(cookies, {"X-CSRFToken": token})[0] == 404

    def test_an_ended_session_is_401(self, user, gw_endpoint):
        cookies, token = browser_session(user)
        user.set_password("changed-password-1")  # changing the password ends every session
        user.save()
        status, body = gateway_post(cookies, {"X-CSRFToken": token})
        assert status == 401 and body["error_code"] == "UNAUTHENTICATED"

    def test_a_bearer_token_still_wins_over_cookies(self, user, token, gw_endpoint):
        cookies, _ = browser_session(user)
        status, _ = gateway_post(cookies, {"Authorization": f"Bearer {token}"})
        assert status == 503  # no CSRF needed: the token authenticates, the cookie is ignored
        status, body = gateway_post({}, {})
        assert status == 401 and "Authorization" in body["message"]
