"""Creating, editing and deleting endpoints from the dashboard (the forms without JavaScript): the
same services as the API, change requests when a policy says so, errors next to their field, and
no lost updates."""

from __future__ import annotations

import html as html_lib
import re

import pytest

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
from endpoints_app.services import checks
from endpoints_app.services import endpoints as endpoint_services
from tests.conftest import endpoint_body
from tests.test_api_endpoints import create, mark_ready

pytestmark = pytest.mark.django_db
IRIS = "main.default.iris"


def make_user(django_user_model, name: str, role: str | None):
    user = django_user_model.objects.create_user(name, f"{name}@example.com", f"pw-{name}-123")
    if role is not None:
        UserProfile.objects.create(user=user, role=role)
    return user


def entity(version: str, traffic: int | str | None = None, **fields) -> dict:
    row = {"entity": f"{IRIS}/{version}", "workload_size": "Small", "workload_type": "CPU"}
    if traffic is not None:
        row["traffic"] = str(traffic)
    row.update(fields)
    return row


def form_data(
    *entities: dict, name: str | None = None, etag: str | None = None, initial: int = 0, action: str = "save"
):
    data: dict = {
        "entities-TOTAL_FORMS": str(len(entities)),
        "entities-INITIAL_FORMS": str(initial),
        "entities-MIN_NUM_FORMS": "0",
        "entities-MAX_NUM_FORMS": "1000",
        "edit_action": action,
    }
    if name is not None:
        data["name"] = name
    if etag is not None:
        data["etag"] = etag
    for i, row in enumerate(entities):
        for key, value in row.items():
            data[f"entities-{i}-{key}"] = value
    return data


def errors_at(html: str, element_id: str) -> str:
    """The text of the error list with this id (the one aria-describedby points the field at)."""
    match = re.search(rf'id="{re.escape(element_id)}"[^>]*>(.*?)</ul>', html, re.S)
    assert match, f"no error list #{element_id} in the page"
    return html_lib.unescape(re.sub(r"<[^>]+>", "", match.group(1)))


def etag_in(html: str) -> str:
    match = re.search(r'name="etag" value="([^"]*)"', html)
    assert match
    return match.group(1).replace("&quot;", '"')


@pytest.fixture
def ab(api, registered_models) -> Endpoint:
    """alice's endpoint serving iris v1 and v2 50/50, deployed."""
    create(api, endpoint_body("ab", (IRIS, "1"), (IRIS, "2"), routes=[("iris-1", 50), ("iris-2", 50)]))
    mark_ready("ab")
    return Endpoint.objects.get(name="ab")


# --- create ------------------------------------------------------------------------------------


def test_the_create_form_offers_every_registered_model_version(client, user, registered_models):
    client.force_login(user)
    response = client.get("/endpoints/new")
    assert response.status_code == 200
    html = response.content.decode()
    assert f'<optgroup label="{IRIS}">' in html
    assert f'value="{IRIS}/2">{IRIS} v2</option>' in html and f"{IRIS} v1</option>" in html
    assert 'name="entities-0-traffic"' in html and "js/traffic-split.js" in html and "css/forms.css" in html


def test_an_editor_creates_an_endpoint_with_two_served_entities_and_a_split(client, user, registered_models):
    client.force_login(user)
    data = form_data(
        entity("1", 70, env_key=["MODE", ""], env_value=["fast", ""]),
        entity("2", 30, workload_size="Medium", scale_to_zero="on"),
        name="ab-form",
    )
    response = client.post("/endpoints/new", data)
    assert response.status_code == 302 and response["Location"] == "/endpoints/ab-form/"
    endpoint = Endpoint.objects.get(name="ab-form")
    entities = list(endpoint.pending_config.served_entities.order_by("position"))
    assert [(e.name, e.entity_version, e.workload_size, e.scale_to_zero_enabled) for e in entities] == [
        ("iris-1", "1", "Small", False),
        ("iris-2", "2", "Medium", True),
    ]
    assert entities[0].environment_vars == {"MODE": "fast"}
    assert [
        (r["served_model_name"], r["traffic_percentage"]) for r in endpoint.pending_config.traffic_config["routes"]
    ] == [
        ("iris-1", 70),
        ("iris-2", 30),
    ]
    assert EndpointPermission.objects.filter(endpoint=endpoint, user=user, level=PermissionLevel.CAN_MANAGE).exists()
    assert AuditEvent.objects.filter(action="endpoint.create", object_name="ab-form", actor=user).exists()


def test_a_viewer_may_not_open_the_create_form(client, django_user_model, registered_models):
    client.force_login(make_user(django_user_model, "vera", Role.VIEWER))
    assert client.get("/endpoints/new").status_code == 403
    assert client.post("/endpoints/new", form_data(entity("1", 100), name="nope")).status_code == 403
    assert not Endpoint.objects.exists()


def test_add_served_entity_without_javascript_renders_the_form_with_another_row(client, user, registered_models):
    client.force_login(user)
    response = client.post("/endpoints/new", form_data(entity("1", 100), name="grow", action="add_entity"))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'name="entities-TOTAL_FORMS" value="2"' in html and 'name="entities-1-entity"' in html
    assert not Endpoint.objects.exists()


def test_a_bad_variable_name_is_shown_next_to_that_entitys_variables(client, user, registered_models):
    client.force_login(user)
    data = form_data(entity("1", 50), entity("2", 50, env_key=["bad-key"], env_value=["x"]), name="env-bad")
    response = client.post("/endpoints/new", data)
    assert response.status_code == 400
    html = response.content.decode()
    assert "'bad-key' is not a valid variable name" in errors_at(html, "id_entities-1-env_error")
    assert "id_entities-0-env_error" not in html
    assert 'value="bad-key"' in html  # what the user typed is kept
    assert not Endpoint.objects.exists()


def test_shares_that_do_not_sum_to_100_are_refused_next_to_the_split(client, user, registered_models):
    client.force_login(user)
    response = client.post("/endpoints/new", form_data(entity("1", 60), entity("2", 30), name="short"))
    assert response.status_code == 400
    assert "must sum to 100, got 90" in errors_at(response.content.decode(), "split_error")
    assert not Endpoint.objects.exists()


def test_a_share_out_of_range_is_shown_next_to_that_share(client, user, registered_models):
    client.force_login(user)
    response = client.post("/endpoints/new", form_data(entity("1", 120), entity("2", -20), name="wild"))
    assert response.status_code == 400
    assert "must be between 0 and 100, got 120" in errors_at(response.content.decode(), "id_entities-0-traffic_error")


def test_an_invalid_or_taken_name_is_shown_next_to_the_name_field(client, user, ab):
    client.force_login(user)
    response = client.post("/endpoints/new", form_data(entity("1", 100), name="bad name!"))
    assert response.status_code == 400
    assert "alphanumeric characters, dashes and underscores" in errors_at(response.content.decode(), "id_name_error")
    response = client.post("/endpoints/new", form_data(entity("1", 100), name="ab"))
    assert response.status_code == 409
    assert "already exists" in errors_at(response.content.decode(), "id_name_error")


def test_creating_an_endpoint_a_policy_covers_proposes_it(client, user, registered_models):
    ApprovalPolicy.objects.create(endpoint_name="guarded")
    client.force_login(user)
    response = client.post("/endpoints/new", form_data(entity("1", 100), name="guarded"))
    change = ChangeRequest.objects.get(endpoint_name="guarded")
    assert response.status_code == 302 and response["Location"] == f"/change-requests/{change.pk}/"
    assert change.action == "create" and change.status == "PENDING" and change.author == user
    assert not Endpoint.objects.filter(name="guarded").exists()


# --- edit --------------------------------------------------------------------------------------


def test_the_edit_form_shows_the_current_config_and_its_etag(client, user, ab):
    client.force_login(user)
    response = client.get("/endpoints/ab/edit")
    assert response.status_code == 200
    html = response.content.decode()
    assert etag_in(html) == checks.etag(Endpoint.objects.get(name="ab"))
    assert f'<option value="{IRIS}/2" selected>' in html
    assert 'name="entities-0-name" value="iris-1"' in html and 'name="entities-1-traffic" value="50"' in html
    assert "Total: <strong>100%</strong>" in html


def test_an_outsider_gets_404_and_a_viewer_403(client, django_user_model, ab, registered_models):
    client.force_login(make_user(django_user_model, "otto", None))
    for url in ("/endpoints/ab/edit", "/endpoints/ab/delete", "/endpoints/nope/edit"):
        assert client.get(url).status_code == 404
    assert client.post("/endpoints/ab/edit", form_data(entity("1", 100), etag="*")).status_code == 404
    assert client.post("/endpoints/ab/delete", {"etag": "*"}).status_code == 404

    client.force_login(make_user(django_user_model, "vera", Role.VIEWER))
    assert client.get("/endpoints/ab/edit").status_code == 403
    assert client.post("/endpoints/ab/edit", form_data(entity("1", 100), etag="*")).status_code == 403
    assert client.post("/endpoints/ab/delete", {"etag": "*"}).status_code == 403
    assert Endpoint.objects.get(name="ab").config_versions.count() == 1


def test_other_methods_are_refused(client, user, ab):
    client.force_login(user)
    assert client.put("/endpoints/ab/edit").status_code == 405
    assert client.delete("/endpoints/ab/delete").status_code == 405


def test_saving_an_edit_applies_it_with_the_etag_of_the_form(client, user, ab):
    client.force_login(user)
    etag = etag_in(client.get("/endpoints/ab/edit").content.decode())
    data = form_data(entity("1", 80, name="iris-1"), entity("2", 20, name="iris-2"), etag=etag, initial=2)
    response = client.post("/endpoints/ab/edit", data)
    assert response.status_code == 302 and response["Location"] == "/endpoints/ab/"
    endpoint = Endpoint.objects.get(name="ab")
    assert endpoint.pending_config.version == 2
    assert [r["traffic_percentage"] for r in endpoint.pending_config.traffic_config["routes"]] == [80, 20]
    assert AuditEvent.objects.filter(action="endpoint.update_config", object_name="ab", actor=user).exists()


def test_a_change_made_since_the_form_was_opened_is_refused_not_overwritten(client, user, ab):
    client.force_login(user)
    etag = etag_in(client.get("/endpoints/ab/edit").content.decode())
    endpoint_services.patch_endpoint_tags(actor=user, name="ab", body={"add_tags": [{"key": "team", "value": "ml"}]})
    data = form_data(entity("1", 80, name="iris-1"), entity("2", 20, name="iris-2"), etag=etag, initial=2)
    response = client.post("/endpoints/ab/edit", data)
    assert response.status_code == 412
    assert "changed since you opened this form" in response.content.decode()
    assert Endpoint.objects.get(name="ab").config_versions.count() == 1


def test_an_update_already_rolling_out_is_a_form_level_error(client, user, ab):
    client.force_login(user)
    etag = etag_in(client.get("/endpoints/ab/edit").content.decode())
    data = form_data(entity("1", 80, name="iris-1"), entity("2", 20, name="iris-2"), etag=etag, initial=2)
    assert client.post("/endpoints/ab/edit", data).status_code == 302
    etag = etag_in(client.get("/endpoints/ab/edit").content.decode())
    data["etag"] = etag
    response = client.post("/endpoints/ab/edit", data)
    assert response.status_code == 409
    assert "is already being updated" in response.content.decode()


def test_a_non_approver_gets_a_change_request_when_a_policy_covers_the_endpoint(client, user, ab):
    ApprovalPolicy.objects.create(endpoint_name="ab")
    client.force_login(user)
    page = client.get("/endpoints/ab/edit").content.decode()
    assert "saving creates a change request" in page and "Propose change" in page
    data = form_data(entity("1", 90, name="iris-1"), entity("2", 10, name="iris-2"), etag=etag_in(page), initial=2)
    response = client.post("/endpoints/ab/edit", data, follow=True)
    change = ChangeRequest.objects.get(endpoint_name="ab")
    assert response.redirect_chain == [(f"/change-requests/{change.pk}/", 302)]
    assert f"change request #{change.pk} now waits for an approver" in response.content.decode()
    assert change.action == "update_config" and change.status == "PENDING"
    assert [r["traffic_percentage"] for r in change.proposed["traffic_config"]["routes"]] == [90, 10]
    assert change.base_etag == etag_in(page)
    assert Endpoint.objects.get(name="ab").config_versions.count() == 1  # nothing applied yet


def test_a_proposal_from_a_stale_form_is_refused_too(client, django_user_model, user, ab):
    ApprovalPolicy.objects.create(endpoint_name="ab")
    client.force_login(user)
    etag = etag_in(client.get("/endpoints/ab/edit").content.decode())
    admin = make_user(django_user_model, "root", Role.ADMIN)  # the policy binds others, not admins
    endpoint_services.patch_endpoint_tags(actor=admin, name="ab", body={"add_tags": [{"key": "team", "value": "ml"}]})
    data = form_data(entity("1", 90, name="iris-1"), entity("2", 10, name="iris-2"), etag=etag, initial=2)
    assert client.post("/endpoints/ab/edit", data).status_code == 412
    assert not ChangeRequest.objects.exists()


def test_an_approver_who_manages_the_endpoint_saves_directly_despite_the_policy(client, django_user_model, ab):
    ApprovalPolicy.objects.create(endpoint_name="ab")
    paula = make_user(django_user_model, "paula", Role.APPROVER)
    EndpointPermission.objects.create(endpoint=ab, user=paula, level=PermissionLevel.CAN_MANAGE)
    client.force_login(paula)
    etag = etag_in(client.get("/endpoints/ab/edit").content.decode())
    data = form_data(entity("1", 90, name="iris-1"), entity("2", 10, name="iris-2"), etag=etag, initial=2)
    response = client.post("/endpoints/ab/edit", data)
    assert response.status_code == 302 and response["Location"] == "/endpoints/ab/"
    assert Endpoint.objects.get(name="ab").pending_config.version == 2
    assert not ChangeRequest.objects.exists()


def test_removing_a_served_entity_without_javascript(client, user, ab):
    client.force_login(user)
    etag = etag_in(client.get("/endpoints/ab/edit").content.decode())
    data = form_data(entity("1", 100, name="iris-1"), entity("2", 0, name="iris-2", DELETE="on"), etag=etag, initial=2)
    assert client.post("/endpoints/ab/edit", data).status_code == 302
    config = Endpoint.objects.get(name="ab").pending_config
    assert [e.name for e in config.served_entities.all()] == ["iris-1"]


# --- delete ------------------------------------------------------------------------------------


def test_delete_asks_for_confirmation_then_deletes(client, user, ab):
    client.force_login(user)
    page = client.get("/endpoints/ab/delete")
    assert page.status_code == 200 and "Delete ab?" in page.content.decode()
    response = client.post("/endpoints/ab/delete", {"etag": etag_in(page.content.decode())})
    assert response.status_code == 302 and response["Location"] == "/"
    assert not Endpoint.objects.filter(name="ab").exists()
    assert AuditEvent.objects.filter(action="endpoint.delete", object_name="ab", actor=user).exists()


def test_delete_of_a_changed_endpoint_is_refused(client, user, ab):
    client.force_login(user)
    etag = etag_in(client.get("/endpoints/ab/delete").content.decode())
    endpoint_services.patch_endpoint_tags(actor=user, name="ab", body={"add_tags": [{"key": "team", "value": "ml"}]})
    response = client.post("/endpoints/ab/delete", {"etag": etag})
    assert response.status_code == 412 and "changed since you opened this form" in response.content.decode()
    assert Endpoint.objects.filter(name="ab").exists()


def test_delete_of_a_covered_endpoint_proposes_it(client, user, ab):
    ApprovalPolicy.objects.create(endpoint_name="ab")
    client.force_login(user)
    page = client.get("/endpoints/ab/delete").content.decode()
    assert "Propose deleting ab" in page
    response = client.post("/endpoints/ab/delete", {"etag": etag_in(page)})
    change = ChangeRequest.objects.get(endpoint_name="ab")
    assert response["Location"] == f"/change-requests/{change.pk}/" and change.action == "delete"
    assert Endpoint.objects.filter(name="ab").exists()


# --- external models ------------------------------------------------------------------------------

KEY_VALUE = "sk-dashboard-7f3c9a1e5b2d4c6e8a0f"  # a credential: must never be in a page


def openai_row(traffic: int | str | None = 100, **config) -> dict:
    """An external-model row of the form: OpenAI's gpt-4o, config fields by their API names."""
    row = {"kind": "external", "provider": "openai", "external_name": "gpt-4o", "task": "llm/v1/chat"}
    if traffic is not None:
        row["traffic"] = str(traffic)
    row.update({f"openai_config__{k}": v for k, v in config.items()})
    return row


@pytest.fixture
def team_key(user) -> str:
    """A secret alice may read (she created its scope); its reference."""
    from endpoints_app.services import secrets

    secrets.create_scope(actor=user, scope="team-keys")
    secrets.put_secret(actor=user, scope="team-keys", key="openai", string_value=KEY_VALUE)
    return "{{secrets/team-keys/openai}}"


def test_the_form_has_every_providers_config_fields_from_the_provider_modules(client, user, registered_models):
    from endpoints_app.gateway.providers import PROVIDERS
    from endpoints_app.pages.forms.external_model import config_inputs

    client.force_login(user)
    html = client.get("/endpoints/new").content.decode()
    assert '<select name="entities-0-kind"' in html and '<select name="entities-0-provider"' in html
    for provider in PROVIDERS.values():
        assert f'data-provider-section="{provider.name}"' in html
        for config_input in config_inputs(provider):
            assert f'name="entities-0-{config_input.field_name}"' in html, config_input.api_name
            if config_input.spec.secret:  # a secret picker and a password input
                assert re.search(rf'<select name="entities-0-{config_input.field_name}"', html)
                assert re.search(rf'<input type="password" name="entities-0-{config_input.plaintext_name}"', html)
    # The provider sections not chosen are rendered hidden and disabled (so not sent without JS).
    assert re.search(r'data-provider-section="anthropic" hidden disabled', html)
    assert not re.search(r'data-provider-section="openai" hidden', html)
    assert re.search(r'data-kind-section="external" hidden disabled', html)  # a registered model by default


def test_the_secret_picker_offers_only_secrets_the_user_may_read(client, user, django_user_model, team_key):
    from endpoints_app.services import secrets

    owner = make_user(django_user_model, "olive", Role.EDITOR)
    secrets.create_scope(actor=owner, scope="olives-keys")
    secrets.put_secret(actor=owner, scope="olives-keys", key="anthropic", string_value="sk-olive-secret-1")
    client.force_login(user)
    html = client.get("/endpoints/new").content.decode()
    assert f'<option value="{team_key}">team-keys / openai</option>' in html
    assert "olives-keys" not in html  # alice sees the scope exists (a role) but may not read it
    assert KEY_VALUE not in html and "sk-olive-secret-1" not in html


def test_an_editor_creates_an_external_model_endpoint_with_a_picked_secret(client, user, team_key):
    client.force_login(user)
    data = form_data(
        openai_row(openai_api_key=team_key, openai_api_base="https://llm.example.com/v1"), name="chat-form", initial=1
    )
    response = client.post("/endpoints/new", data)
    assert response.status_code == 302, response.content.decode()[-2000:]
    endpoint = Endpoint.objects.get(name="chat-form")
    config = endpoint.active_config or endpoint.pending_config
    [served] = config.served_entities.all()
    assert served.name == "gpt-4o"
    assert served.external_model == {
        "provider": "openai",
        "name": "gpt-4o",
        "task": "llm/v1/chat",
        "openai_config": {"openai_api_key": team_key, "openai_api_base": "https://llm.example.com/v1"},
    }


def test_a_typed_key_is_stored_as_a_secret_and_never_rendered_back(client, user, registered_models):
    from endpoints_app.services import secrets

    client.force_login(user)
    # 1. A validation error elsewhere (no model name): the form comes back without the typed key.
    bad = form_data({**openai_row(openai_api_key_plaintext=KEY_VALUE), "external_name": ""}, name="typed", initial=1)
    response = client.post("/endpoints/new", bad)
    assert response.status_code == 400
    html = response.content.decode()
    assert "must not be empty" in errors_at(html, "id_entities-0-external_name_error")
    assert KEY_VALUE not in html
    assert not Endpoint.objects.filter(name="typed").exists()

    # 2. Saved: the endpoint keeps a reference to the managed scope; the value is only in the store.
    response = client.post("/endpoints/new", form_data(openai_row(openai_api_key_plaintext=KEY_VALUE), name="typed"))
    assert response.status_code == 302, response.content.decode()[-2000:]
    endpoint = Endpoint.objects.get(name="typed")
    block = (endpoint.active_config or endpoint.pending_config).served_entities.get().external_model["openai_config"]
    scope, key = secrets.parse_reference(block["openai_api_key"])
    assert scope == secrets.MANAGED_SCOPE and secrets.resolve(scope=scope, key=key) == KEY_VALUE
    for url in ("/endpoints/typed/edit", "/endpoints/typed/", "/secrets/", "/endpoints/typed/ai-gateway"):
        page = client.get(url)
        assert page.status_code == 200 and KEY_VALUE not in page.content.decode(), url
    assert all(KEY_VALUE not in str(e.after) + str(e.before) for e in AuditEvent.objects.all())


def test_service_errors_about_external_fields_appear_next_to_them(client, user, team_key):
    client.force_login(user)
    response = client.post(
        "/endpoints/new", form_data(openai_row(openai_api_key=team_key, openai_api_base="ftp://x"), name="bad-llm")
    )
    assert response.status_code == 400
    assert "must be an http:// or https:// URL" in errors_at(
        response.content.decode(), "id_entities-0-openai_config__openai_api_base_error"
    )
    response = client.post("/endpoints/new", form_data(openai_row(), name="bad-llm"))  # no key
    assert "openai_api_key (or openai_api_key_plaintext) is required" in errors_at(
        response.content.decode(), "id_entities-0-openai_config__openai_api_key_error"
    )
    # Azure without its settings: the message about the block goes to the first field it names.
    response = client.post(
        "/endpoints/new", form_data(openai_row(openai_api_key=team_key, openai_api_type="azure"), name="bad-llm")
    )
    assert "needs openai_api_base" in errors_at(
        response.content.decode(), "id_entities-0-openai_config__openai_api_type_error"
    )
    assert not Endpoint.objects.filter(name="bad-llm").exists()


def test_a_secret_that_is_not_offered_is_refused(client, user, django_user_model, team_key):
    from endpoints_app.services import secrets

    owner = make_user(django_user_model, "olive", Role.EDITOR)
    secrets.create_scope(actor=owner, scope="olives-keys")
    secrets.put_secret(actor=owner, scope="olives-keys", key="k", string_value="sk-olive-secret-1")
    client.force_login(user)
    response = client.post(
        "/endpoints/new", form_data(openai_row(openai_api_key="{{secrets/olives-keys/k}}"), name="sneaky")
    )
    assert response.status_code == 400
    assert "Select a valid choice" in errors_at(
        response.content.decode(), "id_entities-0-openai_config__openai_api_key_error"
    )
    assert not Endpoint.objects.filter(name="sneaky").exists()


def test_custom_and_external_models_on_one_endpoint_are_refused(client, user, registered_models, team_key):
    client.force_login(user)
    data = form_data(entity("1", 50), openai_row(50, openai_api_key=team_key), name="mixed")
    response = client.post("/endpoints/new", data)
    assert response.status_code == 400
    assert "either external models or custom models, not both" in response.content.decode()
    assert not Endpoint.objects.filter(name="mixed").exists()


def test_without_javascript_show_its_fields_re_renders_the_chosen_kind_and_provider(client, user, registered_models):
    client.force_login(user)
    data = form_data({**entity("1", 100), "kind": "external", "provider": "anthropic"}, name="x", action="refresh")
    response = client.post("/endpoints/new", data)
    assert response.status_code == 200
    html = response.content.decode().split('<template id="entity-template">')[0]  # the row, not the template
    assert re.search(r'data-kind-section="model" hidden disabled', html)
    assert not re.search(r'data-kind-section="external" hidden', html)
    assert not re.search(r'data-provider-section="anthropic" hidden', html)
    assert re.search(r'data-provider-section="openai" hidden disabled', html)
    assert not Endpoint.objects.exists()


@pytest.fixture
def chat(api, user, team_key) -> Endpoint:
    """alice's endpoint serving two OpenAI models 50/50 with the team key."""
    models = [
        {
            "provider": "openai",
            "name": name,
            "task": "llm/v1/chat",
            "openai_config": {"openai_api_key": team_key},
        }
        for name in ("gpt-4o", "gpt-4o-mini")
    ]
    body = {
        "name": "chat",
        "config": {
            "served_entities": [{"external_model": m} for m in models],
            "traffic_config": {
                "routes": [
                    {"served_model_name": "gpt-4o", "traffic_percentage": 50},
                    {"served_model_name": "gpt-4o-mini", "traffic_percentage": 50},
                ]
            },
        },
    }
    create(api, body)
    return Endpoint.objects.get(name="chat")


def test_the_edit_form_shows_an_external_models_settings_and_saves_changes(client, user, chat, team_key):
    client.force_login(user)
    html = client.get("/endpoints/chat/edit").content.decode()
    assert '<option value="external" selected>' in html
    assert 'name="entities-1-external_name" value="gpt-4o-mini"' in html
    assert re.search(
        rf'<select name="entities-0-openai_config__openai_api_key"[^>]*>.*?<option value="{re.escape(team_key)}" selected>',
        html,
        re.S,
    )
    assert KEY_VALUE not in html
    data = form_data(
        openai_row(80, openai_api_key=team_key, openai_organization="org-1") | {"name": "gpt-4o"},
        openai_row(20, openai_api_key=team_key) | {"name": "gpt-4o-mini", "external_name": "gpt-4o-mini"},
        etag=etag_in(html),
        initial=2,
    )
    response = client.post("/endpoints/chat/edit", data)
    assert response.status_code == 302, response.content.decode()[-3000:]
    endpoint = Endpoint.objects.get(name="chat")
    config = endpoint.pending_config or endpoint.active_config
    assert config.version == 2
    first, second = config.served_entities.order_by("position")
    assert first.external_model["openai_config"] == {"openai_api_key": team_key, "openai_organization": "org-1"}
    assert second.external_model["name"] == "gpt-4o-mini"
    assert [r["traffic_percentage"] for r in config.traffic_config["routes"]] == [80, 20]


def test_a_reference_in_use_is_shown_to_a_manager_who_cannot_read_it_and_the_service_decides(
    client, django_user_model, chat, team_key
):
    """The picker shows what the endpoint uses. Saving it unchanged needs no READ on it (the key
    goes where it went before); sending it to another base URL does, as in the API."""
    mo = make_user(django_user_model, "mo", Role.EDITOR)
    EndpointPermission.objects.create(endpoint=chat, user=mo, level=PermissionLevel.CAN_MANAGE)
    client.force_login(mo)
    html = client.get("/endpoints/chat/edit").content.decode()
    assert '<optgroup label="In use by this endpoint">' in html and f'value="{team_key}" selected' in html
    moved = form_data(
        openai_row(50, openai_api_key=team_key, openai_api_base="https://evil.example/v1") | {"name": "gpt-4o"},
        openai_row(50, openai_api_key=team_key) | {"name": "gpt-4o-mini", "external_name": "gpt-4o-mini"},
        etag=etag_in(html),
        initial=2,
    )
    response = client.post("/endpoints/chat/edit", moved)
    assert response.status_code == 403
    assert "This needs READ on secret scope 'team-keys'" in errors_at(
        response.content.decode(), "id_entities-0-openai_config__openai_api_key_error"
    )
    assert Endpoint.objects.get(name="chat").config_versions.count() == 1
    kept = form_data(
        openai_row(70, openai_api_key=team_key) | {"name": "gpt-4o"},
        openai_row(30, openai_api_key=team_key) | {"name": "gpt-4o-mini", "external_name": "gpt-4o-mini"},
        etag=etag_in(html),
        initial=2,
    )
    assert client.post("/endpoints/chat/edit", kept).status_code == 302
    assert Endpoint.objects.get(name="chat").config_versions.count() == 2


def test_a_typed_key_cannot_go_into_a_change_request(client, user, chat):
    ApprovalPolicy.objects.create(endpoint_name="chat")
    client.force_login(user)
    html = client.get("/endpoints/chat/edit").content.decode()
    data = form_data(
        openai_row(100, openai_api_key_plaintext=KEY_VALUE) | {"name": "gpt-4o"}, etag=etag_in(html), initial=1
    )
    response = client.post("/endpoints/chat/edit", data)
    assert response.status_code == 400
    page = response.content.decode()
    assert "cannot carry plaintext credentials" in page and KEY_VALUE not in page
    assert not ChangeRequest.objects.exists()
