"""The rest of the permission matrix: global routes, anonymous callers, and every CLI verb.

Endpoint-scoped routes are in tests/test_access.py (ROUTES). Here:

- every API route Django knows is covered by a row of ROUTES or GLOBAL_ROUTES, so a new route
  cannot ship without its row (test_every_api_route_has_a_row_in_the_matrix);
- global routes × personas, the expected status computed from the row's rule;
- no API route answers an anonymous caller (401), except the SDK's host-metadata probe;
- every CLI verb × personas against a live server, the expected exit code from the same rules,
  and every verb the parser knows has a row (or is a local command that talks to no server).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from django.contrib.auth.models import Group
from django.urls import get_resolver, resolve
from rest_framework.test import APIClient

from endpoints_app.access import RANK
from endpoints_app.cli.main import build_parser
from endpoints_app.cli.main import main as cli_main
from endpoints_app.models import (
    AccessToken,
    AlertRule,
    ApprovalPolicy,
    ChangeRequest,
    Endpoint,
    EndpointPermission,
    GroupRoleMapping,
    Role,
    RolloutPlan,
    UserProfile,
    Workspace,
    WorkspaceGrant,
)
from endpoints_app.services import proposals
from endpoints_app.services import secrets as secret_services
from endpoints_app.services import service_principals as principal_services
from endpoints_app.services.tokens import create_token
from tests import model_fixtures
from tests.conftest import endpoint_body, shared_rows
from tests.test_access import MANAGE, PERSONAS, ROUTES, VIEW, level_of

pytestmark = pytest.mark.django_db

CR = "/api/2.0/modelfleet/change-requests"
S = "/api/2.0/secrets"
SCIM = "/api/2.0/preview/scim/v2"
SPS = "/api/2.0/modelfleet/service-principals"
WS = "/api/2.0/modelfleet/workspaces"
ANY, CREATORS, APPROVERS, ADMIN = "any signed-in user", "editor+", "approver+", "admin"
ROLES = "any global role"
ROLE_RULES = {
    ANY: None,
    ROLES: (Role.VIEWER, Role.EDITOR, Role.APPROVER, Role.ADMIN),
    CREATORS: (Role.EDITOR, Role.APPROVER, Role.ADMIN),
    APPROVERS: (Role.APPROVER, Role.ADMIN),
    ADMIN: (Role.ADMIN,),
}
METHODS = ("get", "post", "put", "patch", "delete")
NEW_CONFIG = {"served_entities": [{"entity_name": "main.default.iris", "entity_version": "2"}]}


@dataclass(frozen=True)
class Row:
    """A global route: who may call it, and what the others get (403 if they may see it, 404 if not)."""

    method: str
    path: str
    body: object
    rule: str
    denied: int = 403
    allowed_status: int | None = None  # what an allowed caller gets, when not a success
    unseen: int | None = None  # what callers without a global role get, when not ``denied`` (issue 16)
    says: str = "not supported"  # what the error then says


# Paths use {change} (a request proposed by someone else), {token} (someone else's token),
# {policy}, {group}, {member}, {user}, SCIM's ids {user_id}, {group_id}, {member_id}, and a service
# principal's application id {sp}, its secret's id {sp_secret} and its SCIM id {sp_user_id}, and a
# remote workspace's name {workspace}.
# Bodies use the same placeholders. SCIM routes answer SCIM errors (status, detail).
GLOBAL_ROUTES = [
    Row("get", "/api/2.0/serving-endpoints", None, ANY),
    Row("post", "/api/2.0/serving-endpoints", "create", CREATORS),
    Row("get", "/api/2.0/serving-endpoints/", None, ANY),
    Row("post", "/api/2.0/serving-endpoints/", "create", CREATORS),
    # Provisioned throughput and UC connections: not supported, a 400 for every signed-in caller.
    Row("post", "/api/2.0/serving-endpoints/pt", {"name": "pt-ep"}, ANY, allowed_status=400),
    Row("put", "/api/2.0/serving-endpoints/pt/guarded/config", {"config": {}}, ANY, allowed_status=400),
    Row("post", "/api/2.0/external-function", {"connection_name": "c"}, ANY, allowed_status=400),
    Row("get", "/api/2.0/modelfleet/registered-models", None, ANY),
    Row("post", "/api/2.0/modelfleet/registered-models/upload?name=x", "upload", CREATORS),
    Row("get", CR, None, ANY),  # filtered to the caller's own requests below approver
    Row("get", f"{CR}/{{change}}", None, APPROVERS, denied=404),
    Row("post", f"{CR}/{{change}}/approve", {"comment": "ok"}, APPROVERS, denied=404),
    Row("post", f"{CR}/{{change2}}/reject", {"comment": "no"}, APPROVERS, denied=404),
    Row("get", "/api/2.0/modelfleet/approval-policies", None, ANY),
    Row("post", "/api/2.0/modelfleet/approval-policies", {"tag_key": "env", "tag_value": "prod"}, ADMIN),
    Row("delete", "/api/2.0/modelfleet/approval-policies/{policy}", None, ADMIN),
    Row("get", "/api/2.0/modelfleet/groups", None, ADMIN),
    Row("post", "/api/2.0/modelfleet/groups", {"name": "new-group"}, ADMIN),
    Row("put", "/api/2.0/modelfleet/groups/{group}/members/{user}", None, ADMIN),
    Row("delete", "/api/2.0/modelfleet/groups/{group}/members/{member}", None, ADMIN),
    Row("get", "/api/2.0/modelfleet/users", None, ADMIN),
    Row("post", "/api/2.0/modelfleet/users", {"username": "newcomer", "role": "viewer"}, ADMIN),
    Row("patch", "/api/2.0/modelfleet/users/{user}", {"role": "editor"}, ADMIN),
    Row("get", "/api/2.0/modelfleet/tokens", None, ANY),  # filtered to the caller's own below admin
    Row("post", "/api/2.0/modelfleet/tokens", {"comment": "mine"}, ANY),
    Row("post", "/api/2.0/modelfleet/tokens", {"user": "{user}", "comment": "theirs"}, ADMIN),
    Row("delete", "/api/2.0/modelfleet/tokens/{token}", None, ADMIN, denied=404),
    Row("patch", "/api/2.0/modelfleet/users/{user}", {"max_token_lifetime_seconds": 86400}, ADMIN),
    Row("post", "/api/2.0/token/create", {"comment": "mine", "lifetime_seconds": 600}, ANY),
    Row("get", "/api/2.0/token/list", None, ANY),  # the caller's own
    # Only the caller's own tokens: someone else's is not found, for admins too.
    Row("post", "/api/2.0/token/delete", {"token_id": "{token}"}, ANY, allowed_status=404, says="does not exist"),
    Row("get", "/api/2.0/modelfleet/audit-events", None, ADMIN),
    Row("get", SPS, None, ADMIN),
    Row("post", SPS, {"display_name": "new-principal"}, ADMIN),
    Row("get", f"{SPS}/{{sp}}", None, ADMIN),
    Row("delete", f"{SPS}/{{sp}}", None, ADMIN),
    Row("post", f"{SPS}/{{sp}}/secrets", {}, ADMIN),
    Row("delete", f"{SPS}/{{sp}}/secrets/{{sp_secret}}", None, ADMIN),
    Row("get", "/api/2.0/modelfleet/group-role-mappings", None, ADMIN),
    Row("put", "/api/2.0/modelfleet/group-role-mappings/ml-eng", {"role": "editor"}, ADMIN),
    Row("delete", "/api/2.0/modelfleet/group-role-mappings/{group}", None, ADMIN),
    # Workspaces: every global role reads them (users without one see only local), admins change them.
    # validate=false: the remote.test check fails at once (the tests' DNS knows no such name).
    Row("get", WS, None, ANY),
    Row("post", f"{WS}?validate=false", {"name": "new-ws", "host": "https://remote.test", "token": "t" * 30}, ADMIN),
    Row("get", f"{WS}/local", None, ANY),
    Row("get", f"{WS}/{{workspace}}", None, ROLES, denied=404),
    Row("patch", f"{WS}/{{workspace}}?validate=false", {"token": "u" * 30}, ADMIN),
    # Roles in a workspace: admins only, local included (a workspace editor cannot grant themselves more).
    Row("get", f"{WS}/{{workspace}}/grants", None, ADMIN),
    Row("put", f"{WS}/{{workspace}}/grants", {"user_name": "{user}", "role": "viewer"}, ADMIN),
    Row("put", f"{WS}/local/grants", {"group_name": "{group}", "role": "editor"}, ADMIN),
    Row("delete", f"{WS}/{{workspace}}/grants?group_name={{group}}", None, ADMIN),
    Row("put", "/api/2.0/modelfleet/group-role-mappings/ml-eng", {"role": "editor", "workspace": "local"}, ADMIN),
    Row("delete", "/api/2.0/modelfleet/group-role-mappings/{group}?workspace={workspace}", None, ADMIN),
    # The fleet (issue 16): the list filters what each caller may see; a remote endpoint needs a role in its workspace.
    Row("get", "/api/2.0/modelfleet/fleet/endpoints", None, ANY),
    Row("get", "/api/2.0/modelfleet/fleet/endpoints?workspace=local&per_page=25", None, ANY),
    Row("get", "/api/2.0/modelfleet/fleet/endpoints/{workspace}/remote-ep", None, ROLES, denied=404),
    Row("get", "/api/2.0/modelfleet/fleet/endpoints/{workspace}/remote-ep/metric-series", None, ROLES, denied=404),
    Row("get", "/api/2.0/modelfleet/fleet/endpoints/{workspace}/remote-ep/log-lines", None, ROLES, denied=404),
    Row("get", "/api/2.0/modelfleet/fleet/endpoints/{workspace}/remote-ep/alert-rules", None, ROLES, denied=404),
    Row(
        "post",
        "/api/2.0/modelfleet/fleet/endpoints/{workspace}/remote-ep/alert-rules",
        {"name": "errors", "metric": "error_5xx_rate_pct", "threshold": 5},
        CREATORS,
        unseen=404,  # a viewer there gets 403
    ),
    # Changes to a remote's endpoints (issue 16 part 4): editors in its workspace; a viewer there gets
    # 403, a user without a role there 404. This remote has no token: an allowed change gets a 502.
    *(
        Row(
            method,
            f"{WS}/{{workspace}}/serving-endpoints{tail}",
            body,
            CREATORS,
            allowed_status=502,
            unseen=404,
            says="no token",
        )
        for method, tail, body in (
            ("post", "", {"name": "new-remote", "config": NEW_CONFIG}),
            ("put", "/remote-ep/config", NEW_CONFIG),
            ("patch", "/remote-ep/tags", {"add_tags": [{"key": "team", "value": "ml"}]}),
            ("put", "/remote-ep/ai-gateway", {"usage_tracking_config": {"enabled": True}}),
            ("delete", "/remote-ep", None),
        )
    ),
    Row("delete", f"{WS}/{{workspace}}", None, ADMIN),
    Row("get", f"{S}/scopes/list", None, ANY),
    Row("post", f"{S}/scopes/create", {"scope": "new-scope"}, CREATORS),
    Row("get", "/api/2.0/modelfleet/openapi.json", None, ANY),
    # SCIM provisioning: an identity provider's admin token; /Me for anyone (w.current_user.me()).
    Row("get", f"{SCIM}/Users", None, ADMIN),
    Row("post", f"{SCIM}/Users", {"userName": "scim-newcomer"}, ADMIN),
    Row("get", f"{SCIM}/Users/{{user_id}}", None, ADMIN),
    Row("put", f"{SCIM}/Users/{{user_id}}", {"userName": "victim", "displayName": "Victim"}, ADMIN),
    Row(
        "patch",
        f"{SCIM}/Users/{{user_id}}",
        {"Operations": [{"op": "replace", "path": "displayName", "value": "V"}]},
        ADMIN,
    ),
    Row("delete", f"{SCIM}/Users/{{user_id}}", None, ADMIN),
    Row("get", f"{SCIM}/Groups", None, ADMIN),
    Row("post", f"{SCIM}/Groups", {"displayName": "scim-group"}, ADMIN),
    Row("get", f"{SCIM}/Groups/{{group_id}}", None, ADMIN),
    Row("put", f"{SCIM}/Groups/{{group_id}}", {"displayName": "team", "members": [{"value": "{user_id}"}]}, ADMIN),
    Row("patch", f"{SCIM}/Groups/{{group_id}}", {"Operations": [{"op": "remove", "path": "members"}]}, ADMIN),
    Row("delete", f"{SCIM}/Groups/{{group_id}}", None, ADMIN),
    Row("get", f"{SCIM}/ServicePrincipals", None, ADMIN),
    Row("post", f"{SCIM}/ServicePrincipals", {"displayName": "provisioned"}, ADMIN),
    Row("get", f"{SCIM}/ServicePrincipals/{{sp_user_id}}", None, ADMIN),
    Row("put", f"{SCIM}/ServicePrincipals/{{sp_user_id}}", {"displayName": "renamed"}, ADMIN),
    Row(
        "patch",
        f"{SCIM}/ServicePrincipals/{{sp_user_id}}",
        {"Operations": [{"op": "replace", "path": "displayName", "value": "R"}]},
        ADMIN,
    ),
    Row("delete", f"{SCIM}/ServicePrincipals/{{sp_user_id}}", None, ADMIN),
    Row("get", f"{SCIM}/Me", None, ANY),
    Row("get", f"{SCIM}/ServiceProviderConfig", None, ADMIN),
    Row("get", f"{SCIM}/Schemas", None, ADMIN),
    Row("get", f"{SCIM}/Schemas/urn:ietf:params:scim:schemas:core:2.0:User", None, ADMIN),
    Row("get", f"{SCIM}/ResourceTypes", None, ADMIN),
    Row("get", f"{SCIM}/ResourceTypes/User", None, ADMIN),
    Row("post", f"{SCIM}/.search", {}, ADMIN, allowed_status=501),
    *(Row(m, f"{SCIM}/Nothing/here", None, ADMIN, allowed_status=404, says="No SCIM resource") for m in METHODS),
]

# Endpoint-scoped routes whose endpoint is named in the body rather than the path.
BODY_SCOPED_ROUTES = [
    ("post", CR, {"endpoint_name": "guarded", "action": "update_config", "body": NEW_CONFIG}, MANAGE),
]
# Secret scopes have their own ACLs (READ < WRITE < MANAGE): each persona gets this one on the
# scope "team" (admins have MANAGE everywhere). Without an ACL: 404 for users with no role, 403 else.
READ, WRITE, SMANAGE = "READ", "WRITE", "MANAGE"
SCOPE_RANK = {None: 0, READ: 1, WRITE: 2, SMANAGE: 3}
SCOPE_GRANTS = {"viewer": READ, "can_query": READ, "editor": WRITE, "can_manage": SMANAGE}
# (method, path, body, permission needed on "team"); "secrets/get" never returns a value (403 even when allowed).
SCOPE_ROUTES = [
    ("get", f"{S}/list?scope=team", None, READ),
    ("get", f"{S}/get?scope=team&key=db-key", None, READ),
    ("post", f"{S}/put", {"scope": "team", "key": "k2", "string_value": "v"}, WRITE),
    ("post", f"{S}/delete", {"scope": "team", "key": "db-key"}, WRITE),
    ("get", f"{S}/acls/list?scope=team", None, SMANAGE),
    ("get", f"{S}/acls/get?scope=team&principal=author", None, SMANAGE),
    ("post", f"{S}/acls/put", {"scope": "team", "principal": "{user}", "permission": "READ"}, SMANAGE),
    ("post", f"{S}/acls/delete", {"scope": "team", "principal": "author"}, SMANAGE),
    ("post", f"{S}/scopes/delete", {"scope": "team"}, SMANAGE),
]
PUBLIC_ROUTES = {".well-known/databricks-config"}  # the SDK's host-metadata probe, before any auth


def allowed(persona: str, rule: str) -> bool:
    roles = ROLE_RULES[rule]
    return roles is None or PERSONAS[persona][0] in roles


# --- world ------------------------------------------------------------------------------------------


def make_world(api, registered_models, django_user_model) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The endpoint `guarded` (the API client's user manages it), an alert rule, two change
    requests by another editor, another user's token, a group with a member, and a policy."""
    from tests.test_api_endpoints import create, mark_ready

    create(api, endpoint_body("guarded", (registered_models["iris"], "1")))
    mark_ready("guarded")
    endpoint = Endpoint.objects.get(name="guarded")
    rule = AlertRule.objects.create(endpoint=endpoint, name="slow", metric="p99_latency_ms", threshold=1000)
    plan = RolloutPlan.objects.create(endpoint=endpoint, endpoint_name="guarded", steps=[50, 100], state="PAUSED")
    author = django_user_model.objects.create_user("author", "author@example.com", "pw-123456789")
    UserProfile.objects.create(user=author, role=Role.EDITOR)
    EndpointPermission.objects.create(endpoint=endpoint, user=author, level=MANAGE)
    change = proposals.propose(actor=author, endpoint_name="guarded", action="update_config", body=NEW_CONFIG)
    other = proposals.propose(actor=author, endpoint_name="guarded", action="update_config", body=NEW_CONFIG)
    victim = django_user_model.objects.create_user("victim", "victim@example.com", "pw-123456789")
    UserProfile.objects.create(user=victim, role=Role.VIEWER)
    their_token = create_token(user=victim, comment="theirs")[0]
    group = Group.objects.create(name="team")
    member = django_user_model.objects.create_user("member", "member@example.com", "pw-123456789")
    member.groups.add(group)
    policy = ApprovalPolicy.objects.create(tag_key="env", tag_value="staging")
    GroupRoleMapping.objects.create(group_name="team", role=Role.VIEWER)
    secret_services.create_scope(actor=author, scope="team")
    secret_services.put_secret(actor=author, scope="team", key="db-key", string_value="s3cr3t-value")
    principal = principal_services.create_principal(actor=author, display_name="pipeline")[0]
    workspace = Workspace.objects.create(name="remote-ws", host="https://remote.test", state="ERROR")
    WorkspaceGrant.objects.create(workspace=workspace, group=group, role=Role.VIEWER)
    Endpoint.fleet.create(workspace=workspace, name="remote-ep")  # polled from it (issue 16)
    GroupRoleMapping.objects.create(group_name="team", role=Role.EDITOR, workspace=workspace)
    return {
        "workspace": workspace.name,
        "sp": str(principal.application_id),
        "sp_secret": str(principal.secrets.get().pk),
        "sp_user_id": str(principal.user_id),
        "id": endpoint.id,
        "rule": str(rule.pk),
        "plan": str(plan.pk),
        "change": str(change.pk),
        "change2": str(other.pk),
        "token": str(their_token.pk),
        "policy": str(policy.pk),
        "group": group.name,
        "member": member.username,
        "user": victim.username,
        "user_id": str(victim.pk),
        "group_id": str(group.pk),
        "member_id": str(member.pk),
    }


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker, registered_models) -> Iterator[dict[str, str]]:
    """Made once for the module's ~760 tests (it was half of each test's time); each test's own
    changes still roll back (tests.conftest.shared_rows)."""
    from django.contrib.auth import get_user_model

    with shared_rows(django_db_blocker):
        alice = get_user_model().objects.create_user("alice", "alice@example.com", "pw-alice-123")
        UserProfile.objects.create(user=alice, role=Role.EDITOR)
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {create_token(user=alice)[1]}")
        yield make_world(api, registered_models, get_user_model())


def fill(value: object, world: dict[str, str]) -> object:
    if isinstance(value, str):
        for key, replacement in world.items():
            value = value.replace("{" + key + "}", replacement)
        return value
    if isinstance(value, dict):
        return {k: fill(v, world) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, world) for v in value]
    return value


def make_persona(persona: str, django_user_model, endpoint_id: str):  # type: ignore[no-untyped-def]
    """The persona's user: its role, its grant on `guarded` and its ACL on the scope `team`."""
    role, grant = PERSONAS[persona]
    user = django_user_model.objects.create_user(persona, f"{persona}@example.com", "pw-123456789")
    UserProfile.objects.create(user=user, role=role)
    if grant:
        EndpointPermission.objects.create(endpoint_id=endpoint_id, user=user, level=grant)
    if persona in SCOPE_GRANTS:
        author = django_user_model.objects.get(username="author")
        secret_services.put_acl(actor=author, scope="team", principal=persona, permission=SCOPE_GRANTS[persona])
    return user


def persona_client(persona: str, django_user_model, endpoint_id: str) -> APIClient:
    user = make_persona(persona, django_user_model, endpoint_id)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {create_token(user=user)[1]}")
    return client


def call(client: APIClient, method: str, path: str, body: object, registered_models):  # type: ignore[no-untyped-def]
    if body == "create":
        body = endpoint_body("brand-new", (registered_models["iris"], "1"))
    if body == "upload":  # past the access check, refused as a bad archive (400)
        return client.generic("POST", path, b"not gzip", content_type="application/gzip")
    return getattr(client, method)(path, body, format="json")


# --- completeness -----------------------------------------------------------------------------------


def api_routes() -> set[tuple[str, str]]:
    """(route pattern, method) for every API view Django routes to."""

    def walk(patterns, prefix=""):  # type: ignore[no-untyped-def]
        for p in patterns:
            if hasattr(p, "url_patterns"):
                yield from walk(p.url_patterns, prefix + str(p.pattern))
            else:
                yield prefix + str(p.pattern), p.callback

    found = set()
    for route, callback in walk(get_resolver().url_patterns):
        view = getattr(callback, "view_class", None)
        if view is None or not (route.startswith("api/") or route in PUBLIC_ROUTES):
            continue
        for method in ("get", "post", "put", "patch", "delete"):
            if hasattr(view, method):
                found.add((route, method))
    return found


def covered_routes() -> set[tuple[str, str]]:
    sample = {"id": "e-1", "rule": "1", "change": "1", "change2": "2", "token": "1", "policy": "1", "group": "g"}
    sample |= {"member": "m", "user": "u", "user_id": "1", "group_id": "1", "member_id": "1", "workspace": "w"}
    sample |= {"sp": "00000000-0000-4000-8000-000000000000", "sp_secret": "1", "sp_user_id": "1"}
    sample |= {"plan": "1"}  # a rollout plan
    rows = [(m, p) for m, p, _, _ in ROUTES] + [(r.method, r.path) for r in GLOBAL_ROUTES]
    rows += [(m, p) for m, p, _, _ in BODY_SCOPED_ROUTES] + [(m, p) for m, p, _, _ in SCOPE_ROUTES]
    covered = set()
    for method, path in rows:
        match = resolve(str(fill(path, sample)).split("?")[0])
        covered.add((match.route, method))
    return covered | {(r, "get") for r in PUBLIC_ROUTES}


def test_every_api_route_has_a_row_in_the_matrix():
    missing = sorted(api_routes() - covered_routes())
    assert not missing, f"routes with no row in the permission matrix: {missing}"


# --- global routes × personas -----------------------------------------------------------------------


@pytest.mark.parametrize(("row", "persona"), list(itertools.product(range(len(GLOBAL_ROUTES)), PERSONAS)))
def test_every_global_route_for_every_persona(row, persona, world, django_user_model, registered_models):
    spec = GLOBAL_ROUTES[row]
    client = persona_client(persona, django_user_model, world["id"])
    response = call(client, spec.method, fill(spec.path, world), fill(spec.body, world), registered_models)
    scim = spec.path.startswith(SCIM)
    if allowed(persona, spec.rule) and spec.allowed_status is not None:
        assert response.status_code == spec.allowed_status, (persona, spec, response.content)
        assert spec.says in response.json()["detail" if scim else "message"]
    elif allowed(persona, spec.rule):
        assert response.status_code < 400 or response.status_code == 400 and spec.body == "upload", (
            persona,
            spec,
            response.content,
        )
    elif scim:  # SCIM's own error (RFC 7644 §3.12)
        assert response.status_code == spec.denied, (persona, spec, response.content)
        assert response.json()["status"] == str(spec.denied) and "scimType" not in response.json()
    else:
        denied = spec.unseen if spec.unseen is not None and not allowed(persona, ROLES) else spec.denied
        assert response.status_code == denied, (persona, spec, response.content)
        assert response.json()["error_code"] == ("PERMISSION_DENIED" if denied == 403 else "RESOURCE_DOES_NOT_EXIST")


@pytest.mark.parametrize(("row", "persona"), list(itertools.product(range(len(BODY_SCOPED_ROUTES)), PERSONAS)))
def test_routes_naming_the_endpoint_in_the_body_follow_the_endpoint_rule(row, persona, world, django_user_model):
    method, path, body, needed = BODY_SCOPED_ROUTES[row]
    client = persona_client(persona, django_user_model, world["id"])
    response = getattr(client, method)(path, body, format="json")
    level = level_of(persona)
    expected = 404 if level is None else (403 if RANK[level] < RANK[needed] else 200)
    assert response.status_code == expected, (persona, response.content)


def scope_level(persona: str) -> str | None:
    return SMANAGE if PERSONAS[persona][0] == Role.ADMIN else SCOPE_GRANTS.get(persona)


def scope_verdict(persona: str, needed: str) -> int:
    """What the rules give: 404 (cannot see the scope), 403 (cannot act) or 200."""
    level = scope_level(persona)
    if level is None and not PERSONAS[persona][0]:
        return 404
    return 403 if SCOPE_RANK[level] < SCOPE_RANK[needed] else 200


@pytest.mark.parametrize(("row", "persona"), list(itertools.product(range(len(SCOPE_ROUTES)), PERSONAS)))
def test_every_secrets_route_for_every_persona(row, persona, world, django_user_model):
    method, path, body, needed = SCOPE_ROUTES[row]
    client = persona_client(persona, django_user_model, world["id"])
    response = getattr(client, method)(path, fill(body, world), format="json")
    expected = scope_verdict(persona, needed)
    if expected == 200 and path.startswith(f"{S}/get"):
        expected = 403  # allowed to reference it, never to read it
        assert "never returned" in response.json()["message"]
    assert response.status_code == expected, (persona, path, response.content)
    assert b"s3cr3t-value" not in response.content


def test_the_lists_show_only_what_the_caller_may_see(world, django_user_model):
    editor = persona_client("editor", django_user_model, world["id"])
    assert editor.get(CR).json()["change_requests"] == []  # someone else's request
    assert [t["comment"] for t in editor.get("/api/2.0/modelfleet/tokens").json()["tokens"]] == [""]
    approver = persona_client("approver", django_user_model, world["id"])
    listed = sorted(c["id"] for c in approver.get(CR).json()["change_requests"])
    assert listed == [int(world["change"]), int(world["change2"])]


def test_no_api_route_answers_an_anonymous_caller(world, registered_models):
    anonymous = APIClient()
    checked = 0
    rows = [*ROUTES, *BODY_SCOPED_ROUTES, *SCOPE_ROUTES] + [(r.method, r.path, r.body, r.rule) for r in GLOBAL_ROUTES]
    for method, path, body, _ in rows:
        response = call(anonymous, method, fill(path, world), fill(body, world), registered_models)
        assert response.status_code == 401, (method, path, response.content)
        assert response.json()["error_code"] == "UNAUTHENTICATED"
        checked += 1
    assert checked == len(rows)
    assert anonymous.get("/.well-known/databricks-config").status_code == 200


# --- CLI verbs × personas ---------------------------------------------------------------------------

# Commands with nothing to permit or refuse: they run here and talk to no server, or every
# signed-in caller gets the same answer.
LOCAL_VERBS = {
    ("up",): "starts the product's processes on this machine",
    ("runtime",): "runs a runtime agent on this machine",
    ("setup",): "migrates and seeds the local database",
    # Queries go to the ASGI gateway, which the live test server does not run; the gateway's own
    # matrix is tests/test_access.py::test_the_gateway_needs_can_query.
    ("serving-endpoints", "query"): "goes to the gateway (covered by the gateway matrix test)",
    ("version",): "prints the CLI's version",
    ("completion",): "prints a shell completion script",
    # Databricks verbs for what Modelfleet does not serve: whoever asks gets a 400 "not supported".
    ("serving-endpoints", "create-provisioned-throughput-endpoint"): "not supported: a 400 for everyone",
    ("serving-endpoints", "update-provisioned-throughput-endpoint-config"): "not supported: a 400 for everyone",
    ("serving-endpoints", "http-request"): "not supported: a 400 for everyone",
}


@dataclass(frozen=True)
class Verb:
    argv: tuple[str, ...]
    needed: str | None = None  # an endpoint level on `guarded`
    rule: str | None = None  # else a role rule
    scope_needed: str | None = None  # else a permission on the secret scope `team`
    denied_says: str = ""


NEW_CONFIG_FILE = "{tmp}/config.json"
ROLLOUT_START = ("rollouts", "start", "guarded", "--entity-name", "main.default.iris", "--entity-version", "1")
ROLLOUT_START += ("--steps", "50,100")
KEEP_ME = '{"access_control_list": [{"user_name": "{persona}", "permission_level": "CAN_MANAGE"}]}'
# In order: reads, then the change requests (before the endpoint changes under them), then
# endpoint changes, administration, and last the verbs that remove things.
CLI_VERBS = [
    Verb(("serving-endpoints", "list"), rule=ANY),
    Verb(("serving-endpoints", "get", "guarded"), needed=VIEW),
    Verb(("serving-endpoints", "get-status", "guarded"), needed=VIEW),
    Verb(("serving-endpoints", "get-permissions", "{id}"), needed=VIEW),
    Verb(("serving-endpoints", "get-permission-levels", "{id}"), needed=VIEW),
    Verb(("permissions", "get", "serving-endpoints", "{id}"), needed=VIEW),
    Verb(("permissions", "get-permission-levels", "serving-endpoints", "{id}"), needed=VIEW),
    Verb(("serving-endpoints", "logs", "guarded", "iris-1"), needed=VIEW),
    Verb(("serving-endpoints", "build-logs", "guarded", "iris-1"), needed=VIEW),
    Verb(("serving-endpoints", "get-open-api", "guarded"), needed=VIEW),
    Verb(("serving-endpoints", "export-metrics", "guarded"), needed=VIEW),
    Verb(("serving-endpoints", "get-metrics", "guarded"), needed=VIEW),
    Verb(("serving-endpoints", "list-external-models"), rule=ANY),
    Verb(("models", "list"), rule=ANY),
    Verb(("change-requests", "list"), rule=ANY),
    Verb(("change-requests", "show", "{change}"), rule=APPROVERS),
    Verb(("change-requests", "approve", "{change}", "--comment", "ok"), rule=APPROVERS),
    Verb(("change-requests", "reject", "{change2}", "--comment", "no"), rule=APPROVERS),
    Verb(("change-requests", "propose", "guarded", "--json", f"@{NEW_CONFIG_FILE}"), needed=MANAGE),
    # Rollout plans (issue 17): the world's plan is paused; then a plan started, aborted, closed, and another promoted.
    Verb(("rollouts", "status", "guarded"), needed=VIEW),
    Verb(("rollouts", "status", "guarded", "{plan}"), needed=VIEW),
    Verb(("rollouts", "resume", "guarded", "{plan}"), needed=MANAGE),
    Verb(("rollouts", "pause", "guarded", "{plan}"), needed=MANAGE),
    Verb(("rollouts", "abort", "guarded", "{plan}"), needed=MANAGE),
    Verb(ROLLOUT_START + ("--served-entity-name", "canary-1"), needed=MANAGE),
    Verb(("rollouts", "abort", "guarded"), needed=MANAGE),
    Verb(("rollouts", "close", "guarded"), needed=MANAGE),
    Verb(ROLLOUT_START + ("--served-entity-name", "canary-2"), needed=MANAGE),
    Verb(("rollouts", "promote", "guarded"), needed=MANAGE),
    Verb(
        ("serving-endpoints", "update-config", "guarded", "--json", f"@{NEW_CONFIG_FILE}", "--no-wait"), needed=MANAGE
    ),
    Verb(
        ("serving-endpoints", "patch", "guarded", "--json", '{"add_tags": [{"key": "k", "value": "v"}]}'), needed=MANAGE
    ),
    Verb(
        ("serving-endpoints", "put-ai-gateway", "guarded", "--json", '{"usage_tracking_config": {"enabled": true}}'),
        needed=MANAGE,
    ),
    Verb(
        (
            "serving-endpoints",
            "put",
            "guarded",
            "--json",
            '{"rate_limits": [{"calls": 9, "renewal_period": "minute"}]}',
        ),
        needed=MANAGE,
    ),
    Verb(
        ("serving-endpoints", "update-notifications", "guarded", "--json", '{"email_notifications": {}}'),
        needed=MANAGE,
    ),
    Verb(("serving-endpoints", "patch-telemetry-config", "guarded", "--json", "{}"), needed=MANAGE),
    Verb(("serving-endpoints", "set-permissions", "{id}", "--json", KEEP_ME), needed=MANAGE),
    Verb(("serving-endpoints", "update-permissions", "{id}", "--json", KEEP_ME), needed=MANAGE),
    Verb(("permissions", "set", "serving-endpoints", "{id}", "--json", KEEP_ME), needed=MANAGE),
    Verb(("permissions", "update", "serving-endpoints", "{id}", "--json", KEEP_ME), needed=MANAGE),
    Verb(("serving-endpoints", "create", "--json", "@{tmp}/create.json", "--no-wait"), rule=CREATORS),
    Verb(("models", "register", "{tmp}/model", "--name", "main.default.cli_matrix"), rule=CREATORS),
    Verb(("users", "list"), rule=ADMIN),
    Verb(("users", "create", "newcomer", "--role", "viewer"), rule=ADMIN),
    Verb(("users", "set-role", "{user}", "editor"), rule=ADMIN),
    Verb(("groups", "list"), rule=ADMIN),
    Verb(("groups", "create", "new-group"), rule=ADMIN),
    Verb(("groups", "add-member", "{group}", "{user}"), rule=ADMIN),
    Verb(("groups", "remove-member", "{group}", "{member}"), rule=ADMIN),
    Verb(("tokens", "list"), rule=ANY),
    Verb(("tokens", "create", "--comment", "mine"), rule=ANY),
    Verb(("tokens", "create", "--user", "{user}", "--comment", "theirs"), rule=ADMIN),
    Verb(("tokens", "create", "--comment", "expiring", "--lifetime-seconds", "600"), rule=ANY),
    Verb(("users", "set-max-token-lifetime", "{user}", "86400"), rule=ADMIN),
    Verb(("tokens", "revoke", "{token}"), rule=ADMIN),
    Verb(("audit", "list"), rule=ADMIN),
    Verb(("service-principals", "list"), rule=ADMIN),
    Verb(("service-principals", "create", "new-principal", "--role", "viewer"), rule=ADMIN),
    Verb(("service-principals", "create-secret", "{sp}"), rule=ADMIN),
    Verb(("service-principals", "delete-secret", "{sp}", "{sp_secret}"), rule=ADMIN),
    Verb(("service-principals", "delete", "{sp}"), rule=ADMIN),
    Verb(("audit", "export"), rule=ADMIN),
    Verb(("workspaces", "list"), rule=ANY),
    Verb(("workspaces", "get", "local"), rule=ANY),
    Verb(
        ("workspaces", "add", "cli-ws", "--host", "https://remote.test", "--token-stdin", "--no-validate"), rule=ADMIN
    ),
    Verb(("workspaces", "update", "{workspace}", "--token-stdin", "--no-validate"), rule=ADMIN),
    Verb(("workspaces", "grants", "{workspace}"), rule=ADMIN),
    Verb(("workspaces", "grant", "{workspace}", "--user", "{user}", "--role", "viewer"), rule=ADMIN),
    Verb(("workspaces", "revoke", "{workspace}", "--group", "{group}"), rule=ADMIN),
    Verb(("workspaces", "remove", "{workspace}"), rule=ADMIN),
    Verb(("secrets", "list-scopes"), rule=ANY),
    Verb(("secrets", "create-scope", "new-scope"), rule=CREATORS),
    Verb(("secrets", "list-secrets", "team"), scope_needed=READ),
    Verb(("secrets", "put-secret", "team", "k2", "--string-value", "v"), scope_needed=WRITE),
    Verb(("secrets", "delete-secret", "team", "db-key"), scope_needed=WRITE),
    Verb(("secrets", "list-acls", "team"), scope_needed=SMANAGE),
    Verb(("secrets", "get-acl", "team", "author"), scope_needed=SMANAGE),
    Verb(("secrets", "put-acl", "team", "{user}", "READ"), scope_needed=SMANAGE),
    Verb(("secrets", "delete-acl", "team", "author"), scope_needed=SMANAGE),
    Verb(("secrets", "delete-scope", "team"), scope_needed=SMANAGE),
    Verb(("users", "deactivate", "{user}"), rule=ADMIN),
    Verb(("serving-endpoints", "delete", "guarded"), needed=MANAGE),  # last: it removes the endpoint
]


def parser_verbs() -> set[tuple[str, ...]]:
    def leaves(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from leaves(sub, (*prefix, name))
                return
        yield prefix

    return set(leaves(build_parser()))


def verb_name(argv: tuple[str, ...]) -> tuple[str, ...]:
    return argv[:1] if argv[0] in ("up", "runtime", "setup") else argv[:2]


def test_every_cli_verb_has_a_row_in_the_matrix():
    covered = {verb_name(v.argv) for v in CLI_VERBS} | set(LOCAL_VERBS)
    assert parser_verbs() - covered == set()


def settle() -> None:
    """Play the runtime's part after each verb: a config being rolled out becomes ready."""
    from tests.test_api_endpoints import mark_ready

    endpoint = Endpoint.objects.filter(name="guarded").first()
    if endpoint is not None and endpoint.pending_config_id is not None:
        mark_ready("guarded")


def verb_allowed(persona: str, verb: Verb) -> bool:
    if verb.scope_needed is not None:
        return scope_verdict(persona, verb.scope_needed) == 200
    if verb.rule is not None:
        return allowed(persona, verb.rule)
    level = level_of(persona)
    return level is not None and RANK[level] >= RANK[verb.needed]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("persona", PERSONAS)
def test_every_cli_verb_for_every_persona(
    persona, live_server, django_user_model, registered_models, monkeypatch, capsys, tmp_path
):
    """Each verb runs against a live server with the persona's token: exit 0 when the rules allow
    it, exit 1 with the server's refusal otherwise. One persona per test, verbs in order."""
    from endpoints_app.models import Role as R

    owner = django_user_model.objects.create_user("owner", "owner@example.com", "pw-123456789")
    UserProfile.objects.create(user=owner, role=R.EDITOR)
    owner_api = APIClient()
    owner_api.credentials(HTTP_AUTHORIZATION=f"Bearer {create_token(user=owner)[1]}")
    world_ = make_world(owner_api, registered_models, django_user_model)
    (tmp_path / "create.json").write_text(json.dumps(endpoint_body("cli-new", (registered_models["iris"], "1"))))
    (tmp_path / "config.json").write_text(json.dumps(NEW_CONFIG))
    model_fixtures.save_constant_model(tmp_path / "model", "x")
    world_ |= {"tmp": str(tmp_path), "persona": persona}

    role = PERSONAS[persona][0]
    user = make_persona(persona, django_user_model, world_["id"])
    monkeypatch.setenv("MODELFLEET_HOST", live_server.url)
    monkeypatch.setenv("MODELFLEET_TOKEN", create_token(user=user)[1])
    monkeypatch.setenv("MODELFLEET_CONFIG_FILE", str(tmp_path / "no-such-config"))
    monkeypatch.setattr("sys.stdin", io.StringIO("t" * 30 + "\n" + "u" * 30 + "\n"))  # workspaces add, update

    wrong = []
    for verb in CLI_VERBS:
        argv = [str(fill(a, world_)) for a in verb.argv]
        code = cli_main(argv)
        out = capsys.readouterr()
        expect_ok = verb_allowed(persona, verb)
        settle()
        if expect_ok:
            ok = code == 0
        else:
            ok = code == 1 and ("needs" in out.err or "does not exist" in out.err or "admin" in out.err)
        if not ok:
            wrong.append((" ".join(argv), "allowed" if expect_ok else "denied", code, out.err.strip()[:200]))
    assert not wrong, "\n".join(map(str, wrong))
    # The mutating verbs really happened (or not) on the server.
    assert Endpoint.objects.filter(name="guarded").exists() != verb_allowed(persona, CLI_VERBS[-1])
    theirs = AccessToken.objects.filter(user__username=world_["user"], comment="theirs").count()
    assert theirs == (2 if role == Role.ADMIN else 1)  # the world made one; only an admin adds another
    assert ChangeRequest.objects.filter(author=user).exists() == verb_allowed(persona, Verb(("x",), needed=MANAGE))
