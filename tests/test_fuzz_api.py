"""The management API's OpenAPI document, and schemathesis fuzzing every operation in it.

- The document (``GET /api/2.0/modelfleet/openapi.json``) covers every API route and method of the
  URL conf, and nothing else, so a new route cannot ship undocumented (and unfuzzed).
- schemathesis generates requests from it, conforming and not (wrong types, missing fields,
  non-object bodies, odd strings), sends them in-process through Django's WSGI handler as an
  admin (so they reach the handlers, not just the permission check), and every answer must be
  below 500, and every 4xx the API's ``{"error_code", "message"}`` (SCIM's routes: SCIM's error,
  ``{"schemas": [...Error], "status", "detail"}``, but for a 401, which authentication answers).
- Hostile shapes no generator tries by itself: 100 000 ``[``, NUL characters, ids past a bigint.

Bounded for ``make test``: 4 generated examples per operation and a tenth of schemathesis's
coverage-phase cases (a stable pick), derandomized so CI sees the same cases; ``make fuzz``
(MODELFLEET_FUZZ_SCALE=1, see tests.conftest.fuzz_examples) sends every coverage case and 12.
"""

from __future__ import annotations

import itertools
import json
import re
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.core.handlers.wsgi import WSGIHandler
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, settings
from rest_framework.test import APIClient
from schemathesis.generation.meta import TestPhase

from endpoints_app.api.openapi import management_openapi
from endpoints_app.api.parsers import MAX_JSON_DEPTH
from endpoints_app.api.serializers.scim import SCIM_ROOT
from endpoints_app.models import AlertRule, ApprovalPolicy, Endpoint, Role, UserProfile
from endpoints_app.scim_schemas import ERROR as SCIM_ERROR
from endpoints_app.services import proposals
from endpoints_app.services import secrets as secret_services
from endpoints_app.services import service_principals as principal_services
from endpoints_app.services.tokens import create_token
from tests.conftest import FUZZ_SCALE, endpoint_body, fuzz_examples, shared_rows
from tests.test_access_matrix import api_routes

pytestmark = pytest.mark.django_db

DOCUMENT_URL = "/api/2.0/modelfleet/openapi.json"
# Examples per operation: 12 in `make fuzz`, 4 in `make test` (tests.conftest.fuzz_examples).
EXAMPLES = fuzz_examples(12, least=4)


@schemathesis.serializer("application/gzip")
def _gzip_body(context: Any, value: Any) -> bytes:
    """A model upload's body as sent: raw bytes (generated ones are never a valid archive: a 400)."""
    return value if isinstance(value, bytes) else str(value).encode()


schema = schemathesis.openapi.from_dict(management_openapi())
# Django's own WSGI handler, in this process and thread: the requests see the test's database
# transaction, and nothing listens on a port. The test client's host name passes ALLOWED_HOSTS.
schema.app = WSGIHandler()


# --- the document -----------------------------------------------------------------------------------


def _template(route: str) -> str:
    """A Django route pattern as an OpenAPI path: ``<int:request_id>`` → ``{request_id}``."""
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)


def test_the_document_covers_every_api_route_and_method_and_no_other():
    documented = {(path, method) for path, ops in management_openapi()["paths"].items() for method in ops}
    routed = {(_template(route), method) for route, method in api_routes()}
    assert not routed - documented, f"API routes missing from the OpenAPI document: {sorted(routed - documented)}"
    assert not documented - routed, f"documented operations no route serves: {sorted(documented - routed)}"


def test_the_document_is_valid_openapi_and_served_to_any_signed_in_user(django_user_model, anon):
    viewer = django_user_model.objects.create_user("viewer", "viewer@example.com", "pw-123456789")
    UserProfile.objects.create(user=viewer, role=Role.VIEWER)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {create_token(user=viewer)[1]}")
    response = client.get(DOCUMENT_URL)
    assert response.status_code == 200
    assert response.json() == management_openapi()
    schemathesis.openapi.from_dict(response.json()).validate()  # raises on an invalid OpenAPI 3.0 document
    assert anon.get(DOCUMENT_URL).status_code == 401


# --- hostile shapes ---------------------------------------------------------------------------------


@pytest.fixture
def admin_client(django_user_model) -> APIClient:
    admin = django_user_model.objects.create_user("root", "root@example.com", "pw-123456789")
    UserProfile.objects.create(user=admin, role=Role.ADMIN)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {create_token(user=admin)[1]}")
    return client


def assert_error(response, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.content[:300]
    body = response.json()
    assert body["error_code"] == code and body["message"], body


@pytest.mark.parametrize("depth", [100_000, 1_000, MAX_JSON_DEPTH + 1])
def test_deeply_nested_json_is_refused_with_400(admin_client, depth):
    for path in ("/api/2.0/serving-endpoints", "/api/2.0/modelfleet/change-requests", "/api/2.0/secrets/put"):
        for body in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
            response = admin_client.generic("POST", path, body, content_type="application/json")
            assert_error(response, 400, "MALFORMED_REQUEST")
            assert "nested deeper" in response.json()["message"]


def test_unclosed_nesting_is_refused_with_400(admin_client):
    response = admin_client.generic("POST", "/api/2.0/serving-endpoints", "[" * 100_000, "application/json")
    assert_error(response, 400, "MALFORMED_REQUEST")


def test_json_as_deep_as_the_limit_still_parses(admin_client):
    body = {
        "scope": "s",
        "key": "k",
        "string_value": "v",
        "extra": json.loads("[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)),
    }
    response = admin_client.post("/api/2.0/secrets/put", body, format="json")
    assert response.status_code != 400 or "nested" not in response.json()["message"], response.content


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/api/2.0/secrets/scopes/create", {"scope": "a\x00b"}),
        ("post", "/api/2.0/modelfleet/approval-policies", {"tag_key": "env", "tag_value": "p\x00rod"}),
        ("post", "/api/2.0/modelfleet/users", {"username": "x", "email": "\x00"}),
        ("post", "/api/2.0/modelfleet/change-requests", {"endpoint_name": "e", "action": "delete", "b\x00": 1}),
        ("get", "/api/2.0/modelfleet/audit-events?actor=a%00b", None),
        ("get", "/api/2.0/modelfleet/change-requests?endpoint_name=%00", None),
        ("get", "/api/2.0/serving-endpoints/a%00b", None),
    ],
)
def test_a_nul_character_anywhere_is_refused_with_400(admin_client, method, path, body):
    assert_error(getattr(admin_client, method)(path, body, format="json"), 400, "INVALID_PARAMETER_VALUE")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/2.0/modelfleet/approval-policies", {"tag_key": "env", "tag_value": "x" * 1025}),
        ("/api/2.0/modelfleet/approval-policies", {"tag_key": "k" * 256, "tag_value": "prod"}),
        ("/api/2.0/modelfleet/approval-policies", {"endpoint_name": {"not": "a string"}}),
        ("/api/2.0/modelfleet/users", {"username": "longmail", "email": "a" * 250 + "@example.com"}),
        ("/api/2.0/modelfleet/users", {"username": "listmail", "email": ["a@example.com"]}),
    ],
)
def test_values_longer_than_their_column_are_refused_with_400(admin_client, path, body):
    """Found by the fuzzer on PostgreSQL, which refuses them (a 500); SQLite stores them silently."""
    assert_error(admin_client.post(path, body, format="json"), 400, "INVALID_PARAMETER_VALUE")


def test_a_digit_int_cannot_read_is_a_400(fuzz_world):
    """``"²".isdigit()`` is true, yet ``int("²")`` raises: a limit must be ASCII digits."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=fuzz_world["headers"]["Authorization"])
    for route in ("scaling-decisions", "health", "alert-events"):
        response = client.get(f"/api/2.0/modelfleet/serving-endpoints/fuzz/{route}?limit=²")
        assert_error(response, 400, "INVALID_PARAMETER_VALUE")


@pytest.mark.parametrize(
    "entity",
    [
        {"min_provisioned_concurrency": 10**30, "max_provisioned_concurrency": 10**31},
        {"min_provisioned_concurrency": 0, "max_provisioned_concurrency": 2**31},
    ],
)
def test_a_concurrency_past_its_column_is_a_400(admin_client, registered_models, entity):
    body = endpoint_body("huge", (registered_models["iris"], "1"))
    body["config"]["served_entities"][0] = {
        "entity_name": registered_models["iris"],
        "entity_version": "1",
        **entity,
    }
    assert_error(admin_client.post("/api/2.0/serving-endpoints", body, format="json"), 400, "INVALID_PARAMETER_VALUE")
    body["budget_policy_id"] = "b" * 256
    del body["config"]["served_entities"][0]["min_provisioned_concurrency"]
    del body["config"]["served_entities"][0]["max_provisioned_concurrency"]
    assert_error(admin_client.post("/api/2.0/serving-endpoints", body, format="json"), 400, "INVALID_PARAMETER_VALUE")


def test_a_model_name_holding_a_quote_is_looked_up_not_a_500(admin_client, registered_models):
    """Found by the fuzzer: ``?name=Â'`` broke the registry's filter string (a 500)."""
    url = "/api/2.0/modelfleet/registered-models"
    assert admin_client.get(url, {"name": "Â'"}).json() == {"registered_models": []}
    assert admin_client.get(url, {"name": "a/b"}).json() == {"registered_models": []}
    found = admin_client.get(url, {"name": registered_models["iris"]}).json()["registered_models"]
    assert [m["name"] for m in found] == [registered_models["iris"]] and len(found[0]["versions"]) >= 2


@pytest.mark.parametrize(
    "path",
    ["/api/2.0/modelfleet/change-requests/99999999999999999999", "/api/2.0/modelfleet/tokens/99999999999999999999"],
)
def test_an_id_past_a_bigint_is_not_found(admin_client, path):
    response = admin_client.delete(path) if "tokens" in path else admin_client.get(path)
    assert_error(response, 404, "RESOURCE_DOES_NOT_EXIST")


# --- schemathesis -----------------------------------------------------------------------------------


def make_fuzz_world(django_user_model, registered_models) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """An admin token for the fuzzer, and real objects its path parameters can name: the endpoint
    ``fuzz`` (ready), an alert rule, a pending change request, a policy, a group, another user with
    a token (also as a SCIM User, a member of the group), a service principal with a secret, and a
    secret scope. Half of the cases name these, so they reach the handlers' depths;
    the other half keep the generated values (unknown names, odd strings)."""
    from tests.test_api_endpoints import create, mark_ready

    admin = django_user_model.objects.create_user("fuzzer", "fuzzer@example.com", "pw-123456789")
    UserProfile.objects.create(user=admin, role=Role.ADMIN)
    raw_token = create_token(user=admin, comment="fuzzer")[1]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_token}")
    create(client, endpoint_body("fuzz", (registered_models["iris"], "1")))
    mark_ready("fuzz")
    endpoint = Endpoint.objects.get(name="fuzz")
    rule = AlertRule.objects.create(endpoint=endpoint, name="slow", metric="p99_latency_ms", threshold=1000)
    victim = django_user_model.objects.create_user("victim", "victim@example.com", "pw-123456789")
    UserProfile.objects.create(user=victim, role=Role.EDITOR)
    change = proposals.propose(
        actor=admin,
        endpoint_name="fuzz",
        action="update_config",
        body={"served_entities": [{"entity_name": registered_models["iris"], "entity_version": "2"}]},
    )
    policy = ApprovalPolicy.objects.create(tag_key="env", tag_value="staging")
    secret_services.create_scope(actor=admin, scope="team")
    secret_services.put_secret(actor=admin, scope="team", key="db-key", string_value="s3cr3t")
    from django.contrib.auth.models import Group

    team = Group.objects.create(name="team")
    team.user_set.add(victim)
    principal, _ = principal_services.create_principal(actor=admin, display_name="robot")
    from endpoints_app.models import RolloutPlan

    plan = RolloutPlan.objects.create(endpoint=endpoint, endpoint_name="fuzz", steps=[50, 100], state="PAUSED")
    return {
        "headers": {"Authorization": f"Bearer {raw_token}"},
        "path": {
            "name": "fuzz",
            "endpoint_id": endpoint.id,
            "served_model_name": "iris-1",
            "rule_id": str(rule.pk),
            "request_id": change.pk,
            "policy_id": policy.pk,
            # Another user's token and name: revoking or deactivating the fuzzer itself would only
            # turn the rest of its cases into 401s.
            "token_id": create_token(user=victim, comment="victim")[0].pk,
            "username": "victim",
            "group": "team",
            # SCIM ids: the victim (a User) and the group; a principal's id under /ServicePrincipals.
            "user_id": str(victim.pk),
            "group_id": str(team.pk),
            "application_id": str(principal.application_id),
            "secret_id": principal.secrets.get().pk,
            "plan_id": plan.pk,  # a rollout plan (issue 17)
        },
        "query": {"scope": "team", "key": "db-key", "principal": "victim"},
        "principal_user_id": str(principal.user_id),
    }


@pytest.fixture(scope="module")
def fuzz_rows(django_db_setup, django_db_blocker, registered_models) -> Iterator[dict[str, Any]]:
    """The fuzzer's world, made once for the module's ~160 operations (it was most of each one's
    setup); what a test's cases change still rolls back with it (tests.conftest.shared_rows)."""
    from django.contrib.auth import get_user_model

    with shared_rows(django_db_blocker):
        yield make_fuzz_world(get_user_model(), registered_models)


@pytest.fixture
def fuzz_world(fuzz_rows) -> Iterator[dict[str, Any]]:
    """The shared world, and each test's own turn counter (its first case names the world's objects)."""
    # Django's test client does this too: a finished request would close the connection that
    # holds the test's transaction.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield {**fuzz_rows, "path": dict(fuzz_rows["path"]), "query": dict(fuzz_rows["query"]), "turn": itertools.count()}
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


def sent_at_this_depth(case) -> bool:  # type: ignore[no-untyped-def]
    """Whether this run sends the case. Schemathesis's coverage phase (run as hypothesis's
    explicit examples) adds some 65 boundary and negative cases an operation, ~9,000 requests and
    most of the module's time; `make fuzz` sends them all, `make test` a MODELFLEET_FUZZ_SCALE
    share of each operation's (a tenth), picked by a stable hash of the request, so every run
    sends the same ones. Generated cases (hypothesis's generate phase) are bounded by EXAMPLES."""
    meta = case._meta
    if FUZZ_SCALE >= 1 or meta is None or meta.phase.name != TestPhase.COVERAGE:
        return True
    request = f"{case.method} {case.path} {case.path_parameters!r} {case.query!r} {case.headers!r} {case.body!r}"
    return zlib.crc32(request.encode("utf-8", "backslashreplace")) < FUZZ_SCALE * 2**32


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure prints its case as found
    suppress_health_check=list(HealthCheck),
)
def test_no_operation_answers_a_server_error(case, fuzz_world):
    if not sent_at_this_depth(case):
        return
    if next(fuzz_world["turn"]) % 2 == 0:
        for key in case.path_parameters or {}:
            if key in fuzz_world["path"]:
                case.path_parameters[key] = fuzz_world["path"][key]
            if key == "user_id" and "/ServicePrincipals/" in case.path:
                case.path_parameters[key] = fuzz_world["principal_user_id"]
        for key in case.query or {}:
            if key in fuzz_world["query"]:
                case.query[key] = fuzz_world["query"][key]
    response = case.call(headers=fuzz_world["headers"], base_url="http://testserver")
    request = f"{case.method} {case.formatted_path} query={case.query!r} body={case.body!r}"[:2000]
    assert response.status_code < 500, f"{request} → {response.status_code}: {response.text[:1000]}"
    if response.status_code >= 400:
        body = response.json()
        if case.path.startswith(SCIM_ROOT) and response.status_code != 401:  # SCIM's own error (RFC 7644 §3.12)
            assert isinstance(body, dict) and body.get("schemas") == [SCIM_ERROR], f"{request} → {response.text[:500]}"
            assert body.get("status") == str(response.status_code) and body.get("detail"), f"{request} → {body}"
        else:
            assert isinstance(body, dict) and set(body) >= {"error_code", "message"}, (
                f"{request} → {response.text[:500]}"
            )
