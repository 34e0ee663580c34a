"""Plaintext credentials of external models: kept in the managed scope for their endpoint alone.

Another manager of the endpoint may re-submit its config (the reference stays); nobody may copy
the reference to another endpoint; deleting the endpoint deletes the stored credential.
"""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from endpoints_app.models import AuditEvent, Endpoint, EndpointPermission, PermissionLevel, Role, Secret, UserProfile
from endpoints_app.services.tokens import create_token
from tests.test_external_models import URL, body_for, create, external

pytestmark = pytest.mark.django_db
PLAIN = "sk-plain-9f8e7d6c5b4a"


@pytest.fixture
def gpt(api) -> dict:
    entity = {
        "name": "gpt",
        "external_model": external(
            "openai",
            "openai_config",
            {"openai_api_base": "https://llm.example.com/v1", "openai_api_key_plaintext": PLAIN},
        ),
    }
    return create(api, body_for("gpt", entity))


@pytest.fixture
def bob(django_user_model) -> APIClient:
    """An editor who manages `gpt` but did not store its key."""
    user = django_user_model.objects.create_user("bob", "bob@example.com", "pw-123456789")
    UserProfile.objects.create(user=user, role=Role.EDITOR)
    EndpointPermission.objects.create(
        endpoint=Endpoint.objects.get(name="gpt"), user=user, level=PermissionLevel.CAN_MANAGE
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {create_token(user=user)[1]}")
    return client


def reference_of(body: dict) -> str:
    return body["config"]["served_entities"][0]["external_model"]["openai_config"]["openai_api_key"]


def test_another_manager_may_resubmit_the_config_with_the_stored_credential(api, gpt, bob):
    current = bob.get(f"{URL}/gpt").json()
    reference = reference_of(current)
    assert reference.startswith("{{secrets/modelfleet-managed/") and PLAIN not in str(current)
    entity = current["config"]["served_entities"][0]
    resubmit = {"served_entities": [{"name": "gpt", "external_model": entity["external_model"]}]}
    response = bob.put(f"{URL}/gpt/config", resubmit, format="json")
    assert response.status_code == 200, response.content
    assert reference_of(bob.get(f"{URL}/gpt").json()) == reference


def test_the_stored_credential_cannot_be_sent_to_another_base_url(api, gpt, bob):
    entity = bob.get(f"{URL}/gpt").json()["config"]["served_entities"][0]
    entity["external_model"]["openai_config"]["openai_api_base"] = "https://collector.example/v1"
    response = bob.put(f"{URL}/gpt/config", {"served_entities": [entity]}, format="json")
    assert response.status_code == 404  # the managed scope is not bob's to read
    assert Endpoint.objects.get(name="gpt").config_versions.count() == 1


def test_nobody_else_may_copy_the_reference_to_another_endpoint(api, gpt, bob):
    entity = bob.get(f"{URL}/gpt").json()["config"]["served_entities"][0]
    response = bob.post(
        URL, body_for("copycat", {"name": "x", "external_model": entity["external_model"]}), format="json"
    )
    assert response.status_code == 404 and not Endpoint.objects.filter(name="copycat").exists()


def test_deleting_the_endpoint_deletes_its_stored_credential(api, gpt):
    assert Secret.objects.filter(scope__name="modelfleet-managed").count() == 1
    assert api.delete(f"{URL}/gpt").status_code == 200
    assert not Secret.objects.filter(scope__name="modelfleet-managed").exists()
    event = AuditEvent.objects.filter(action="secret.delete").get()
    assert event.object_name == "modelfleet-managed" and PLAIN not in str(event.before)


def test_deleting_leaves_credentials_in_users_scopes_alone(api, gpt, user):
    from tests.test_external_models import store_secret

    reference = store_secret(user, "team", "openai", PLAIN)
    entity = {
        "name": "gpt2",
        "external_model": external(
            "openai", "openai_config", {"openai_api_base": "https://llm.example.com/v1", "openai_api_key": reference}
        ),
    }
    create(api, body_for("gpt2", entity))
    assert api.delete(f"{URL}/gpt2").status_code == 200
    assert Secret.objects.filter(scope__name="team", key="openai").exists()
