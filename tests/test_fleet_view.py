"""One fleet view (issue 16, part 3): every workspace's endpoints in the fleet API and page.

The remote is this same Modelfleet on loopback (pytest-django's ``live_server``), polled into the
workspace ``far`` as tests/test_remote_polling.py does; its copies sit beside the local
originals. Covered: the fleet API lists both with their workspace, filtered and paged like the
page; per-workspace grants decide what a user without a global role sees (list, detail, series,
logs, page); a remote endpoint's page shows its workspace, state, charts' and logs' routes, and
says when its data is stale; alert rules on a remote endpoint are evaluated and emailed naming the
workspace; the fleet page has the workspace column and filter.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

import pytest
from django.core import mail
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from endpoints_app.egress import parse_allow_list
from endpoints_app.models import (
    Endpoint,
    LogLine,
    Role,
    UserProfile,
    Workspace,
    WorkspaceGrant,
    WorkspaceRole,
)
from endpoints_app.monitoring import alerts
from endpoints_app.services import secrets as secret_services
from endpoints_app.services.tokens import create_token
from tests.test_remote_polling import local_endpoint, observe, register, sweep_now

pytestmark = pytest.mark.django_db(transaction=True)

FLEET = "/api/2.0/modelfleet/fleet/endpoints"


def person(django_user_model, name: str, role: str = "") -> tuple[Any, APIClient]:
    user = django_user_model.objects.create_user(name, f"{name}@example.com", "pw-123456789")
    UserProfile.objects.create(user=user, role=role)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {create_token(user=user)[1]}")
    return user, client


@pytest.fixture
def fleet(live_server, settings, django_user_model):
    """Two local endpoints, and the remote's copies of them in the workspace ``far`` after one sweep."""
    port = urlparse(live_server.url).port
    settings.EGRESS_ALLOW = parse_allow_list(f"127.0.0.1:{port}")
    secret_services._cache.clear()
    admin, admin_api = person(django_user_model, "root", Role.ADMIN)
    _, reader_api = person(django_user_model, "remote-reader", Role.VIEWER)
    token = create_token(user=django_user_model.objects.get(username="remote-reader"), comment="fleet")[1]
    alpha = local_endpoint("alpha", tags={"env": "prod"})
    local_endpoint("beta")
    workspace = register(admin, f"http://127.0.0.1:{port}", token)
    assert sweep_now(workspace).ok
    return {"admin": admin, "api": admin_api, "workspace": workspace, "alpha": alpha}


def names(answer) -> list[tuple[str, str]]:
    return [(e["workspace"], e["name"]) for e in answer.json()["endpoints"]]


def test_the_fleet_api_lists_every_workspaces_endpoints_filtered_and_paged(fleet):
    api = fleet["api"]
    answer = api.get(FLEET)
    assert answer.status_code == 200
    assert [n for _, n in names(answer)] == ["alpha", "alpha", "beta", "beta"]  # by name, then id
    assert sorted(names(answer)) == [("far", "alpha"), ("far", "beta"), ("local", "alpha"), ("local", "beta")]
    assert answer.json()["total"] == 4
    remote = next(e for e in answer.json()["endpoints"] if e["workspace"] == "far" and e["name"] == "alpha")
    assert remote["remote_id"] == fleet["alpha"].id and remote["state"]["ready"] == "NOT_READY"
    assert remote["tags"] == [{"key": "env", "value": "prod"}] and remote["stale"] is False
    assert remote["served_entities"] == [{"name": "clf-1", "entity_name": "main.default.clf", "entity_version": "1"}]
    assert remote["last_polled"] is not None

    assert names(api.get(FLEET, {"workspace": "far"})) == [("far", "alpha"), ("far", "beta")]
    assert names(api.get(FLEET, {"workspace": "local"})) == [("local", "alpha"), ("local", "beta")]
    assert names(api.get(FLEET, {"workspace": "far", "tag": "env=prod"})) == [("far", "alpha")]
    assert names(api.get(FLEET, {"workspace": "nowhere"})) == []
    page = api.get(FLEET, {"per_page": 25, "sort": "-name"}).json()
    assert [e["name"] for e in page["endpoints"]] == ["beta", "beta", "alpha", "alpha"]
    assert (page["page"], page["per_page"], page["has_next"]) == (1, 25, False)

    detail = api.get(f"{FLEET}/far/alpha").json()
    assert detail["workspace"] == "far" and detail["config_version"] == 1
    assert api.get(f"{FLEET}/local/alpha").json()["id"] == fleet["alpha"].id
    assert api.get(f"{FLEET}/far/nothing").status_code == 404


def test_a_user_sees_only_the_workspaces_granted(fleet, django_user_model):
    user, api = person(django_user_model, "guest")
    assert names(api.get(FLEET)) == []
    assert api.get(f"{FLEET}/far/alpha").status_code == 404
    assert api.get(f"{FLEET}/far/alpha/metric-series").status_code == 404
    assert api.get(f"{FLEET}/far/alpha/log-lines").status_code == 404

    WorkspaceGrant.objects.create(workspace=fleet["workspace"], user=user, role=WorkspaceRole.VIEWER)
    _, api = person(django_user_model, "guest2")
    WorkspaceGrant.objects.create(
        workspace=fleet["workspace"], user=django_user_model.objects.get(username="guest2"), role=WorkspaceRole.VIEWER
    )
    assert names(api.get(FLEET)) == [("far", "alpha"), ("far", "beta")]  # not the local ones
    assert api.get(f"{FLEET}/far/alpha").status_code == 200
    assert api.get(f"{FLEET}/local/alpha").status_code == 404
    # A viewer there may not add alert rules; an editor there may.
    rule = {"name": "errors", "metric": "error_5xx_rate_pct", "threshold": 10, "for_seconds": 15}
    assert api.post(f"{FLEET}/far/alpha/alert-rules", rule, format="json").status_code == 403
    WorkspaceGrant.objects.filter(user__username="guest2").update(role=WorkspaceRole.EDITOR)
    _, editor = person(django_user_model, "guest3")
    WorkspaceGrant.objects.create(
        workspace=fleet["workspace"], user=django_user_model.objects.get(username="guest3"), role=WorkspaceRole.EDITOR
    )
    assert editor.post(f"{FLEET}/far/alpha/alert-rules", rule, format="json").status_code == 200


def test_alerts_on_a_remote_endpoint_fire_and_email_naming_the_workspace(fleet, settings):
    api, workspace = fleet["api"], fleet["workspace"]
    rule = {
        "name": "errors",
        "metric": "error_5xx_rate_pct",
        "threshold": 10,
        "for_seconds": 15,
        "notify_emails": ["oncall@example.com"],
    }
    assert api.post(f"{FLEET}/far/alpha/alert-rules", rule, format="json").status_code == 200
    assert [r["name"] for r in api.get(f"{FLEET}/far/alpha/alert-rules").json()["rules"]] == ["errors"]
    observe(fleet["alpha"], "clf-1", [500, 500, 200])
    assert sweep_now(workspace).ok
    mail.outbox.clear()
    assert alerts.evaluate_alerts() == 1
    assert len(mail.outbox) == 1
    assert "alpha (workspace far)" in mail.outbox[0].subject and "firing" in mail.outbox[0].subject

    series = api.get(f"{FLEET}/far/alpha/metric-series", {"metrics": "request_rate,error_5xx_rate"}).json()
    assert series["workspace"] == "far" and any(v for _, v in series["series"]["error_5xx_rate"])


def test_the_remote_endpoint_page_shows_its_workspace_charts_logs_and_staleness(fleet, client):
    client.force_login(fleet["admin"])
    copy = Endpoint.fleet.get(workspace=fleet["workspace"], name="alpha")
    LogLine.objects.create(
        endpoint=copy, served_entity_name="clf-1", kind="server", ts=timezone.now(), level="INFO", message="hello there"
    )
    page = client.get("/workspaces/far/endpoints/alpha/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "far" in html and "hello there" in html and "stale-notice" not in html
    assert "/api/2.0/modelfleet/fleet/endpoints/far/alpha/metric-series" in html
    assert "query-form" not in html  # no query playground: the remote serves its own queries
    # Changes: only the traffic split, through the gate (tests/test_remote_changes.py), for editors there.
    assert 'href="/workspaces/far/endpoints/alpha/traffic/"' in html and "/endpoints/alpha/edit" not in html
    lines = fleet["api"].get(f"{FLEET}/far/alpha/log-lines").json()["lines"]
    assert [line["message"] for line in lines] == ["hello there"]

    # The fleet page: the workspace column and filter, and the link to this page.
    listing = client.get("/?workspace=far").content.decode()
    assert 'href="/workspaces/far/endpoints/alpha/"' in listing and 'name="workspace"' in listing
    assert 'href="/endpoints/alpha/"' not in listing

    # The remote goes away: the page says so, with the error, and keeps the data.
    Workspace.objects.filter(pk=fleet["workspace"].pk).update(host="http://127.0.0.1:9")
    sweep_now(fleet["workspace"])
    html = client.get("/workspaces/far/endpoints/alpha/").content.decode()
    assert "stale-notice" in html and "hello there" in html
    listing = client.get("/").content.decode()
    assert "badge-stale" in listing
    assert fleet["api"].get(f"{FLEET}/far/alpha").json()["stale"] is True


def test_an_endpoint_not_seen_for_a_while_is_stale_and_unknown_pages_are_404(fleet, client, django_user_model):
    Endpoint.fleet.filter(workspace=fleet["workspace"], name="beta").update(
        remote_seen_at=timezone.now() - timedelta(hours=1)
    )
    assert fleet["api"].get(f"{FLEET}/far/beta").json()["stale"] is True
    client.force_login(fleet["admin"])
    assert client.get("/workspaces/far/endpoints/nothing/").status_code == 404
    assert client.get("/workspaces/local/endpoints/alpha/").status_code == 302
    nobody = django_user_model.objects.create_user("nobody", "n@example.com", "pw-123456789")
    other = Client()
    other.force_login(nobody)
    assert other.get("/workspaces/far/endpoints/alpha/").status_code == 404
