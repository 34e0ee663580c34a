"""SCIM's ServicePrincipals resource (``/api/2.0/preview/scim/v2/ServicePrincipals``), driven by the
databricks-sdk's ``w.service_principals`` against a live server: create, get, list with a
filter, update, patch (deactivation ends the principal's tokens at once), delete; an identity
provider's own application id; audit rows; and the errors SCIM clients read.
"""

from __future__ import annotations

import uuid

import pytest
import requests
from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import NotFound
from databricks.sdk.service.iam import ComplexValue, Patch, PatchOp, PatchSchema

from endpoints_app.models import AuditEvent, Role, ServicePrincipal, ServicePrincipalSecret, UserProfile
from endpoints_app.services import service_principals as principal_services
from endpoints_app.services.tokens import create_token
from tests.test_scim import admin_token, scim, w  # noqa: F401 - the SCIM tests' fixtures

pytestmark = pytest.mark.django_db(transaction=True)


def sign_in(live_server, application_id: str, secret: str) -> requests.Response:  # type: ignore[no-untyped-def]
    return requests.post(
        f"{live_server.url}/oidc/v1/token",
        data={"grant_type": "client_credentials", "scope": "all-apis"},
        auth=(application_id, secret),
        timeout=30,
    )


def test_the_sdk_creates_finds_updates_deactivates_and_deletes_service_principals(
    w: WorkspaceClient,  # noqa: F811 - the fixture
    live_server,
    admin_token: str,  # noqa: F811 - the fixture
):
    created = w.service_principals.create(display_name="nightly-batch", active=True)
    assert created.id and uuid.UUID(created.application_id) and created.display_name == "nightly-batch"
    assert created.active is True
    principal = ServicePrincipal.objects.get(application_id=created.application_id)
    assert str(principal.user_id) == created.id
    assert not principal.secrets.exists()  # provisioned without a secret: an admin makes one

    assert w.service_principals.get(created.id).application_id == created.application_id
    found = list(w.service_principals.list(filter='displayName eq "nightly-batch"'))
    assert [p.id for p in found] == [created.id]
    by_app = list(w.service_principals.list(filter=f'applicationId eq "{created.application_id}"'))
    assert [p.display_name for p in by_app] == ["nightly-batch"]
    assert list(w.service_principals.list(filter='displayName eq "nobody"')) == []
    assert [u.user_name for u in w.users.list()] == ["scim-admin"]  # not a user

    w.service_principals.update(created.id, display_name="nightly", application_id=created.application_id)
    assert w.service_principals.get(created.id).display_name == "nightly"

    # An admin gives it a secret; it signs in; deactivation over SCIM ends that token at once.
    secret = principal_services.create_secret(actor=principal.user, principal=principal)[1]
    token = sign_in(live_server, created.application_id, secret).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert requests.get(f"{live_server.url}/api/2.0/serving-endpoints", headers=headers, timeout=30).status_code == 200
    w.service_principals.patch(
        created.id,
        operations=[Patch(op=PatchOp.REPLACE, path="active", value="false")],  # the SDK drops a False value
        schemas=[PatchSchema.URN_IETF_PARAMS_SCIM_API_MESSAGES_2_0_PATCH_OP],
    )
    assert w.service_principals.get(created.id).active is False
    assert requests.get(f"{live_server.url}/api/2.0/serving-endpoints", headers=headers, timeout=30).status_code == 401
    assert sign_in(live_server, created.application_id, secret).status_code == 401
    w.service_principals.patch(created.id, operations=[Patch(op=PatchOp.REPLACE, path="active", value=True)])
    assert sign_in(live_server, created.application_id, secret).status_code == 200  # its secret is back

    w.service_principals.delete(created.id)
    with pytest.raises(NotFound):
        w.service_principals.get(created.id)
    assert not ServicePrincipal.objects.exists() and not ServicePrincipalSecret.objects.exists()
    actions = [e.action for e in AuditEvent.objects.filter(object_id=created.application_id).order_by("id")]
    assert actions[0] == "service_principal.create" and actions[-1] == "service_principal.delete"
    assert actions.count("service_principal.update") == 3  # rename, deactivate, reactivate


def test_an_identity_providers_application_id_is_kept_and_never_changed(
    live_server,
    admin_token: str,  # noqa: F811 - the fixture
):
    entra = str(uuid.uuid4())
    made = scim(
        live_server, admin_token, "POST", "/ServicePrincipals", json={"displayName": "etl", "applicationId": entra}
    )
    assert made.status_code == 201, made.text
    assert made.json()["applicationId"] == entra and made.headers["Location"].endswith(
        f"/ServicePrincipals/{made.json()['id']}"
    )
    again = scim(
        live_server, admin_token, "POST", "/ServicePrincipals", json={"displayName": "x", "applicationId": entra}
    )
    assert again.status_code == 409 and again.json()["scimType"] == "uniqueness"
    bad = scim(
        live_server, admin_token, "POST", "/ServicePrincipals", json={"displayName": "x", "applicationId": "nope"}
    )
    assert bad.status_code == 400 and "UUID" in bad.json()["detail"]
    nameless = scim(live_server, admin_token, "POST", "/ServicePrincipals", json={"active": True})
    assert nameless.status_code == 400 and "displayName" in nameless.json()["detail"]
    path = f"/ServicePrincipals/{made.json()['id']}"
    moved = scim(live_server, admin_token, "PUT", path, json={"displayName": "etl", "applicationId": str(uuid.uuid4())})
    assert moved.status_code == 400 and moved.json()["scimType"] == "mutability"
    patched = {"Operations": [{"op": "replace", "path": "applicationId", "value": str(uuid.uuid4())}]}
    assert scim(live_server, admin_token, "PATCH", path, json=patched).json()["scimType"] == "mutability"
    assert ServicePrincipal.objects.get().application_id == uuid.UUID(entra)
    # A user's id is no service principal's, and the other way round.
    admin_id = scim(live_server, admin_token, "GET", "/Me").json()["id"]
    assert scim(live_server, admin_token, "GET", f"/ServicePrincipals/{admin_id}").status_code == 404
    assert scim(live_server, admin_token, "DELETE", f"/ServicePrincipals/{admin_id}").status_code == 404
    assert scim(live_server, admin_token, "GET", f"/Users/{made.json()['id']}").status_code == 404
    assert scim(live_server, admin_token, "GET", "/ServicePrincipals/not-a-number").status_code == 404


def test_only_admins_provision_service_principals(live_server, django_user_model, admin_token):  # noqa: F811
    editor = django_user_model.objects.create_user("ed", "ed@example.com", "pw-123456789")
    UserProfile.objects.create(user=editor, role=Role.EDITOR)
    token = create_token(user=editor)[1]
    for method, path, body in (
        ("GET", "/ServicePrincipals", None),
        ("POST", "/ServicePrincipals", {"displayName": "sneaky"}),
    ):
        answer = scim(live_server, token, method, path, json=body)
        assert answer.status_code == 403 and answer.json()["status"] == "403", answer.text
    assert not ServicePrincipal.objects.exists()
    types = scim(live_server, admin_token, "GET", "/ResourceTypes/ServicePrincipal").json()
    assert types["endpoint"] == "/ServicePrincipals"
    schema = scim(
        live_server, admin_token, "GET", "/Schemas/urn:ietf:params:scim:schemas:core:2.0:ServicePrincipal"
    ).json()
    assert {a["name"] for a in schema["attributes"]} >= {"applicationId", "displayName", "active"}


def test_groups_hold_service_principals_shown_with_their_type(
    w: WorkspaceClient,  # noqa: F811 - the fixture
    live_server,
    admin_token: str,  # noqa: F811 - the fixture
    django_user_model,
):
    robot = w.service_principals.create(display_name="robot")
    person = django_user_model.objects.create_user("ada", "ada@example.com", "pw-123456789")
    group = w.groups.create(
        display_name="automation",
        members=[ComplexValue(value=robot.id, type="ServicePrincipal"), ComplexValue(value=str(person.pk))],
    )
    members = {m.value: m for m in w.groups.get(group.id).members}
    assert members[robot.id].type == "ServicePrincipal" and members[robot.id].ref.endswith(
        f"/ServicePrincipals/{robot.id}"
    )
    assert members[str(person.pk)].type == "User" and members[str(person.pk)].ref.endswith(f"/Users/{person.pk}")
    assert [g.display for g in w.service_principals.get(robot.id).groups] == ["automation"]
    # A member's type must be what it is.
    for value, kind in ((str(person.pk), "ServicePrincipal"), (robot.id, "User")):
        wrong = {"displayName": f"wrong-{kind}", "members": [{"value": value, "type": kind}]}
        refused = scim(live_server, admin_token, "POST", "/Groups", json=wrong)
        assert refused.status_code == 400 and f"is not a {kind}" in refused.json()["detail"]
