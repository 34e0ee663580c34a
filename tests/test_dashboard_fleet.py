"""The fleet list page: states, numbers, filters, sorting, paging, the refresh fragment, access
and a number of queries that does not grow with the fleet."""

from __future__ import annotations

import re
import time

import pytest
from django.db import connection
from django.db.models import Sum
from django.test.utils import CaptureQueriesContext

from benchmarks.bench_dashboard import build_fleet
from endpoints_app.models import EndpointPermission, MetricPoint, PermissionLevel, Role, UserProfile
from tests.conftest import endpoint_body

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-123")


def persona(django_user_model, name: str, role: str):
    user = django_user_model.objects.create_user(name, f"{name}@example.com", "pw-123456789")
    UserProfile.objects.create(user=user, role=role)
    return user


def rows_of(html: str) -> dict[str, str]:
    """Endpoint name → the HTML of its row, in page order."""
    rows = re.findall(r"<tr>\s*<th scope=\"row\" class=\"name\">(.*?)</tr>", html, flags=re.S)
    return {re.search(r">([^<]+)</a>", row).group(1): row for row in rows}


def badge(row: str) -> str:
    return re.search(r'<span class="badge [^"]*">([^<]+)</span>', row).group(1)


def test_anonymous_visitors_are_sent_to_sign_in(client):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_each_state_has_its_badge(client, admin):
    build_fleet(24, owner=admin, minutes_of_points=15)
    client.force_login(admin)
    rows = rows_of(client.get("/").content.decode())
    assert badge(rows["ep-0001"]) == "Ready"
    assert badge(rows["ep-0010"]) == "Ready (Updating)"
    assert badge(rows["ep-0000"]) == "Not ready (Updating)"  # updating, and its active entity failed
    assert badge(rows["ep-0017"]) == "Ready (Update failed)"
    assert badge(rows["ep-0013"]) == "Scaled to zero"
    assert badge(rows["ep-0023"]) == "Down"


def test_a_row_shows_models_split_sparkline_and_recent_numbers(client, admin):
    build_fleet(8, owner=admin, minutes_of_points=15)
    client.force_login(admin)
    rows = rows_of(client.get("/").content.decode())
    two = rows["ep-0007"]
    assert "model-1" in two and "model-2" in two and "main.default.model v2" in two
    assert 'aria-label="Traffic split: model-1 80%, model-2 20%"' in two
    assert "<polyline points=" in two  # the request-rate sparkline, drawn on the server
    assert re.search(r'<span class="num">[0-9.,]+</span>', two)  # requests/s
    assert re.search(r"[0-9.]+ ms</td>", two)  # p99
    assert "s ago</time>" in two  # last polled
    assert "env=staging" in two and "team-2" in two


def test_an_endpoint_created_through_the_api_is_listed_while_it_deploys(client, user, api, registered_models):
    api.post("/api/2.0/serving-endpoints", endpoint_body("fresh", (registered_models["iris"], "1")), format="json")
    client.force_login(user)
    rows = rows_of(client.get("/").content.decode())
    assert badge(rows["fresh"]) == "Not ready (Updating)"
    assert "iris-1" in rows["fresh"] and "main.default.iris v1" in rows["fresh"]
    assert "<polyline" not in rows["fresh"]  # no metrics yet: no sparkline, dashes
    assert '<span class="num">–</span>' in rows["fresh"]


def test_an_outsider_sees_only_what_is_granted_to_them(client, admin, django_user_model):
    endpoints = build_fleet(5, owner=admin, minutes_of_points=1)
    outsider = django_user_model.objects.create_user("olga", "olga@example.com", "pw-123456789")
    EndpointPermission.objects.create(endpoint=endpoints[3], user=outsider, level=PermissionLevel.CAN_VIEW)
    client.force_login(outsider)
    html = client.get("/").content.decode()
    assert list(rows_of(html)) == ["ep-0003"]
    assert "1–1 of 1 endpoint" in html


def test_a_viewer_sees_every_endpoint_but_no_create_button(client, admin, django_user_model):
    build_fleet(3, owner=admin, minutes_of_points=1)
    client.force_login(persona(django_user_model, "vera", Role.VIEWER))
    html = client.get("/").content.decode()
    assert len(rows_of(html)) == 3
    assert "Create endpoint" not in html


def test_an_editor_gets_the_create_button(client, user):
    client.force_login(user)
    assert 'href="/endpoints/new">Create endpoint' in client.get("/").content.decode()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("state=scaled_to_zero", ["ep-0013"]),
        ("state=down", ["ep-0023"]),
        ("state=update_failed", ["ep-0017"]),
        ("health=DOWN", ["ep-0000", "ep-0023"]),
        ("q=ep-001", [f"ep-001{i}" for i in range(10)]),
        ("q=model-2", ["ep-0000", "ep-0007", "ep-0014", "ep-0021"]),  # served model names are searched too
        ("tag=env%3Dprod", [f"ep-{i:04d}" for i in range(24) if i % 3 == 0]),
        ("tag=team%3Dteam-4&state=ready", ["ep-0004", "ep-0009", "ep-0014", "ep-0019"]),
        ("tag=nosuch", []),
    ],
)
def test_filters_narrow_the_list(client, admin, query, expected):
    build_fleet(24, owner=admin, minutes_of_points=1)
    client.force_login(admin)
    assert list(rows_of(client.get(f"/?{query}").content.decode())) == expected


def test_the_owner_filter_and_its_choices(client, admin, user):
    build_fleet(2, owner=admin, minutes_of_points=1)
    build_fleet(2, owner=user, minutes_of_points=1, prefix="alice")
    client.force_login(admin)
    html = client.get("/?owner=alice").content.decode()
    assert list(rows_of(html)) == ["alice-0000", "alice-0001"]
    assert '<option value="alice" selected>alice</option>' in html and '<option value="root"' in html


def test_sorting_by_request_rate_puts_the_busiest_first(client, admin):
    build_fleet(12, owner=admin, minutes_of_points=15)
    since = int(time.time()) - 600
    totals = (
        MetricPoint.objects.filter(resolution=15, served_entity_name="", ts__gte=since)
        .values("endpoint__name")
        .annotate(total=Sum("request_count"))
        .order_by("-total")
    )
    expected = [t["endpoint__name"] for t in totals]
    client.force_login(admin)
    html = client.get("/?sort=-requests").content.decode()
    assert list(rows_of(html)) == expected
    assert 'aria-sort="descending"' in html
    ascending = list(rows_of(client.get("/?sort=requests").content.decode()))
    assert ascending == list(reversed(expected))


def test_sorting_by_state_and_name_descending(client, admin):
    build_fleet(24, owner=admin, minutes_of_points=1)
    client.force_login(admin)
    by_state = [badge(r) for r in rows_of(client.get("/?sort=state").content.decode()).values()]
    key = {
        "Down": "down",
        "Ready": "ready",
        "Scaled to zero": "scaled_to_zero",
        "Ready (Update failed)": "update_failed",
    }
    key |= {"Ready (Updating)": "updating", "Not ready (Updating)": "updating"}
    assert [key[b] for b in by_state] == sorted(key[b] for b in by_state)
    names = list(rows_of(client.get("/?sort=-name").content.decode()))
    assert names == sorted(names, reverse=True)


def test_it_pages_through_the_fleet(client, admin):
    build_fleet(30, owner=admin, minutes_of_points=1)
    client.force_login(admin)
    first = client.get("/?per_page=25").content.decode()
    assert len(rows_of(first)) == 25 and "1–25 of 30 endpoints" in first
    assert 'href="?per_page=25&amp;page=2"' in first
    second = client.get("/?per_page=25&page=2").content.decode()
    assert list(rows_of(second)) == [f"ep-{i:04d}" for i in range(25, 30)]
    assert "26–30 of 30 endpoints" in second
    assert len(rows_of(client.get("/?per_page=25&page=junk").content.decode())) == 25  # a bad page is page 1
    assert len(rows_of(client.get("/?per_page=7").content.decode())) == 30  # an unknown size is the default


def test_the_table_refreshes_alone_while_the_tab_is_visible(client, admin):
    build_fleet(3, owner=admin, minutes_of_points=1)
    client.force_login(admin)
    page = client.get("/?state=ready").content.decode()
    assert 'hx-trigger="every 15s [!document.hidden], visibilitychange[!document.hidden] from:document"' in page
    assert 'hx-get="/?state=ready"' in page  # the refresh keeps the filters
    fragment = client.get("/?state=ready", headers={"HX-Request": "true", "HX-Target": "fleet-results"})
    html = fragment.content.decode()
    assert html.lstrip().startswith('<section id="fleet-results"')
    assert 'class="filters"' not in html and "<html" not in html
    assert list(rows_of(html)) == ["ep-0001", "ep-0002"]
    assert "HX-Target" in fragment["Vary"]


def _queries(client, url: str, **headers: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url, headers=headers).status_code == 200
    return len(queries)


@pytest.mark.parametrize(
    "url",
    ["/?per_page=200", "/?per_page=200&sort=-requests", "/?per_page=200&sort=-polled&state=ready&tag=env&q=0"],
)
def test_the_number_of_queries_does_not_grow_with_the_fleet(client, admin, django_user_model, url):
    viewer = persona(django_user_model, "vic", Role.VIEWER)
    build_fleet(10, owner=admin, minutes_of_points=5)
    client.force_login(viewer)
    small = _queries(client, url)
    fragment_small = _queries(client, url, HX_Request="true", HX_Target="fleet-results")
    build_fleet(190, owner=admin, minutes_of_points=5, prefix="more")
    assert len(rows_of(client.get(url).content.decode())) > 10
    # One of them reads the viewer's workspace grants (their role in local may be higher than the global one).
    assert _queries(client, url) == small <= 14
    assert _queries(client, url, HX_Request="true", HX_Target="fleet-results") == fragment_small <= 12
