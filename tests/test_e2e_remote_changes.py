"""End to end (issue 16 part 4): a change to a second, independent Modelfleet's endpoint through the
first one's approval gate.

The remote and the first stack are tests/test_e2e_fleet.py's (``modelfleet up`` in its own data
directory and port; the test stack polling it every 2 s, the egress policy allowing its port only).
Driven through the first one's API, with users that hold roles in the workspace only:

1. the remote registered as ``far``, a policy "every change in far needs an approver", an editor and
   an approver granted there; the editor's direct change is refused (403, how to propose), their
   proposal of an 80/20 traffic split waits, the approver approves it, and the remote, read back
   with the SDK, serves 80/20 (both entities ready, the split in its active config);
2. a proposal, then the remote changed directly with the SDK: approving it is refused as stale
   (409, STALE);
3. a proposal of a model the remote does not have: approving it fails, the remote's error is on the
   change request (FAILED) and the audit row holds what was sent and what came back.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from databricks.sdk import WorkspaceClient
from databricks.sdk.service.serving import EndpointCoreConfigInput, Route, ServedEntityInput, TrafficConfig

from tests import test_e2e_fleet as fleet
from tests.test_e2e_fleet import DEMO_MODEL, REMOTE_TOKEN, wait_for

# The fixtures of tests/test_e2e_fleet.py: the first stack (polling remotes) and the remote Modelfleet.
remote_port = fleet.remote_port
fleet_stack = fleet.fleet_stack
remote = fleet.remote

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def entity(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "entity_name": DEMO_MODEL,
        "entity_version": "1",
        "workload_size": "Small",
        "scale_to_zero_enabled": False,
    }


def split(a: int, b: int) -> dict[str, Any]:
    return {
        "served_entities": [entity("demo-a"), entity("demo-b")],
        "traffic_config": {
            "routes": [
                {"served_model_name": "demo-a", "traffic_percentage": a},
                {"served_model_name": "demo-b", "traffic_percentage": b},
            ]
        },
    }


def test_a_traffic_split_on_a_remote_goes_through_the_gate(fleet_stack, remote, django_user_model):
    from endpoints_app.models import Role, UserProfile
    from endpoints_app.services.tokens import create_token

    admin = django_user_model.objects.create_superuser("rc-admin", "rc@example.com", "rc-password-1")
    people = {}
    for name in ("rc-editor", "rc-approver"):
        person = django_user_model.objects.create_user(name, f"{name}@example.com", "rc-password-1")
        UserProfile.objects.create(user=person, role=Role.NONE)  # roles in far only
        people[name] = {"Authorization": f"Bearer {create_token(user=person, comment='e2e')[1]}"}
    as_admin = {"Authorization": f"Bearer {create_token(user=admin, comment='e2e')[1]}"}
    api = fleet_stack.url + "/api/2.0/modelfleet"

    def call(method: str, path: str, headers: dict[str, str], body: Any = None) -> requests.Response:
        return requests.request(method, api + path, json=body, headers=headers, timeout=120)

    remote_sdk = WorkspaceClient(host=remote.url, token=REMOTE_TOKEN, auth_type="pat")
    remote_sdk.serving_endpoints.create_and_wait(
        name="far-split",
        config=EndpointCoreConfigInput(
            name="far-split",
            served_entities=[ServedEntityInput.from_dict(entity("demo-a"))],
        ),
    )

    # 1. Registered, with a policy for the whole workspace and roles granted there only.
    registered = call("POST", "/workspaces", as_admin, {"name": "far", "host": remote.url, "token": REMOTE_TOKEN})
    assert registered.status_code == 200, registered.text
    assert call("POST", "/approval-policies", as_admin, {"workspace": "far"}).status_code == 200
    for name, role in (("rc-editor", "editor"), ("rc-approver", "approver")):
        granted = call("PUT", "/workspaces/far/grants", as_admin, {"user_name": name, "role": role})
        assert granted.status_code == 200, granted.text
    wait_for(
        "the remote's endpoint in the fleet",
        lambda: call("GET", "/fleet/endpoints/far/far-split", as_admin).status_code == 200,
    )
    editor, approver = people["rc-editor"], people["rc-approver"]

    direct = call("PUT", "/workspaces/far/serving-endpoints/far-split/config", editor, split(80, 20))
    assert direct.status_code == 403 and "change-requests" in direct.json()["message"], direct.text

    def propose(body: dict[str, Any]) -> dict[str, Any]:
        answer = call(
            "POST",
            "/change-requests",
            editor,
            {"endpoint_name": "far-split", "workspace": "far", "action": "update_config", "body": body},
        )
        assert answer.status_code == 200, answer.text
        return answer.json()

    change = propose(split(80, 20))
    assert change["status"] == "PENDING" and change["base_config_version"] == 1
    approved = call("POST", f"/change-requests/{change['id']}/approve", approver, {"comment": "go"})
    assert approved.status_code == 200 and approved.json()["status"] == "APPLIED", approved.text

    def serving_80_20() -> bool:
        detail = remote_sdk.serving_endpoints.get("far-split")
        if detail.config is None or detail.pending_config is not None:
            return False
        routes = {
            r.served_model_name or r.served_entity_name: r.traffic_percentage
            for r in detail.config.traffic_config.routes
        }
        ready = all(
            e.state and e.state.deployment and e.state.deployment.value == "DEPLOYMENT_READY"
            for e in detail.config.served_entities
        )
        return routes == {"demo-a": 80, "demo-b": 20} and ready

    wait_for("the remote serving 80/20", serving_80_20, timeout=150)

    # 2. A proposal, then the remote changed directly: approving is refused as stale.
    stale = propose(split(50, 50))
    assert stale["base_config_version"] == 2
    remote_sdk.serving_endpoints.update_config(
        "far-split",
        served_entities=[ServedEntityInput.from_dict(entity("demo-a")), ServedEntityInput.from_dict(entity("demo-b"))],
        traffic_config=TrafficConfig(
            routes=[
                Route(served_model_name="demo-a", traffic_percentage=60),
                Route(served_model_name="demo-b", traffic_percentage=40),
            ]
        ),
    )
    refused = call("POST", f"/change-requests/{stale['id']}/approve", approver, {})
    assert refused.status_code == 409 and refused.json()["error_code"] == "RESOURCE_CONFLICT", refused.text
    assert call("GET", f"/change-requests/{stale['id']}", approver).json()["status"] == "STALE"
    wait_for(
        "the remote's own change rolled out",
        lambda: remote_sdk.serving_endpoints.get("far-split").pending_config is None,
        timeout=120,
    )

    # 3. A model the remote does not have: the remote's refusal is on the request and in the audit.
    missing = {"served_entities": [{**entity("ghost"), "entity_name": "main.default.no_such_model"}]}
    failing = propose(missing)
    failed = call("POST", f"/change-requests/{failing['id']}/approve", approver, {})
    assert failed.status_code in (400, 404), failed.text
    shown = call("GET", f"/change-requests/{failing['id']}", approver).json()
    assert shown["status"] == "FAILED" and "no_such_model" in shown["error"] and "far" in shown["error"]
    events = call("GET", "/audit-events", as_admin).json()
    rows = [
        e
        for e in events.get("events", events.get("audit_events", []))
        if "remote_endpoint.update_config" in e["action"]
    ]
    failed_row = next(e for e in rows if e["action"].endswith(".failed"))
    text = json.dumps(failed_row)
    assert "no_such_model" in text and '"method": "PUT"' in text and REMOTE_TOKEN not in json.dumps(events)
    applied_row = next(e for e in rows if not e["action"].endswith(".failed"))
    assert '"traffic_percentage": 80' in json.dumps(applied_row) and '"response"' in json.dumps(applied_row)
