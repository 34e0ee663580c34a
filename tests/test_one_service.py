"""One service call per change (issue 12): every interface that offers a change reaches the
approval gate only through that change's service, so a gate that refuses stops every one of them.

The gate's one decision, ``services.gate.approval_required``, is monkeypatched to say "needs
approval" for everyone — admins included, who normally skip it. Then, for each change and each
interface that offers it:

- the REST API (the real DRF client, a bearer token) answers 403 PERMISSION_DENIED, naming the
  change request to propose where one can carry the change, and writes nothing (no row, no audit
  event, no change request);
- the dashboard page (the Django client, signed in) proposes a change request instead, sends the
  user to it, and applies nothing.

The CLI has no route of its own: it is a client of the REST API (``endpoints_app/cli/client.py``),
so the API rows cover it. Tags, permissions and approval policies have no page form: the endpoint
page's permissions panel calls the same permissions API from its script.

Traffic splits are config updates (``traffic_config.routes``): their own rows check that a split
alone goes through the gate too.
"""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from endpoints_app.errors import PermissionDenied
from endpoints_app.models import (
    ApprovalPolicy,
    AuditEvent,
    ChangeRequest,
    ChangeRequestStatus,
    Endpoint,
    EndpointPermission,
    PermissionLevel,
    Role,
    UserProfile,
)
from endpoints_app.services import ai_gateway, approval_policies, changes, gate, permissions
from endpoints_app.services import endpoints as endpoint_services
from endpoints_app.services.tokens import create_token
from tests.conftest import endpoint_body
from tests.test_api_endpoints import create, mark_ready
from tests.test_dashboard_ai_gateway import settings_form
from tests.test_dashboard_edit import entity, etag_in, form_data

pytestmark = pytest.mark.django_db
IRIS = "main.default.iris"
API = "/api/2.0/serving-endpoints"
SPLIT_90_10 = {
    "served_entities": [
        {"name": "iris-1", "entity_name": IRIS, "entity_version": "1", "workload_size": "Small"},
        {"name": "iris-2", "entity_name": IRIS, "entity_version": "2", "workload_size": "Small"},
    ],
    "traffic_config": {
        "routes": [
            {"served_model_name": "iris-1", "traffic_percentage": 90},
            {"served_model_name": "iris-2", "traffic_percentage": 10},
        ]
    },
}
ONLY_V2 = {"served_entities": [{"entity_name": IRIS, "entity_version": "2", "workload_size": "Small"}]}


@pytest.fixture
def ab(api, registered_models) -> Endpoint:
    """alice's endpoint serving iris v1 and v2 50/50, deployed, with one grant and one policy
    (on another endpoint, so that the real gate would let everything here through)."""
    create(api, endpoint_body("ab", (IRIS, "1"), (IRIS, "2"), routes=[("iris-1", 50), ("iris-2", 50)]))
    mark_ready("ab")
    ApprovalPolicy.objects.create(endpoint_name="elsewhere")
    return Endpoint.objects.get(name="ab")


@pytest.fixture
def admin(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-long-enough-1")


@pytest.fixture
def admin_api(admin) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {create_token(user=admin)[1]}")
    return client


@pytest.fixture
def gate_refuses(monkeypatch) -> None:
    """The gate says every change needs approval, whoever makes it."""
    monkeypatch.setattr(gate, "approval_required", lambda **_: True)


def state(name: str = "ab") -> dict:
    """Everything a change here could write."""
    endpoint = Endpoint.objects.filter(name=name).first()
    return {
        "endpoint": endpoint is not None,
        "versions": endpoint.config_versions.count() if endpoint else 0,
        "routes": (endpoint.pending_config or endpoint.active_config).traffic_config if endpoint else None,
        "tags": sorted(endpoint.tags.values_list("key", "value")) if endpoint else [],
        "ai_gateway": endpoint.ai_gateway if endpoint else None,
        "grants": sorted(EndpointPermission.objects.values_list("user__username", "level")),
        "policies": sorted(ApprovalPolicy.objects.values_list("endpoint_name", "tag_key")),
        "audit": AuditEvent.objects.count(),
        "endpoints": Endpoint.objects.count(),
    }


# --- the REST API (and so the CLI) ---------------------------------------------------------------

API_CHANGES = {
    "create": lambda c, ab: c.post(API, endpoint_body("fresh", (IRIS, "1")), format="json"),
    "config": lambda c, ab: c.put(f"{API}/ab/config", ONLY_V2, format="json"),
    "traffic": lambda c, ab: c.put(f"{API}/ab/config", SPLIT_90_10, format="json"),
    "tags": lambda c, ab: c.patch(f"{API}/ab/tags", {"add_tags": [{"key": "env", "value": "prod"}]}, format="json"),
    "delete": lambda c, ab: c.delete(f"{API}/ab"),
    "ai-gateway": lambda c, ab: c.put(
        f"{API}/ab/ai-gateway", {"usage_tracking_config": {"enabled": True}}, format="json"
    ),
    "rate-limits": lambda c, ab: c.put(
        f"{API}/ab/rate-limits", {"rate_limits": [{"calls": 5, "renewal_period": "minute"}]}, format="json"
    ),
    "notifications": lambda c, ab: c.patch(
        f"{API}/ab/notifications", {"email_notifications": {"on_update_success": ["a@example.com"]}}, format="json"
    ),
    "telemetry": lambda c, ab: c.patch(
        f"{API}/ab/telemetry-config", {"telemetry_config": {"enabled_telemetry_features": []}}, format="json"
    ),
    "permissions": lambda c, ab: c.patch(
        f"/api/2.0/permissions/serving-endpoints/{ab.id}",
        {"access_control_list": [{"user_name": "alice", "permission_level": "CAN_QUERY"}]},
        format="json",
    ),
    "approval policy create": lambda c, ab: c.post(
        "/api/2.0/modelfleet/approval-policies", {"tag_key": "env", "tag_value": "prod"}, format="json"
    ),
    "approval policy delete": lambda c, ab: c.delete(
        f"/api/2.0/modelfleet/approval-policies/{ApprovalPolicy.objects.get().pk}"
    ),
}
PROPOSABLE = {"create", "config", "traffic", "tags", "delete", "ai-gateway", "rate-limits"}


@pytest.mark.parametrize("change", list(API_CHANGES))
def test_the_api_refuses_each_change_the_gate_refuses_and_writes_nothing(change, ab, admin_api, gate_refuses):
    before = state()
    response = API_CHANGES[change](admin_api, ab)
    assert response.status_code == 403, response.content
    body = response.json()
    assert body["error_code"] == "PERMISSION_DENIED" and "approval" in body["message"]
    if change in PROPOSABLE:
        assert "POST /api/2.0/modelfleet/change-requests" in body["message"]
    assert state() == before
    assert not Endpoint.objects.filter(name="fresh").exists()
    assert not ChangeRequest.objects.exists()


@pytest.mark.parametrize("change", list(API_CHANGES))
def test_the_same_api_calls_apply_when_the_gate_lets_them(change, ab, admin_api):
    """The rows above refuse because of the gate, not for a reason of their own."""
    before = state()
    response = API_CHANGES[change](admin_api, ab)
    assert response.status_code == 200, response.content
    assert state()["audit"] > before["audit"]


# --- the dashboard pages -----------------------------------------------------------------------


def _edit_form(client, data: dict) -> dict:
    return {**data, "etag": etag_in(client.get("/endpoints/ab/edit").content.decode())}


PAGE_CHANGES = {
    "create": lambda c: c.post("/endpoints/new", form_data(entity("1", 100), name="fresh")),
    "config": lambda c: c.post(
        "/endpoints/ab/edit", _edit_form(c, form_data(entity("2", 100, name="iris-2"), initial=1))
    ),
    "traffic": lambda c: c.post(
        "/endpoints/ab/edit",
        _edit_form(c, form_data(entity("1", 90, name="iris-1"), entity("2", 10, name="iris-2"), initial=2)),
    ),
    "delete": lambda c: c.post(
        "/endpoints/ab/delete", {"etag": etag_in(c.get("/endpoints/ab/delete").content.decode())}
    ),
    "ai-gateway": lambda c: c.post(
        "/endpoints/ab/ai-gateway",
        settings_form(etag_in(c.get("/endpoints/ab/ai-gateway").content.decode()), usage_tracking="on"),
    ),
}
PAGE_ACTIONS = {"create": "create", "config": "update_config", "traffic": "update_config"}


@pytest.mark.parametrize("change", list(PAGE_CHANGES))
def test_a_page_proposes_each_change_the_gate_holds_and_applies_nothing(change, ab, admin, client, gate_refuses):
    client.force_login(admin)
    before = {k: v for k, v in state().items() if k != "audit"}
    response = PAGE_CHANGES[change](client)
    proposal = ChangeRequest.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/change-requests/{proposal.pk}/"
    assert proposal.action == PAGE_ACTIONS.get(change, change.replace("-", "_"))
    assert proposal.status == ChangeRequestStatus.PENDING and proposal.author == admin
    assert {k: v for k, v in state().items() if k != "audit"} == before
    assert list(AuditEvent.objects.filter(actor=admin).values_list("action", flat=True)) == ["change_request.propose"]


# --- the gate lives in the services --------------------------------------------------------------


@pytest.fixture
def covered(ab) -> Endpoint:
    """ab under a policy; alice (an editor) manages it, so only approval stands in her way."""
    ApprovalPolicy.objects.create(endpoint_name="ab")
    ApprovalPolicy.objects.create(endpoint_name="fresh")
    return ab


SERVICE_CHANGES = {
    "create": lambda user, **kw: endpoint_services.create_endpoint(
        actor=user, body=endpoint_body("fresh", (IRIS, "1")), **kw
    ),
    "config": lambda user, **kw: endpoint_services.update_endpoint_config(actor=user, name="ab", body=ONLY_V2, **kw),
    "traffic": lambda user, **kw: endpoint_services.update_endpoint_config(
        actor=user, name="ab", body=SPLIT_90_10, **kw
    ),
    "tags": lambda user, **kw: endpoint_services.patch_endpoint_tags(
        actor=user, name="ab", body={"delete_tags": ["missing"]}, **kw
    ),
    "delete": lambda user, **kw: endpoint_services.delete_endpoint(actor=user, name="ab", **kw),
    "ai-gateway": lambda user, **kw: ai_gateway.put_ai_gateway(
        actor=user, name="ab", body={"usage_tracking_config": {"enabled": True}}, **kw
    ),
}


@pytest.mark.parametrize("change", list(SERVICE_CHANGES))
def test_called_directly_each_service_refuses_a_non_approver_on_a_covered_endpoint(change, covered, user):
    before = state()
    with pytest.raises(PermissionDenied, match="need approval"):
        SERVICE_CHANGES[change](user)
    assert state() == before and not ChangeRequest.objects.exists()


@pytest.mark.parametrize("change", list(SERVICE_CHANGES))
def test_called_directly_each_service_proposes_when_asked_to(change, covered, user):
    before = {k: v for k, v in state().items() if k != "audit"}
    outcome = SERVICE_CHANGES[change](user, on_approval_needed="propose")
    assert outcome.proposed and outcome.change_request == ChangeRequest.objects.get()
    assert outcome.change_request.author == user and outcome.change_request.status == ChangeRequestStatus.PENDING
    assert {k: v for k, v in state().items() if k != "audit"} == before
    with pytest.raises(RuntimeError, match="nothing was applied"):
        outcome.applied()


def test_permissions_and_policies_check_the_gate_in_their_services_too(ab, admin, monkeypatch):
    monkeypatch.setattr(gate, "approval_required", lambda **_: True)
    before = state()
    grant = {"access_control_list": [{"user_name": "alice", "permission_level": "CAN_QUERY"}]}
    with pytest.raises(PermissionDenied, match="needs approval"):
        permissions.set_permissions(actor=admin, endpoint=ab, body=grant, replace=False)
    with pytest.raises(PermissionDenied, match="needs approval"):
        approval_policies.create_policy(actor=admin, body={"endpoint_name": "ab"})
    with pytest.raises(PermissionDenied, match="needs approval"):
        approval_policies.delete_policy(actor=admin, policy_id=ApprovalPolicy.objects.get().pk)
    assert state() == before


def test_an_approved_change_applies_without_asking_the_gate_again(covered, user, django_user_model, monkeypatch):
    paula = django_user_model.objects.create_user("paula", "paula@example.com", "pw-paula-long-enough-1")
    UserProfile.objects.create(user=paula, role=Role.APPROVER)
    proposal = endpoint_services.update_endpoint_config(
        actor=user, name="ab", body=SPLIT_90_10, on_approval_needed="propose"
    ).change_request
    monkeypatch.setattr(gate, "approval_required", lambda **_: True)  # paula's apply never asks
    changes.approve(actor=paula, request=proposal)
    routes = Endpoint.objects.get(name="ab").pending_config.traffic_config["routes"]
    assert [r["traffic_percentage"] for r in routes] == [90, 10]
    assert paula.pk not in EndpointPermission.objects.filter(level=PermissionLevel.CAN_MANAGE).values_list(
        "user_id", flat=True
    )  # she applied it without managing the endpoint: the approved request stood in for that


def test_an_approved_request_stands_in_only_for_the_change_it_carries(covered, user, django_user_model):
    paula = django_user_model.objects.create_user("paula", "paula@example.com", "pw-paula-long-enough-1")
    UserProfile.objects.create(user=paula, role=Role.APPROVER)
    proposal = endpoint_services.patch_endpoint_tags(
        actor=user, name="ab", body={"add_tags": [{"key": "team", "value": "ml"}]}, on_approval_needed="propose"
    ).change_request
    changes.approve(actor=paula, request=proposal)
    before = state()
    with pytest.raises(PermissionDenied, match="is not an approved delete"):
        endpoint_services.delete_endpoint(actor=user, name="ab", approved=proposal)
    pending = ChangeRequest.objects.create(endpoint_name="ab", action="delete", author=user)
    with pytest.raises(PermissionDenied, match="is not an approved delete"):
        endpoint_services.delete_endpoint(actor=user, name="ab", approved=pending)
    assert state() == before


def test_approval_policies_are_written_with_their_audit_rows(admin_api):
    created = admin_api.post("/api/2.0/modelfleet/approval-policies", {"endpoint_name": "ab"}, format="json")
    assert created.status_code == 200
    policy_id = created.json()["id"]
    assert admin_api.delete(f"/api/2.0/modelfleet/approval-policies/{policy_id}").status_code == 200
    events = AuditEvent.objects.filter(object_type="approval_policy", object_id=str(policy_id))
    assert list(events.order_by("id").values_list("action", flat=True)) == [
        "approval_policy.create",
        "approval_policy.delete",
    ]
    assert not ApprovalPolicy.objects.exists()
