"""Governance holes (issue 11, item 5), each attacked the way an editor would:

- an approval policy by tag cannot be escaped by removing the tag, changing freely and adding it
  back; the tag change itself is proposable and applied on approval;
- a change request's secret references are checked against its author at approval, not against
  the approver who may read more;
- ``environment_vars`` refuse loader, interpreter, proxy and control-plane variables, need READ on
  a ``{{secrets/…}}`` value, and never show a plain value (API, pages, change requests, audit),
  while the dashboard's edit form still keeps a value it was not shown;
- the change-request diff and the audit snapshot cover the whole config.
"""

from __future__ import annotations

import html
import json

import pytest
from rest_framework.test import APIClient

from endpoints_app.cli.main import build_parser
from endpoints_app.models import (
    ApprovalPolicy,
    AuditEvent,
    ChangeRequest,
    Endpoint,
    EndpointPermission,
    PermissionLevel,
    Role,
    UserProfile,
)
from endpoints_app.services import secrets
from endpoints_app.services.tokens import create_token
from tests.conftest import endpoint_body
from tests.test_api_endpoints import create, mark_ready
from tests.test_dashboard_edit import etag_in, form_data

pytestmark = pytest.mark.django_db
URL = "/api/2.0/serving-endpoints"
CR = "/api/2.0/modelfleet/change-requests"
PLAIN = "plain-value-7c1e9a"  # a plain environment value nobody may read back


def person(django_user_model, name: str, role: str) -> tuple:
    user = django_user_model.objects.create_user(name, f"{name}@example.com", f"pw-{name}-long-enough-1")
    UserProfile.objects.create(user=user, role=role)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {create_token(user=user)[1]}")
    return user, client


@pytest.fixture
def paula(django_user_model) -> tuple:
    """An approver."""
    return person(django_user_model, "paula", Role.APPROVER)


@pytest.fixture
def prod(api, registered_models) -> Endpoint:
    """alice's endpoint tagged env=prod, which a policy covers."""
    body = endpoint_body("prod-model", (registered_models["iris"], "1"))
    body["tags"] = [{"key": "env", "value": "prod"}, {"key": "team", "value": "ml"}]
    create(api, body)
    mark_ready("prod-model")
    ApprovalPolicy.objects.create(tag_key="env", tag_value="prod")
    return Endpoint.objects.get(name="prod-model")


def tags_of(name: str) -> dict[str, str]:
    return {t.key: t.value for t in Endpoint.objects.get(name=name).tags.all()}


def with_env(registered_models, env: dict, version: str = "1", **fields) -> dict:
    config = endpoint_body("x", (registered_models["iris"], version))["config"]
    config["served_entities"][0].update({"name": "iris", "environment_vars": env, **fields})
    return config


# --- approval policies by tag -----------------------------------------------------------------


def test_an_editor_cannot_remove_the_policy_tag_to_escape_approval(api, prod):
    response = api.patch(f"{URL}/prod-model/tags", {"delete_tags": ["env"]}, format="json")
    assert response.status_code == 403 and response.json()["error_code"] == "PERMISSION_DENIED"
    assert "need approval" in response.json()["message"] and "--action tags" in response.json()["message"]
    # Changing the value is removing the matched tag too.
    changed = api.patch(f"{URL}/prod-model/tags", {"add_tags": [{"key": "env", "value": "dev"}]}, format="json")
    assert changed.status_code == 403
    assert tags_of("prod-model") == {"env": "prod", "team": "ml"}
    assert not AuditEvent.objects.filter(action="endpoint.tags").exists()


def test_adding_a_policy_tag_needs_approval_and_other_tags_of_uncovered_endpoints_do_not(api, registered_models):
    ApprovalPolicy.objects.create(tag_key="env", tag_value="prod")
    create(api, endpoint_body("dev-model", (registered_models["iris"], "1")))
    free = api.patch(f"{URL}/dev-model/tags", {"add_tags": [{"key": "owner", "value": "me"}]}, format="json")
    assert free.status_code == 200, free.content
    guarded = api.patch(f"{URL}/dev-model/tags", {"add_tags": [{"key": "env", "value": "prod"}]}, format="json")
    assert guarded.status_code == 403
    assert tags_of("dev-model") == {"owner": "me"}


def test_a_tag_change_is_proposed_and_applied_on_approval(api, prod, paula, client):
    proposed = api.post(
        CR, {"endpoint_name": "prod-model", "action": "tags", "body": {"delete_tags": ["env"]}}, format="json"
    )
    assert proposed.status_code == 200, proposed.content
    change = proposed.json()
    assert change["action"] == "tags" and change["status"] == "PENDING"
    assert '-    "env": "prod"' in change["diff"]
    assert tags_of("prod-model")["env"] == "prod"  # nothing changes before approval
    client.force_login(paula[0])  # the approver reads it on the change request's page
    page = client.get(f"/change-requests/{change['id']}/")
    assert page.status_code == 200 and '-    "env": "prod"' in html.unescape(page.content.decode())  # the diff

    approved = paula[1].post(f"{CR}/{change['id']}/approve", {}, format="json")
    assert approved.status_code == 200 and approved.json()["status"] == "APPLIED", approved.content
    assert tags_of("prod-model") == {"team": "ml"}
    event = AuditEvent.objects.get(action="endpoint.tags")
    assert event.actor_name == "paula" and event.before["env"] == "prod" and "env" not in event.after


def test_a_bad_tags_proposal_is_refused_up_front(api, prod):
    response = api.post(
        CR, {"endpoint_name": "prod-model", "action": "tags", "body": {"delete_tags": "env"}}, format="json"
    )
    assert response.status_code == 400 and response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert not ChangeRequest.objects.exists()


def test_the_cli_proposes_a_tags_change():
    args, _ = build_parser().parse_known_args(
        ["change-requests", "propose", "prod-model", "--action", "tags", "--json", '{"delete_tags": ["env"]}']
    )
    assert args.action == "tags"


# --- secrets at approval: the proposer's rights -----------------------------------------------


@pytest.fixture
def vault(paula, user) -> str:
    """A secret paula stored and alice may READ, for now; its reference."""
    secrets.create_scope(actor=paula[0], scope="vault")
    secrets.put_secret(actor=paula[0], scope="vault", key="token", string_value="s3cr3t-token")
    secrets.put_acl(actor=paula[0], scope="vault", principal="alice", permission="READ")
    return "{{secrets/vault/token}}"


def test_approval_checks_the_proposers_secret_rights_not_the_approvers(api, prod, paula, vault, registered_models):
    body = with_env(registered_models, {"API_TOKEN": vault})
    change = api.post(CR, {"endpoint_name": "prod-model", "action": "update_config", "body": body}, format="json")
    assert change.status_code == 200, change.content
    # alice loses READ; paula, who approves, still has it (she owns the scope).
    secrets.delete_acl(actor=paula[0], scope="vault", principal="alice")
    response = paula[1].post(f"{CR}/{change.json()['id']}/approve", {}, format="json")
    assert response.status_code == 403 and response.json()["error_code"] == "PERMISSION_DENIED", response.content
    assert ChangeRequest.objects.get().status == "FAILED"
    assert Endpoint.objects.get(name="prod-model").config_versions.count() == 1


def test_a_proposal_with_a_secret_the_proposer_cannot_read_is_refused_up_front(api, prod, paula, registered_models):
    secrets.create_scope(actor=paula[0], scope="paulas")
    secrets.put_secret(actor=paula[0], scope="paulas", key="k", string_value="v")
    body = with_env(registered_models, {"API_TOKEN": "{{secrets/paulas/k}}"})
    response = api.post(CR, {"endpoint_name": "prod-model", "action": "update_config", "body": body}, format="json")
    assert response.status_code == 403 and not ChangeRequest.objects.exists()


def test_approval_applies_a_secret_the_proposer_may_read(api, prod, paula, vault, registered_models):
    body = with_env(registered_models, {"API_TOKEN": vault})
    change = api.post(CR, {"endpoint_name": "prod-model", "action": "update_config", "body": body}, format="json")
    response = paula[1].post(f"{CR}/{change.json()['id']}/approve", {}, format="json")
    assert response.status_code == 200 and response.json()["status"] == "APPLIED", response.content


# --- environment_vars: names ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "ld_preload",
        "DYLD_INSERT_LIBRARIES",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "PYTHONHOME",
        "PYTHONWARNINGS",
        "HTTP_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "no_proxy",
        "MODELFLEET_SECRET_KEY",
        "DJANGO_SETTINGS_MODULE",
        "DATABASE_URL",
        "REDIS_URL",
        "PATH",
        "HOME",
        "TMPDIR",
        "MLFLOW_TRACKING_URI",
        "GLIBC_TUNABLES",
        "BASH_ENV",
        "GUNICORN_CMD_ARGS",
        "SSL_CERT_FILE",
    ],
)
def test_dangerous_environment_variables_are_refused(api, registered_models, name):
    body = endpoint_body("envy", (registered_models["iris"], "1"))
    body["config"]["served_entities"][0]["environment_vars"] = {"MODE": "fast", name: "/tmp/evil"}
    response = api.post(URL, body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE" and f"'{name}'" in response.json()["message"]
    assert not Endpoint.objects.filter(name="envy").exists()


@pytest.mark.parametrize(
    "value, words",
    [
        ("[REDACTED]", "send the value itself"),
        ("prefix-{{secrets/vault/token}}", "whole value"),
        ("{{ SECRETS/vault/token }}x", "whole value"),
        ("x" * 16385, "longer than"),
    ],
)
def test_values_that_hide_a_reference_or_a_placeholder_are_refused(api, registered_models, value, words):
    body = endpoint_body("envy", (registered_models["iris"], "1"))
    body["config"]["served_entities"][0]["environment_vars"] = {"MODE": value}
    response = api.post(URL, body, format="json")
    assert response.status_code == 400 and words in response.json()["message"], response.content


def test_ordinary_variables_are_kept(api, registered_models):
    body = endpoint_body("envy", (registered_models["iris"], "1"))
    body["config"]["served_entities"][0]["environment_vars"] = {"MODE": "fast", "OMP_NUM_THREADS": "2"}
    create(api, body)
    entity = Endpoint.objects.get(name="envy").pending_config.served_entities.get()
    assert entity.environment_vars == {"MODE": "fast", "OMP_NUM_THREADS": "2"}


# --- environment_vars: secret references ------------------------------------------------------


def test_a_secret_reference_needs_read_at_config_time(api, registered_models, paula):
    secrets.create_scope(actor=paula[0], scope="paulas")
    secrets.put_secret(actor=paula[0], scope="paulas", key="k", string_value="v")
    for reference, status in (("{{secrets/paulas/k}}", 403), ("{{secrets/nowhere/k}}", 404)):
        body = endpoint_body("envy", (registered_models["iris"], "1"))
        body["config"]["served_entities"][0]["environment_vars"] = {"TOKEN": reference}
        response = api.post(URL, body, format="json")
        assert response.status_code == status, response.content
    assert not Endpoint.objects.filter(name="envy").exists()


def test_another_manager_keeps_a_reference_on_the_same_model_but_cannot_move_it(
    api, registered_models, user, django_user_model
):
    secrets.create_scope(actor=user, scope="alices")
    secrets.put_secret(actor=user, scope="alices", key="k", string_value="alice-only")
    body = endpoint_body("envy", (registered_models["iris"], "1"))
    body["config"]["served_entities"][0].update({"name": "iris", "environment_vars": {"TOKEN": "{{secrets/alices/k}}"}})
    create(api, body)
    mark_ready("envy")
    bob_user, bob = person(django_user_model, "bob", Role.EDITOR)
    EndpointPermission.objects.create(
        endpoint=Endpoint.objects.get(name="envy"), user=bob_user, level=PermissionLevel.CAN_MANAGE
    )
    same = with_env(registered_models, {"TOKEN": "{{secrets/alices/k}}"}, scale_to_zero_enabled=True)
    assert bob.put(f"{URL}/envy/config", same, format="json").status_code == 200
    mark_ready("envy")
    # Other model code could return the value: giving it the reference needs READ.
    moved = with_env(registered_models, {"TOKEN": "{{secrets/alices/k}}"}, version="2")
    assert bob.put(f"{URL}/envy/config", moved, format="json").status_code == 403


# --- environment_vars: redaction --------------------------------------------------------------


@pytest.fixture
def envy(api, registered_models, user) -> Endpoint:
    secrets.create_scope(actor=user, scope="alices")
    secrets.put_secret(actor=user, scope="alices", key="k", string_value="alice-only")
    body = endpoint_body("envy", (registered_models["iris"], "1"))
    body["config"]["served_entities"][0].update(
        {"name": "iris", "environment_vars": {"MODE": PLAIN, "TOKEN": "{{secrets/alices/k}}"}}
    )
    create(api, body)
    mark_ready("envy")
    return Endpoint.objects.get(name="envy")


def test_environment_values_are_redacted_for_everyone(api, envy, client, user, django_user_model):
    viewer_user, viewer = person(django_user_model, "vic", Role.VIEWER)
    for caller in (api, viewer):
        detail = caller.get(f"{URL}/envy")
        assert detail.status_code == 200
        [entity] = detail.json()["config"]["served_entities"]
        assert entity["environment_vars"] == {"MODE": "[REDACTED]", "TOKEN": "{{secrets/alices/k}}"}
        assert PLAIN not in detail.content.decode()
        assert PLAIN not in caller.get(URL).content.decode()
    client.force_login(user)
    for page in ("/endpoints/envy/", "/endpoints/envy/edit"):
        response = client.get(page)
        assert response.status_code == 200 and PLAIN not in response.content.decode()
    assert "[REDACTED]" in client.get("/endpoints/envy/edit").content.decode()
    client.force_login(viewer_user)
    assert PLAIN not in client.get("/endpoints/envy/").content.decode()
    assert not [e for e in AuditEvent.objects.all() if PLAIN in json.dumps([e.before, e.after])]


def test_the_edit_form_keeps_a_value_it_did_not_show(client, user, envy, registered_models):
    client.force_login(user)
    etag = etag_in(client.get("/endpoints/envy/edit").content.decode())
    row = {
        "entity": f"{registered_models['iris']}/1",
        "name": "iris",
        "workload_size": "Small",
        "workload_type": "CPU",
        "scale_to_zero": "on",  # the change being saved
        "traffic": "100",
        "env_key": ["MODE", "TOKEN", "EXTRA"],
        "env_value": ["[REDACTED]", "{{secrets/alices/k}}", "new"],
    }
    response = client.post("/endpoints/envy/edit", form_data(row, etag=etag, initial=1))
    assert response.status_code == 302, response.content.decode()[-1500:]
    entity = Endpoint.objects.get(name="envy").pending_config.served_entities.get()
    assert entity.scale_to_zero_enabled
    assert entity.environment_vars == {"MODE": PLAIN, "TOKEN": "{{secrets/alices/k}}", "EXTRA": "new"}


def test_a_proposal_does_not_show_plain_environment_values(api, envy, registered_models):
    ApprovalPolicy.objects.create(endpoint_name="envy")
    body = with_env(registered_models, {"MODE": "another-plain-value"})
    response = api.post(CR, {"endpoint_name": "envy", "action": "update_config", "body": body}, format="json")
    assert response.status_code == 200, response.content
    shown = json.dumps(response.json())
    assert "another-plain-value" not in shown and PLAIN not in shown and '"MODE"' in response.json()["diff"]
    assert "another-plain-value" not in api.get(f"{CR}/{response.json()['id']}").content.decode()
    assert not [e for e in AuditEvent.objects.all() if "another-plain-value" in json.dumps([e.before, e.after])]


# --- the diff and the audit snapshot cover the whole config -----------------------------------


def test_the_diff_covers_environment_capture_concurrency_and_workload(api, envy, registered_models):
    ApprovalPolicy.objects.create(endpoint_name="envy")
    config = with_env(
        registered_models,
        {"MODE": "changed", "TOKEN": "{{secrets/alices/k}}", "NEW_VAR": "x"},
        workload_type="GPU_SMALL",
    )
    entity = config["served_entities"][0]
    del entity["workload_size"]
    entity.update(min_provisioned_concurrency=0, max_provisioned_concurrency=4)
    config["auto_capture_config"] = {"catalog_name": "main", "schema_name": "logs", "enabled": True}
    change = api.post(CR, {"endpoint_name": "envy", "action": "update_config", "body": config}, format="json")
    assert change.status_code == 200, change.content
    diff = change.json()["diff"]
    removed = [line for line in diff.splitlines() if line.startswith("-")]
    added = [line for line in diff.splitlines() if line.startswith("+")]
    assert any('"MODE": "[REDACTED' in line for line in removed) and any('"MODE": "[REDACTED' in line for line in added)
    assert any('"NEW_VAR"' in line for line in added)
    assert any('"workload_type": "GPU_SMALL"' in line for line in added)
    assert any('"max_provisioned_concurrency": 4' in line for line in added)
    assert any('"schema_name": "logs"' in line for line in added)
    assert "changed" not in diff and PLAIN not in diff


def test_the_audit_snapshot_covers_the_whole_config(api, envy, registered_models):
    config = with_env(registered_models, {"MODE": "changed", "TOKEN": "{{secrets/alices/k}}"})
    entity = config["served_entities"][0]
    del entity["workload_size"]
    entity.update(min_provisioned_concurrency=0, max_provisioned_concurrency=4)
    config["auto_capture_config"] = {"catalog_name": "main", "schema_name": "logs", "enabled": True}
    assert api.put(f"{URL}/envy/config", config, format="json").status_code == 200
    event = AuditEvent.objects.get(action="endpoint.update_config")
    before = event.before["config"]["served_entities"][0]
    after = event.after["pending_config"]["served_entities"][0]
    assert set(before["environment_vars"]) == set(after["environment_vars"]) == {"MODE", "TOKEN"}
    assert after["environment_vars"]["TOKEN"] == "{{secrets/alices/k}}"
    assert before["environment_vars"]["MODE"] != after["environment_vars"]["MODE"]  # a change shows…
    assert "changed" not in json.dumps(event.after) and PLAIN not in json.dumps(event.before)  # …its value does not
    assert after["max_provisioned_concurrency"] == 4 and before["max_provisioned_concurrency"] is None
    assert event.after["pending_config"]["auto_capture_config"]["schema_name"] == "logs"
    assert event.before["config"]["auto_capture_config"] is None


def test_a_config_read_from_the_api_can_be_put_back_unchanged(api, envy, registered_models):
    # Read-modify-write (Terraform, the SDK): the [REDACTED] a GET shows keeps the stored value.
    [entity] = api.get(f"{URL}/envy").json()["config"]["served_entities"]
    body = with_env(registered_models, entity["environment_vars"], scale_to_zero_enabled=False)
    response = api.put(f"{URL}/envy/config", body, format="json")
    assert response.status_code == 200, response.content
    stored = Endpoint.objects.get(name="envy").pending_config.served_entities.get()
    assert stored.environment_vars == {"MODE": PLAIN, "TOKEN": "{{secrets/alices/k}}"}


def test_a_redacted_value_does_not_move_to_another_model_version(api, envy, registered_models):
    body = with_env(registered_models, {"MODE": "[REDACTED]"}, version="2")
    response = api.put(f"{URL}/envy/config", body, format="json")
    assert response.status_code == 400 and "send the value itself" in response.json()["message"], response.content


def test_a_create_proposal_diff_does_not_show_plain_environment_values(api, registered_models):
    ApprovalPolicy.objects.create(endpoint_name="fresh")
    body = endpoint_body("fresh", (registered_models["iris"], "1"))
    body["config"]["served_entities"][0]["environment_vars"] = {"MODE": "create-time-plain-value"}
    response = api.post(CR, {"endpoint_name": "fresh", "action": "create", "body": body}, format="json")
    assert response.status_code == 200, response.content
    assert '"MODE"' in response.json()["diff"] and "create-time-plain-value" not in json.dumps(response.json())
