"""One filter set per API list, shared with the page that shows the same list: every list refuses a
bad query parameter with 400 INVALID_PARAMETER_VALUE and a message that starts with the parameter's
name, and a page sharing the filter set shows the same words under the input (HTML, never a 500)
and lists what the other filters pick."""

from __future__ import annotations

import html as html_lib
import re
from datetime import UTC, datetime

import pytest
from rest_framework.test import APIClient

from endpoints_app.filters import AuditEventListFilterSet, LogLineFilterSet, PayloadFilterSet
from endpoints_app.filters.fields import to_epoch_ms
from endpoints_app.models import ApprovalPolicy, ChangeRequest, Deployment, Endpoint, LogKind, LogLine
from endpoints_app.services.tokens import create_token

pytestmark = pytest.mark.django_db

EP = "/api/2.0/modelfleet/serving-endpoints/ep"
NUL = "a\x00b"
TOO_BIG = "99999999999999999999"  # epoch ms past the year 9999

# (list, bad parameters, the parameter the answer names). For each list: a limit that is not a
# number and one above the maximum, a bad time, a bad boolean or choice, and a NUL character.
BAD_PARAMETERS = [
    (f"{EP}/health", {"limit": "ten"}, "limit"),
    (f"{EP}/health", {"limit": "1001"}, "limit"),
    (f"{EP}/health", {"limit": NUL}, "limit"),
    (f"{EP}/alert-events", {"limit": "\u00b2"}, "limit"),
    (f"{EP}/alert-events", {"limit": "1001"}, "limit"),
    (f"{EP}/alert-events", {"state": "OPEN"}, "state"),
    (f"{EP}/alert-events", {"state": NUL}, "state"),
    (f"{EP}/metric-series", {"start": "yesterday"}, "start"),
    (f"{EP}/metric-series", {"end": TOO_BIG}, "end"),
    (f"{EP}/metric-series", {"start": "2000", "end": "1000"}, "start"),
    (f"{EP}/metric-series", {"start": "0", "end": str(100 * 86400 * 1000)}, "start"),
    (f"{EP}/metric-series", {"metrics": "request_rate,bogus"}, "metrics"),
    (f"{EP}/metric-series", {"served_model": NUL}, "served_model"),
    (f"{EP}/scaling-decisions", {"limit": "x"}, "limit"),
    (f"{EP}/scaling-decisions", {"limit": "1001"}, "limit"),
    (f"{EP}/usage", {"start": "x"}, "start"),
    (f"{EP}/usage", {"start": "10", "end": "10"}, "start"),
    (f"{EP}/usage", {"group_by": "planet"}, "group_by"),
    (f"{EP}/usage", {"end": NUL}, "end"),
    (f"{EP}/payloads", {"limit": "-1"}, "limit"),
    (f"{EP}/payloads", {"limit": "1001"}, "limit"),
    (f"{EP}/payloads", {"since": "-1"}, "since"),
    (f"{EP}/payloads", {"include_bodies": "yes"}, "include_bodies"),
    (f"{EP}/payloads", {"status": "6xx"}, "status"),
    (f"{EP}/payloads", {"page_token": "t" * 201}, "page_token"),
    (f"{EP}/payloads", {"client_request_id": NUL}, "client_request_id"),
    (f"{EP}/log-lines", {"limit": "ten"}, "limit"),
    (f"{EP}/log-lines", {"limit": "2001"}, "limit"),
    (f"{EP}/log-lines", {"until": "tomorrow"}, "until"),
    (f"{EP}/log-lines", {"kind": "stdout"}, "kind"),
    (f"{EP}/log-lines", {"q": NUL}, "q"),
    ("/api/2.0/modelfleet/audit-events", {"limit": "many"}, "limit"),
    ("/api/2.0/modelfleet/audit-events", {"limit": "1001"}, "limit"),
    ("/api/2.0/modelfleet/audit-events", {"since": "soon"}, "since"),
    ("/api/2.0/modelfleet/audit-events", {"page_token": "%%%"}, "page_token"),
    ("/api/2.0/modelfleet/audit-events", {"object_name": NUL}, "object_name"),
    ("/api/2.0/modelfleet/change-requests", {"status": "MAYBE"}, "status"),
    ("/api/2.0/modelfleet/change-requests", {"endpoint_name": "e" * 256}, "endpoint_name"),
    ("/api/2.0/modelfleet/change-requests", {"endpoint_name": NUL}, "endpoint_name"),
    ("/api/2.0/modelfleet/tokens", {"user": NUL}, "user"),
    ("/api/2.0/secrets/list", {}, "scope"),
    ("/api/2.0/secrets/list", {"scope": NUL}, "scope"),
    ("/api/2.0/secrets/acls/list", {}, "scope"),
    ("/api/2.0/secrets/acls/get", {"scope": "team"}, "principal"),
    ("/api/2.0/secrets/get", {"scope": "team"}, "key"),
]


@pytest.fixture
def root(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-12345")


@pytest.fixture
def root_api(root) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {create_token(user=root)[1]}")
    return client


@pytest.fixture
def ep(root) -> Endpoint:
    return Endpoint.objects.create(name="ep", creator=root)


def log(endpoint: Endpoint, message: str, kind: str = LogKind.SERVER) -> None:
    """A stored line of served model ``m``, which the endpoint ran once (the log reads the served
    models an endpoint ever deployed)."""
    Deployment.objects.get_or_create(
        endpoint=endpoint,
        served_entity_name="m",
        defaults={
            "endpoint_name": endpoint.name,
            "spec_hash": "h",
            "spec": {},
            "model_name": "m",
            "model_version": "1",
        },
    )
    LogLine.objects.create(
        endpoint=endpoint, served_entity_name="m", kind=kind, ts=datetime.now(UTC), level="INFO", message=message
    )


def inline_error(html: str, field_id: str) -> str:
    """The text of the error list the page shows under the input ``field_id``."""
    found = re.search(rf'id="{field_id}_error"><li>([^<]*)</li>', html)
    assert found, f"no inline error for {field_id}"
    return html_lib.unescape(found[1])


@pytest.mark.parametrize(("url", "params", "named"), BAD_PARAMETERS)
def test_a_bad_parameter_is_a_400_naming_it(root_api, ep, url, params, named):
    response = root_api.get(url, params)
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert body["message"].startswith(f"{named}: "), body["message"]


@pytest.mark.parametrize(
    "url",
    [
        f"{EP}/health",
        f"{EP}/alert-events",
        f"{EP}/metric-series",
        f"{EP}/scaling-decisions",
        f"{EP}/usage",
        f"{EP}/payloads",
        f"{EP}/log-lines",
        "/api/2.0/modelfleet/audit-events",
        "/api/2.0/modelfleet/change-requests",
        "/api/2.0/modelfleet/tokens",
    ],
)
def test_empty_parameters_read_as_their_defaults(root_api, ep, url):
    params = {"limit": "", "since": "", "until": "", "start": "", "end": "", "page_token": "", "state": ""}
    assert root_api.get(url, params).status_code == 200


# --- the pages that show the same lists ----------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [({"status": "MAYBE"}, "status"), ({"endpoint_name": "e" * 256}, "endpoint_name"), ({"status": NUL}, "status")],
)
def test_the_approvals_page_shows_the_apis_error_inline(client, root, root_api, params, field):
    ApprovalPolicy.objects.create(endpoint_name="ab")
    change = ChangeRequest.objects.create(endpoint_name="ab", action="delete", author=root)
    message = root_api.get("/api/2.0/modelfleet/change-requests", params).json()["message"]
    client.force_login(root)
    page = client.get("/change-requests/", params)
    assert page.status_code == 200
    html = page.content.decode()
    assert inline_error(html, f"id_{field}") == message.removeprefix(f"{field}: ")
    assert f'href="/change-requests/{change.pk}/"' in html  # the filter that did not parse is left out


@pytest.mark.parametrize(
    ("api_params", "page_params", "field"),
    [
        ({"kind": "stdout"}, {"logs_kind": "stdout"}, "kind"),
        ({"q": "x" * 1001}, {"logs_q": "x" * 1001}, "q"),
        ({"limit": "ten"}, {"logs_limit": "ten"}, "limit"),
        ({"since": "soon"}, {"logs_since": "soon"}, "since"),
        ({"level": NUL}, {"logs_level": NUL}, "level"),
    ],
)
def test_the_endpoint_pages_log_tail_shows_the_log_apis_error_inline(
    client, root, root_api, ep, api_params, page_params, field
):
    log(ep, "hello")
    message = root_api.get(f"{EP}/log-lines", api_params).json()["message"]
    client.force_login(root)
    page = client.get("/endpoints/ep/", page_params)
    assert page.status_code == 200
    html = page.content.decode()
    label = LogLineFilterSet.base_fields[field].label
    assert inline_error(html, f"id_logs_{field}") == f"{label}: {message.removeprefix(f'{field}: ')}"
    assert "hello" in html  # the tail still shows, without the filter that did not parse


def test_the_log_tail_filters_as_the_api_does(client, root, root_api, ep):
    for kind, message in ((LogKind.SERVER, "GET /health 200"), (LogKind.SERVER, "predict"), (LogKind.BUILD, "copied")):
        log(ep, message, kind)
    client.force_login(root)
    for api_params, page_params in (
        ({"q": "predict"}, {"logs_q": "predict"}),
        ({"kind": "build"}, {"logs_kind": "build"}),
    ):
        from_api = [line["message"] for line in root_api.get(f"{EP}/log-lines", api_params).json()["lines"]]
        html = client.get("/endpoints/ep/", page_params).content.decode()
        tail = re.search(r'<pre class="logs".*?</pre>', html, flags=re.S)
        assert tail and from_api
        assert all(m in tail[0] for m in from_api)
        assert all(m not in tail[0] for m in {"GET /health 200", "predict", "copied"} - set(from_api))


# --- the shared fields ---------------------------------------------------------------------------


def test_epoch_milliseconds_are_read_exactly_up_to_the_year_9999():
    filters = PayloadFilterSet({"since": "253402300799999", "until": "1"})
    filters.is_valid()
    assert to_epoch_ms(filters.cleaned_data["until"]) == 1
    assert "since" in filters.errors  # after until: refused, named
    latest = AuditEventListFilterSet({"since": "253402300799999"})
    assert latest.is_valid() and to_epoch_ms(latest.cleaned_data["since"]) == 253402300799999
    assert not AuditEventListFilterSet({"since": "253402300800000"}).is_valid()
    assert AuditEventListFilterSet({"since": "2025-01-31T09:30"}).is_valid()


def test_booleans_and_limits_are_strict():
    for value, expected in (("true", True), ("FALSE", False), ("1", True), ("0", False), ("", True)):
        filters = PayloadFilterSet({"include_bodies": value})
        assert filters.is_valid() and filters.value("include_bodies") is expected, value
    for value in ("yes", "off", "tru"):
        assert not PayloadFilterSet({"include_bodies": value}).is_valid(), value
    for value in ("\u00b2", "+5", "5.0", "1e3", "0", "1001", "9" * 40):
        assert not PayloadFilterSet({"limit": value}).is_valid(), value
    assert PayloadFilterSet({"limit": " 7 "}).is_valid()
    assert PayloadFilterSet({}).value("limit") == 100
