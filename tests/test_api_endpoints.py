"""The serving-endpoints REST API: wire shapes, validation and errors (reference §1, §2, §5.5)."""

from __future__ import annotations

import json

import pytest

from endpoints_app.models import AccessToken, ConfigUpdate, ConfigVersion, Deployment, DeploymentState, Endpoint
from endpoints_app.services import rollouts
from tests.conftest import endpoint_body

pytestmark = pytest.mark.django_db

URL = "/api/2.0/serving-endpoints"


def create(api, body) -> dict:
    response = api.post(URL, body, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def mark_ready(endpoint_name: str) -> None:
    """Play the runtime's part: every deployment of the pending config is ready."""
    endpoint = Endpoint.objects.get(name=endpoint_name)
    rollouts.start_rollout(endpoint_id=endpoint.id)
    Deployment.objects.filter(endpoint=endpoint, remove_requested_at__isnull=True).update(state=DeploymentState.READY)
    assert rollouts.advance_rollout(endpoint_id=endpoint.id, claim=False)


def test_create_returns_the_endpoint_deploying_its_first_config(api, registered_models):
    body = create(api, endpoint_body("churn", (registered_models["iris"], "1")))
    assert body["name"] == "churn"
    assert len(body["id"]) == 32
    assert body["creator"] == "alice@example.com"
    assert body["state"] == {"ready": "NOT_READY", "config_update": "IN_PROGRESS"}
    assert "config" not in body
    pending = body["pending_config"]
    assert pending["config_version"] == 1
    assert isinstance(pending["start_time"], int) and pending["start_time"] > 1_600_000_000_000
    entity = pending["served_entities"][0]
    assert entity["name"] == "iris-1"  # last dot-segment of the UC name + version
    assert entity["state"]["deployment"] == "DEPLOYMENT_CREATING"
    assert pending["traffic_config"] == {
        "routes": [{"served_model_name": "iris-1", "served_entity_name": "iris-1", "traffic_percentage": 100}]
    }
    assert body["creation_timestamp"] > 1_600_000_000_000  # milliseconds


def test_the_sdk_shaped_create_body_with_config_name_and_unknown_fields_is_accepted(api, registered_models):
    body = endpoint_body("ep-sdk", (registered_models["iris"], "1"))
    body["config"]["name"] = "ep-sdk"
    body["uc_system_metrics_export_state"] = "ENABLED"  # newer SDK field: ignored
    body["tags"] = [{"key": "team", "value": "ml"}]
    out = create(api, body)
    assert out["tags"] == [{"key": "team", "value": "ml"}]


def test_get_shows_the_active_config_once_ready(api, registered_models):
    create(api, endpoint_body("ready-ep", (registered_models["iris"], "1")))
    mark_ready("ready-ep")
    body = api.get(f"{URL}/ready-ep").json()
    assert body["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
    assert body["config"]["config_version"] == 1
    assert body["config"]["served_entities"][0]["state"]["deployment"] == "DEPLOYMENT_READY"
    assert "pending_config" not in body


def test_list_returns_endpoints_object_with_summaries(api, registered_models):
    create(api, endpoint_body("b-ep", (registered_models["iris"], "1")))
    create(api, endpoint_body("a-ep", (registered_models["iris"], "2")))
    body = api.get(URL).json()
    assert [e["name"] for e in body["endpoints"]] == ["a-ep", "b-ep"]
    assert body["endpoints"][0]["config"]["served_entities"] == [
        {"name": "iris-2", "entity_name": registered_models["iris"], "entity_version": "2"}
    ]
    assert all("state" in e for e in body["endpoints"])


def test_list_is_empty_object_when_there_are_none(api):
    assert api.get(URL).json() == {"endpoints": []}


def test_update_bumps_config_version_and_keeps_the_old_config_active_until_ready(api, registered_models):
    iris = registered_models["iris"]
    create(api, endpoint_body("ab", (iris, "1")))
    mark_ready("ab")
    new = endpoint_body("ab", (iris, "1"), (iris, "2"), routes=[("iris-1", 80), ("iris-2", 20)])["config"]
    response = api.put(f"{URL}/ab/config", new, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["state"]["config_update"] == "IN_PROGRESS"
    assert body["config"]["config_version"] == 1
    assert body["pending_config"]["config_version"] == 2
    mark_ready("ab")
    body = api.get(f"{URL}/ab").json()
    assert body["config"]["config_version"] == 2
    assert [r["traffic_percentage"] for r in body["config"]["traffic_config"]["routes"]] == [80, 20]


def test_an_unchanged_entity_keeps_its_deployment_across_an_update(api, registered_models):
    iris = registered_models["iris"]
    create(api, endpoint_body("keep", (iris, "1")))
    mark_ready("keep")
    first = Endpoint.objects.get(name="keep").active_config.served_entities.get().deployment_id
    new = endpoint_body("keep", (iris, "1"), (iris, "2"), routes=[("iris-1", 50), ("iris-2", 50)])["config"]
    api.put(f"{URL}/keep/config", new, format="json")
    mark_ready("keep")
    active = Endpoint.objects.get(name="keep").active_config
    assert active.served_entities.get(name="iris-1").deployment_id == first
    assert Deployment.objects.get(id=first).remove_requested_at is None


def test_a_second_update_while_one_is_in_progress_is_a_conflict(api, registered_models):
    iris = registered_models["iris"]
    create(api, endpoint_body("busy", (iris, "1")))
    response = api.put(f"{URL}/busy/config", endpoint_body("busy", (iris, "2"))["config"], format="json")
    assert response.status_code == 409
    assert response.json()["error_code"] == "RESOURCE_CONFLICT"
    assert ConfigVersion.objects.filter(endpoint__name="busy").count() == 1


def test_creating_a_duplicate_name_is_already_exists(api, registered_models):
    create(api, endpoint_body("dup", (registered_models["iris"], "1")))
    response = api.post(URL, endpoint_body("dup", (registered_models["iris"], "1")), format="json")
    assert response.status_code == 409
    assert response.json()["error_code"] == "RESOURCE_ALREADY_EXISTS"


@pytest.mark.parametrize(
    ("entity", "version", "needle"),
    [
        ("main.default.nope", "1", "Registered model 'main.default.nope'"),
        ("main.default.iris", "99", "Model version '99'"),
    ],
)
def test_unknown_model_or_version_is_404_naming_it(api, registered_models, entity, version, needle):
    response = api.post(URL, endpoint_body("ghost", (entity, version)), format="json")
    assert response.status_code == 404
    assert response.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert needle in response.json()["message"]
    assert not Endpoint.objects.filter(name="ghost").exists()


def test_update_naming_an_unknown_version_changes_nothing(api, registered_models):
    create(api, endpoint_body("stay", (registered_models["iris"], "1")))
    mark_ready("stay")
    response = api.put(
        f"{URL}/stay/config", endpoint_body("stay", (registered_models["iris"], "42"))["config"], format="json"
    )
    assert response.status_code == 404
    endpoint = Endpoint.objects.get(name="stay")
    assert endpoint.config_update == ConfigUpdate.NOT_UPDATING
    assert endpoint.config_versions.count() == 1


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda b: b.update(name="bad name!"), "invalid"),
        (lambda b: b.update(name="databricks-x"), "reserved"),
        (lambda b: b.update(name=7), "name"),
        (lambda b: b.pop("config"), "config is required"),
        (lambda b: b["config"].update(served_entities=[]), "at least one"),
        (lambda b: b["config"].update(served_entities="x"), "must be an array"),
        (lambda b: b["config"]["served_entities"][0].update(entity_version=True), "must be a string"),
        (lambda b: b["config"]["served_entities"][0].update(workload_size="Huge"), "workload_size"),
        (lambda b: b["config"]["served_entities"][0].update(workload_type="TPU"), "workload_type"),
        (lambda b: b["config"]["served_entities"][0].update(scale_to_zero_enabled="yes"), "true or false"),
        (lambda b: b["config"]["served_entities"][0].update(min_provisioned_concurrency=4), "not both"),
        (lambda b: b["config"]["served_entities"][0].update(name="a.b"), "invalid"),
        (lambda b: b["config"].update(served_entities=[b["config"]["served_entities"][0]] * 2), "used twice"),
        (lambda b: b["config"].update(served_entities=[b["config"]["served_entities"][0]] * 11), "at most 10"),
        (
            lambda b: b["config"].update(
                traffic_config={"routes": [{"served_model_name": "iris-1", "traffic_percentage": 90}]}
            ),
            "sum to 100",
        ),
        (
            lambda b: b["config"].update(
                traffic_config={"routes": [{"served_model_name": "other", "traffic_percentage": 100}]}
            ),
            "not in this config",
        ),
        (
            lambda b: b["config"].update(
                traffic_config={"routes": [{"served_model_name": "iris-1", "traffic_percentage": "x"}]}
            ),
            "integer",
        ),
        (
            lambda b: b["config"].update(
                traffic_config={"routes": [{"served_model_name": "iris-1", "traffic_percentage": 120}]}
            ),
            "between 0 and 100",
        ),
        (lambda b: b["config"]["served_entities"][0].update(external_model={"name": "gpt-4"}), "external"),
    ],
)
def test_invalid_create_bodies_are_400_invalid_parameter_value(api, registered_models, mutate, needle):
    body = endpoint_body("bad", (registered_models["iris"], "1"))
    mutate(body)
    response = api.post(URL, body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert needle in response.json()["message"]
    assert Endpoint.objects.count() == 0


def test_two_entities_need_an_explicit_traffic_config(api, registered_models):
    iris = registered_models["iris"]
    response = api.post(URL, endpoint_body("two", (iris, "1"), (iris, "2")), format="json")
    assert response.status_code == 400
    assert "traffic_config is required" in response.json()["message"]


def test_numeric_strings_are_accepted_for_integers(api, registered_models):
    iris = registered_models["iris"]
    body = endpoint_body("strs", (iris, "1"), (iris, "2"))
    body["config"]["traffic_config"] = {
        "routes": [
            {"served_model_name": "iris-1", "traffic_percentage": "90"},
            {"served_model_name": "iris-2", "traffic_percentage": "10"},
        ]
    }
    out = create(api, body)
    assert [r["traffic_percentage"] for r in out["pending_config"]["traffic_config"]["routes"]] == [90, 10]


def test_legacy_served_models_are_accepted_and_echoed(api, registered_models):
    body = {
        "name": "legacy",
        "config": {
            "served_models": [
                {
                    "model_name": registered_models["iris"],
                    "model_version": "1",
                    "workload_size": "Small",
                    "scale_to_zero_enabled": True,
                }
            ]
        },
    }
    out = create(api, body)
    assert out["pending_config"]["served_models"][0]["model_name"] == registered_models["iris"]
    assert out["pending_config"]["served_entities"][0]["name"] == "iris-1"


def test_malformed_json_is_400_malformed_request(api):
    response = api.generic("POST", URL, "{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error_code"] == "MALFORMED_REQUEST"


def test_a_json_array_body_is_400(api):
    response = api.generic("POST", URL, "[1, 2]", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"


def test_json_without_a_content_type_is_parsed(api, registered_models):
    body = json.dumps(endpoint_body("curl", (registered_models["iris"], "1")))
    response = api.generic("POST", URL, body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200, response.content


def test_missing_token_is_401(anon):
    response = anon.get(URL)
    assert response.status_code == 401
    assert response.json()["error_code"] == "UNAUTHENTICATED"


def test_wrong_token_is_401(anon):
    anon.credentials(HTTP_AUTHORIZATION="Bearer mf-not-a-token")
    response = anon.get(URL)
    assert response.status_code == 401
    assert response.json() == {"error_code": "UNAUTHENTICATED", "message": "Invalid access token"}


def test_revoked_token_is_401(api, token):
    AccessToken.objects.update(revoked_at="2026-01-01T00:00:00Z")
    assert api.get(URL).status_code == 401


def test_basic_auth_with_the_token_as_password_works(anon, token):
    import base64

    anon.credentials(HTTP_AUTHORIZATION="Basic " + base64.b64encode(f"token:{token}".encode()).decode())
    assert anon.get(URL).status_code == 200


def test_tokens_are_stored_hashed(token):
    row = AccessToken.objects.get()
    assert token not in (row.digest, row.hint)
    assert len(row.digest) == 64


def test_unknown_endpoint_is_404(api):
    for method, path in [
        ("get", f"{URL}/nope"),
        ("delete", f"{URL}/nope"),
        ("put", f"{URL}/nope/config"),
        ("patch", f"{URL}/nope/tags"),
    ]:
        response = getattr(api, method)(
            path, {"served_entities": [{"entity_name": "x", "entity_version": "1"}]}, format="json"
        )
        assert response.status_code == 404, (method, path)
        assert response.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"


def test_unknown_api_path_is_json_404(api):
    response = api.get("/api/2.0/no-such-thing")
    assert response.status_code == 404
    assert response.json()["error_code"] == "ENDPOINT_NOT_FOUND"


def test_wrong_method_is_405(api):
    response = api.post(f"{URL}/x/config", {}, format="json")
    assert response.status_code == 405
    assert response.json()["error_code"] == "METHOD_NOT_ALLOWED"


def test_patch_tags_adds_deletes_and_returns_an_object(api, registered_models):
    body = endpoint_body("tagged", (registered_models["iris"], "1"))
    body["tags"] = [{"key": "old", "value": "1"}, {"key": "env", "value": "dev"}]
    create(api, body)
    response = api.patch(
        f"{URL}/tagged/tags",
        {"add_tags": [{"key": "team", "value": "ml"}, {"key": "env", "value": "prod"}], "delete_tags": ["old"]},
        format="json",
    )
    assert response.status_code == 200
    assert response.json() == {"tags": [{"key": "env", "value": "prod"}, {"key": "team", "value": "ml"}]}


def test_patch_tags_rejects_bad_shapes(api, registered_models):
    create(api, endpoint_body("tagged2", (registered_models["iris"], "1")))
    response = api.patch(f"{URL}/tagged2/tags", {"add_tags": [{"value": "x"}]}, format="json")
    assert response.status_code == 400
    assert "key is required" in response.json()["message"]


def test_delete_removes_the_endpoint_and_asks_the_runtime_to_stop(api, registered_models):
    create(api, endpoint_body("gone", (registered_models["iris"], "1")))
    mark_ready("gone")
    response = api.delete(f"{URL}/gone")
    assert response.status_code == 200
    assert api.get(f"{URL}/gone").status_code == 404
    assert Deployment.objects.filter(endpoint_name="gone", remove_requested_at__isnull=False).count() == 1


def test_openapi_describes_each_served_model_from_its_signature(api, registered_models):
    create(api, endpoint_body("doc", (registered_models["iris"], "1")))
    mark_ready("doc")
    response = api.get(f"{URL}/doc/openapi")
    assert response.status_code == 200
    doc = json.loads(response.content)
    assert doc["openapi"].startswith("3.1") and doc["info"] == {"title": "doc", "version": "1"}
    schema = doc["paths"]["/served-models/iris-1/invocations"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    split = schema["oneOf"][0]["properties"]["dataframe_split"]["properties"]["columns"]["items"]["enum"]
    assert "petal_length" in split


def test_logs_of_an_unknown_served_model_is_404(api, registered_models):
    create(api, endpoint_body("logs", (registered_models["iris"], "1")))
    response = api.get(f"{URL}/logs/served-models/nope/logs")
    assert response.status_code == 404
    assert api.get(f"{URL}/logs/served-models/iris-1/build-logs").json() == {"logs": ""}


def test_well_known_config_needs_no_token(anon):
    response = anon.get("/.well-known/databricks-config")
    assert response.status_code == 200
    assert response.json()["workspace_id"].isdigit()


def test_a_body_over_the_upload_limit_is_a_json_400(api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = api.generic("POST", URL, json.dumps({"name": "x" * 5000}), content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error_code"] in ("BAD_REQUEST", "MALFORMED_REQUEST")


def test_deeply_nested_json_is_malformed_not_a_crash(api):
    response = api.generic("POST", URL, "[" * 100_000 + "]" * 100_000, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error_code"] == "MALFORMED_REQUEST"


def test_a_config_that_does_not_fit_the_host_fails_before_anything_changes(api, registered_models, settings):
    from django.utils import timezone

    from endpoints_app.models import RuntimeHost

    create(api, endpoint_body("small-one", (registered_models["iris"], "1")))
    mark_ready("small-one")
    RuntimeHost.objects.create(agent_id="h", memory_mb=1000, cpus=2, heartbeat_at=timezone.now())
    settings.REPLICA_MEMORY_MB = 300  # budget 800 MB: the running replica leaves room for one more
    body = endpoint_body("big", (registered_models["iris"], "1"))
    body["config"]["served_entities"][0]["workload_size"] = "Large"  # 4 replicas at least
    response = api.post(URL, body, format="json")
    assert response.status_code == 400
    message = response.json()["message"]
    assert "Not enough capacity" in message and "4 replica(s)" in message and "500 MB" in message
    assert not Endpoint.objects.filter(name="big").exists()
    update = api.put(f"{URL}/small-one/config", body["config"], format="json")
    assert update.status_code == 400
    assert Endpoint.objects.get(name="small-one").config_update == ConfigUpdate.NOT_UPDATING


def test_served_entities_show_current_and_target_replicas(api, registered_models):
    body = endpoint_body("sized", (registered_models["iris"], "1"))
    body["config"]["served_entities"][0]["workload_size"] = "Medium"
    create(api, body)
    mark_ready("sized")
    entity = api.get(f"{URL}/sized").json()["config"]["served_entities"][0]
    assert (entity["target_replicas"], entity["min_replicas"], entity["max_replicas"]) == (2, 2, 4)
    assert entity["current_replicas"] == 0


def test_writes_with_a_stale_if_match_get_412_and_change_nothing(api, registered_models):
    iris = registered_models["iris"]
    create(api, endpoint_body("etagged", (iris, "1")))
    mark_ready("etagged")
    first = api.get(f"{URL}/etagged")
    tag = first["ETag"]
    assert tag.startswith('"') and tag == api.get(f"{URL}/etagged")["ETag"]
    # Someone else changes the endpoint…
    api.patch(f"{URL}/etagged/tags", {"add_tags": [{"key": "a", "value": "1"}]}, format="json")
    # …so a write based on the old read is refused, and nothing changes.
    stale = api.put(
        f"{URL}/etagged/config", endpoint_body("x", (iris, "2"))["config"], format="json", HTTP_IF_MATCH=tag
    )
    assert stale.status_code == 412 and stale.json()["error_code"] == "PRECONDITION_FAILED"
    assert Endpoint.objects.get(name="etagged").config_versions.count() == 1
    assert api.delete(f"{URL}/etagged", HTTP_IF_MATCH=tag).status_code == 412
    fresh = api.get(f"{URL}/etagged")["ETag"]
    ok = api.put(f"{URL}/etagged/config", endpoint_body("x", (iris, "2"))["config"], format="json", HTTP_IF_MATCH=fresh)
    assert ok.status_code == 200 and ok["ETag"] != fresh
