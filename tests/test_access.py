"""The permission matrix: every endpoint route × every persona, expected status from one rule.

The rule (endpoints_app/access.py): no level → 404; a level below what the route needs → 403;
otherwise the route runs (any status but 403/404). Expected statuses are computed from the
routes' needed levels, not copied by hand.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from rest_framework.test import APIClient

from endpoints_app.access import RANK
from endpoints_app.models import (
    AlertRule,
    Endpoint,
    EndpointPermission,
    PermissionLevel,
    Role,
    RolloutPlan,
    UserProfile,
)
from endpoints_app.services.tokens import create_token
from tests.conftest import endpoint_body, shared_rows

pytestmark = pytest.mark.django_db

VIEW, QUERY, MANAGE = PermissionLevel.CAN_VIEW, PermissionLevel.CAN_QUERY, PermissionLevel.CAN_MANAGE
EP = "/api/2.0/serving-endpoints/guarded"
MF = "/api/2.0/modelfleet/serving-endpoints/guarded"

# (method, path, body, level needed); "{id}" is the endpoint's id.
ROUTES = [
    ("get", EP, None, VIEW),
    ("delete", EP, None, MANAGE),
    ("put", f"{EP}/config", {"served_entities": [{"entity_name": "main.default.iris", "entity_version": "2"}]}, MANAGE),
    ("patch", f"{EP}/tags", {"add_tags": [{"key": "k", "value": "v"}]}, MANAGE),
    ("put", f"{EP}/ai-gateway", {"usage_tracking_config": {"enabled": True}}, MANAGE),
    ("put", f"{EP}/rate-limits", {"rate_limits": [{"calls": 100, "key": "user", "renewal_period": "minute"}]}, MANAGE),
    ("patch", f"{EP}/notifications", {"email_notifications": {"on_update_failure": ["ops@example.com"]}}, MANAGE),
    ("patch", f"{EP}/telemetry-config", {"telemetry_config": {"enabled_telemetry_features": []}}, MANAGE),
    ("get", f"{EP}/openapi", None, VIEW),
    ("get", f"{EP}/served-models/iris-1/logs", None, VIEW),
    ("get", f"{EP}/served-models/iris-1/build-logs", None, VIEW),
    ("get", f"{EP}/metrics", None, VIEW),
    ("get", f"{MF}/metric-series", None, VIEW),
    ("get", f"{MF}/scaling-decisions", None, VIEW),
    ("get", f"{MF}/log-lines", None, VIEW),
    ("get", f"{MF}/health", None, VIEW),
    ("get", f"{MF}/alert-rules", None, VIEW),
    (
        "post",
        f"{MF}/alert-rules",
        {"name": "r", "metric": "p99_latency_ms", "threshold": 1000, "for_seconds": 60},
        MANAGE,
    ),
    ("get", f"{MF}/alert-rules/{{rule}}", None, VIEW),
    ("patch", f"{MF}/alert-rules/{{rule}}", {"threshold": 2000}, MANAGE),
    ("delete", f"{MF}/alert-rules/{{rule}}", None, MANAGE),
    ("get", f"{MF}/alert-events", None, VIEW),
    ("get", f"{MF}/payloads", None, MANAGE),
    ("get", f"{MF}/usage", None, VIEW),  # managers see everyone's use, others their own
    ("get", f"{MF}/rollouts", None, VIEW),
    ("post", f"{MF}/rollouts", {"served_entity": {"entity_name": "main.default.iris", "entity_version": "2"}}, MANAGE),
    ("get", f"{MF}/rollouts/{{plan}}", None, VIEW),
    ("post", f"{MF}/rollouts/{{plan}}/pause", None, MANAGE),
    ("post", f"{MF}/rollouts/{{plan}}/resume", None, MANAGE),
    ("post", f"{MF}/rollouts/{{plan}}/abort", None, MANAGE),
    ("post", f"{MF}/rollouts/{{plan}}/promote", None, MANAGE),
    ("post", f"{MF}/rollouts/{{plan}}/close", None, MANAGE),
    ("get", "/api/2.0/permissions/serving-endpoints/{id}", None, VIEW),
    ("get", "/api/2.0/permissions/serving-endpoints/{id}/permissionLevels", None, VIEW),
    ("put", "/api/2.0/permissions/serving-endpoints/{id}", {"access_control_list": []}, MANAGE),
    ("patch", "/api/2.0/permissions/serving-endpoints/{id}", {"access_control_list": []}, MANAGE),
]

# persona → (global role, direct grant on the endpoint)
PERSONAS = {
    "outsider": (Role.NONE, None),
    "viewer": (Role.VIEWER, None),
    "can_query": (Role.NONE, QUERY),
    "editor": (Role.EDITOR, None),
    "approver": (Role.APPROVER, None),
    "can_manage": (Role.NONE, MANAGE),
    "admin": (Role.ADMIN, None),
}


def level_of(persona: str) -> str | None:
    role, grant = PERSONAS[persona]
    if role == Role.ADMIN:
        return MANAGE
    base = VIEW if role else None
    return grant if RANK[grant] > RANK[base] else base


def client_for(persona: str, django_user_model, endpoint: Endpoint) -> APIClient:
    role, grant = PERSONAS[persona]
    user = django_user_model.objects.create_user(persona, f"{persona}@example.com", "pw-123456789")
    UserProfile.objects.create(user=user, role=role)
    if grant:
        EndpointPermission.objects.create(endpoint=endpoint, user=user, level=grant)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {create_token(user=user)[1]}")
    return client


def make_guarded(api, registered_models) -> Endpoint:  # type: ignore[no-untyped-def]
    """The endpoint ``guarded`` (the API client's user manages it), ready, with an alert rule and a plan."""
    from tests.test_api_endpoints import create, mark_ready

    create(api, endpoint_body("guarded", (registered_models["iris"], "1")))
    mark_ready("guarded")
    endpoint = Endpoint.objects.get(name="guarded")
    AlertRule.objects.create(endpoint=endpoint, name="slow", metric="p99_latency_ms", threshold=1000)
    RolloutPlan.objects.create(endpoint=endpoint, endpoint_name="guarded", steps=[50, 100], new_entity_names=["iris-2"])
    return endpoint


def make_alice(django_user_model):  # type: ignore[no-untyped-def]
    """The editor of tests.conftest's ``user`` fixture."""
    alice = django_user_model.objects.create_user("alice", "alice@example.com", "pw-alice-123")
    UserProfile.objects.create(user=alice, role=Role.EDITOR)
    return alice


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker, registered_models) -> Iterator[dict[str, object]]:
    """alice, her token and ``guarded``, made once for the module's ~275 tests (they were most of
    each test's time); each test's own changes still roll back (tests.conftest.shared_rows)."""
    from django.contrib.auth import get_user_model

    with shared_rows(django_db_blocker):
        alice = make_alice(get_user_model())
        token = create_token(user=alice, comment="test")[1]
        yield {"user": alice.pk, "token": token, "guarded": make_guarded(bearer(token), registered_models).pk}


@pytest.fixture
def user(world, django_user_model):  # type: ignore[no-untyped-def]
    """tests.conftest's ``user`` (alice, an editor), from the module's shared rows."""
    return django_user_model.objects.get(pk=world["user"])


@pytest.fixture
def token(world) -> str:
    return world["token"]


@pytest.fixture
def guarded(world) -> Endpoint:
    return Endpoint.objects.get(pk=world["guarded"])


@pytest.fixture
def committed_guarded(transactional_db, django_user_model, registered_models) -> Endpoint:
    """``guarded`` for a transactional test, made in it (shared rows never are committed)."""
    alice = make_alice(django_user_model)
    return make_guarded(bearer(create_token(user=alice, comment="test")[1]), registered_models)


@pytest.mark.parametrize(("route", "persona"), list(itertools.product(range(len(ROUTES)), PERSONAS)))
def test_every_route_for_every_persona(route, persona, guarded, django_user_model):
    method, path, body, needed = ROUTES[route]
    client = client_for(persona, django_user_model, guarded)
    rule = str(guarded.alert_rules.get().pk)
    plan = str(guarded.rollout_plans.get().pk)
    path = path.replace("{plan}", plan)
    response = getattr(client, method)(path.replace("{id}", guarded.id).replace("{rule}", rule), body, format="json")
    level = level_of(persona)
    if level is None:
        assert response.status_code == 404, (persona, method, path, response.content)
    elif RANK[level] < RANK[needed]:
        assert response.status_code == 403, (persona, method, path, response.content)
        assert response.json()["error_code"] == "PERMISSION_DENIED" and needed in response.json()["message"]
    else:
        assert response.status_code not in (403, 404), (persona, method, path, response.content)


@pytest.mark.parametrize("persona", PERSONAS)
def test_creating_needs_the_editor_approver_or_admin_role(persona, django_user_model, registered_models, guarded):
    client = client_for(persona, django_user_model, guarded)
    response = client.post(
        "/api/2.0/serving-endpoints", endpoint_body(f"new-{persona}", (registered_models["iris"], "1")), format="json"
    )
    allowed = PERSONAS[persona][0] in (Role.EDITOR, Role.APPROVER, Role.ADMIN)
    assert response.status_code == (200 if allowed else 403), response.content
    if allowed:
        assert response.json()["permission_level"] == "CAN_MANAGE"  # the creator manages it


@pytest.mark.parametrize("persona", PERSONAS)
def test_the_list_shows_only_what_the_caller_may_see(persona, django_user_model, guarded):
    client = client_for(persona, django_user_model, guarded)
    names = [e["name"] for e in client.get("/api/2.0/serving-endpoints").json()["endpoints"]]
    assert names == ([] if level_of(persona) is None else ["guarded"])


def test_get_reports_the_callers_permission_level(django_user_model, guarded):
    client = client_for("can_query", django_user_model, guarded)
    assert client.get(EP).json()["permission_level"] == "CAN_QUERY"


def test_put_replaces_and_patch_merges_grants(api, guarded, django_user_model):
    bob = django_user_model.objects.create_user("bob", "bob@example.com", "pw-123456789")
    url = f"/api/2.0/permissions/serving-endpoints/{guarded.id}"
    body = api.patch(
        url, {"access_control_list": [{"user_name": "bob", "permission_level": "CAN_QUERY"}]}, format="json"
    ).json()
    users = {
        e.get("user_name"): e["all_permissions"][0]["permission_level"]
        for e in body["access_control_list"]
        if "user_name" in e
    }
    assert users == {"alice": "CAN_MANAGE", "bob": "CAN_QUERY"}
    assert body["object_id"] == f"/serving-endpoints/{guarded.id}" and body["object_type"] == "serving-endpoint"
    body = api.put(
        url,
        {"access_control_list": [{"user_name": "bob@example.com", "permission_level": "CAN_MANAGE"}]},
        format="json",
    ).json()
    users = {
        e.get("user_name"): e["all_permissions"][0]["permission_level"]
        for e in body["access_control_list"]
        if "user_name" in e
    }
    assert users == {"bob": "CAN_MANAGE"}
    assert not EndpointPermission.objects.filter(endpoint=guarded, user__username="alice").exists()
    assert bob.username == "bob"


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ({"user_name": "nobody", "permission_level": "CAN_VIEW"}, "does not exist"),
        ({"user_name": "alice", "permission_level": "CAN_FLY"}, "permission_level"),
        ({"service_principal_name": "sp", "permission_level": "CAN_VIEW"}, "ServicePrincipalName(sp) does not exist"),
        (
            {"service_principal_name": "00000000-0000-4000-8000-000000000000", "permission_level": "CAN_VIEW"},
            "does not exist",
        ),
        ({"permission_level": "CAN_VIEW"}, "user_name, a group_name or a service_principal_name"),
    ],
)
def test_bad_grants_are_400_and_change_nothing(api, guarded, entry, needle):
    url = f"/api/2.0/permissions/serving-endpoints/{guarded.id}"
    response = api.put(url, {"access_control_list": [entry]}, format="json")
    assert response.status_code == 400 and needle in response.json()["message"]
    assert EndpointPermission.objects.filter(endpoint=guarded).count() == 1


@pytest.mark.django_db(transaction=True)  # the gateway reads users from its own threads
def test_the_gateway_needs_can_query(django_user_model, committed_guarded, settings):
    """Queries go through the ASGI gateway: outsider 404, CAN_VIEW 403, CAN_QUERY reaches the routing."""
    import asyncio

    from asgiref.testing import ApplicationCommunicator

    from dashboard.asgi import application

    async def post(token: str) -> int:
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/serving-endpoints/guarded/invocations",
            "headers": [(b"authorization", f"Bearer {token}".encode())],
            "query_string": b"",
        }
        comm = ApplicationCommunicator(application, scope)
        await comm.send_input({"type": "http.request", "body": b'{"inputs": [[1]]}', "more_body": False})
        start = await comm.receive_output(timeout=10)
        return start["status"]

    # No runtime agent runs here: the replica never comes, so the held query gives up quickly.
    settings.SCALE_FROM_ZERO_WAIT_SECONDS = 0.3
    statuses = {}
    for persona in ("outsider", "viewer", "can_query"):
        user = django_user_model.objects.create_user(persona + "-gw", f"{persona}-gw@example.com", "pw-123456789")
        role, grant = PERSONAS[persona]
        UserProfile.objects.create(user=user, role=role)
        if grant:
            EndpointPermission.objects.create(endpoint=committed_guarded, user=user, level=grant)
        statuses[persona] = asyncio.run(post(create_token(user=user)[1]))
    # CAN_QUERY passes the access check; with no replica ever ready it gets 503, not 403/404.
    assert statuses == {"outsider": 404, "viewer": 403, "can_query": 503}


def test_registering_models_needs_the_editor_role(django_user_model, guarded):
    viewer = client_for("viewer", django_user_model, guarded)
    response = viewer.generic(
        "POST", "/api/2.0/modelfleet/registered-models/upload?name=x", b"\x1f\x8b", content_type="application/gzip"
    )
    assert response.status_code == 403
    editor = client_for("editor", django_user_model, guarded)
    response = editor.generic(
        "POST", "/api/2.0/modelfleet/registered-models/upload?name=x", b"not gzip", content_type="application/gzip"
    )
    assert response.status_code == 400  # past the access check, refused as a bad archive
