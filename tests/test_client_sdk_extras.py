"""The Databricks SDK's serving-endpoints methods beyond create/get/query, unchanged, against the
live stack: ``update_notifications``, ``patch_telemetry_config``, ``put`` (legacy rate limits),
``http_request`` and the provisioned-throughput methods (a clear 400), and the data plane of a
route-optimized endpoint: ``endpoint_url`` and ``data_plane_info`` in ``get``, an OAuth client
(``auth_type="oauth-m2m"``) and ``serving_endpoints_data_plane.query``, which exchanges its token
at ``/oidc/v1/token`` for a data-plane token and posts to ``endpoint_url``. ``list``, ``patch``
(tags) and permissions ride along.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
import requests
from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import BadRequest, PermissionDenied
from databricks.sdk.service.serving import (
    DataframeSplitInput,
    EmailNotifications,
    EndpointCoreConfigInput,
    EndpointTag,
    ExternalFunctionRequestHttpMethod,
    PtEndpointCoreConfig,
    PtServedModel,
    RateLimit,
    RateLimitKey,
    RateLimitRenewalPeriod,
    ServedEntityInput,
    ServingEndpointAccessControlRequest,
    ServingEndpointPermissionLevel,
    TelemetryConfig,
    TelemetryFeature,
    TelemetryInferenceTableConfig,
)

from endpoints_app.models import AccessToken, Role, UserProfile
from endpoints_app.services.tokens import create_token, revoke_token
from tests.model_fixtures import IRIS_COLUMNS
from tests.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("e2e_token")]

ROW = [5.1, 3.5, 1.4, 0.2]
TIMEOUT = timedelta(minutes=3)
TOKEN_URL = "/oidc/v1/token"


def iris(registered_models, version: str = "1") -> ServedEntityInput:
    return ServedEntityInput(
        entity_name=registered_models["iris"],
        entity_version=version,
        workload_size="Small",
        scale_to_zero_enabled=False,
    )


def within(seconds: float, check) -> None:  # type: ignore[no-untyped-def]
    """``check()`` holds within ``seconds`` (rights reach the gateway's caches within a second)."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "did not happen in time"
        time.sleep(0.1)


def test_settings_methods_of_the_sdk(stack: Stack, sdk: WorkspaceClient, registered_models):
    # Waited for: the runtime agent's first two builds at once can fail importing mlflow in parallel.
    sdk.serving_endpoints.create_and_wait(
        name="extras",
        config=EndpointCoreConfigInput(name="extras", served_entities=[iris(registered_models)]),
        timeout=TIMEOUT,
    )

    # update_notifications → {"name", "email_notifications"}, and get shows them.
    emails = EmailNotifications(on_update_failure=["ops@example.com"], on_update_success=["ml@example.com"])
    answer = sdk.serving_endpoints.update_notifications("extras", email_notifications=emails)
    assert answer.name == "extras" and answer.email_notifications == emails
    assert sdk.serving_endpoints.get("extras").email_notifications == emails

    # put: legacy rate limits, read back as such and stored as AI-gateway rate limits.
    limits = [RateLimit(calls=50, key=RateLimitKey.USER, renewal_period=RateLimitRenewalPeriod.MINUTE)]
    assert sdk.serving_endpoints.put("extras", rate_limits=limits).rate_limits == limits
    stored = sdk.serving_endpoints.get("extras").ai_gateway.rate_limits
    assert [(r.calls, r.key.value, r.renewal_period.value) for r in stored] == [(50, "user", "minute")]

    # patch_telemetry_config → the endpoint; no config removes it.
    telemetry = TelemetryConfig(
        enabled_telemetry_features=[TelemetryFeature.TELEMETRY_FEATURE_INFERENCE_TABLE],
        inference_table_config=TelemetryInferenceTableConfig(name="main.serving.extras", sampling_fraction=0.5),
    )
    patched = sdk.serving_endpoints.patch_telemetry_config("extras", telemetry_config=telemetry)
    assert patched.name == "extras" and patched.telemetry_config == telemetry
    assert sdk.serving_endpoints.patch_telemetry_config("extras").telemetry_config is None

    # patch (tags), list and permissions keep working beside them.
    tags = sdk.serving_endpoints.patch("extras", add_tags=[EndpointTag(key="team", value="ml")])
    assert [(t.key, t.value) for t in tags.tags] == [("team", "ml")]
    assert "extras" in [e.name for e in sdk.serving_endpoints.list()]
    endpoint_id = sdk.serving_endpoints.get("extras").id
    levels = [p.permission_level for p in sdk.serving_endpoints.get_permission_levels(endpoint_id).permission_levels]
    assert ServingEndpointPermissionLevel.CAN_QUERY in levels

    # Not supported here: a clear 400 the SDK raises as BadRequest, not a 404/405.
    with pytest.raises(BadRequest, match="Unity Catalog connections are not supported"):
        sdk.serving_endpoints.http_request(
            conn="my-connection", method=ExternalFunctionRequestHttpMethod.GET, path="/api/v1/items"
        )
    pt = PtEndpointCoreConfig(
        served_entities=[PtServedModel(entity_name="system.ai.llama", provisioned_model_units=50)]
    )
    with pytest.raises(BadRequest, match="Provisioned-throughput endpoints .* not supported"):
        sdk.serving_endpoints.create_provisioned_throughput_endpoint(name="llama", config=pt)
    with pytest.raises(BadRequest, match="not supported"):
        sdk.serving_endpoints.update_provisioned_throughput_endpoint_config(name="extras", config=pt)
    sdk.serving_endpoints.delete("extras")  # its replicas stop now, before the next test's database


def test_a_route_optimized_endpoint_is_queried_through_its_data_plane(
    stack: Stack, sdk: WorkspaceClient, registered_models, django_user_model
):
    # 1. Route-optimized at create: get shows where its data plane is and what to ask a token for.
    sdk.serving_endpoints.create_and_wait(
        name="routed",
        config=EndpointCoreConfigInput(name="routed", served_entities=[iris(registered_models)]),
        route_optimized=True,
        timeout=TIMEOUT,
    )
    sdk.serving_endpoints.create(
        name="elsewhere", config=EndpointCoreConfigInput(name="elsewhere", served_entities=[iris(registered_models)])
    )
    routed = sdk.serving_endpoints.get("routed")
    url = f"{stack.url}/serving-endpoints/routed/invocations"
    assert routed.route_optimized and routed.endpoint_url == url
    assert routed.data_plane_info.query_info.endpoint_url == url
    (detail,) = json.loads(routed.data_plane_info.query_info.authorization_details)
    assert detail["object_path"] == f"/serving-endpoints/{routed.id}"
    assert detail["actions"] == ["query_inference_endpoint"]
    assert sdk.serving_endpoints.get("elsewhere").data_plane_info is None

    # 2. quinn may query it (granted with the SDK's permissions API), and signs in with OAuth:
    #    her user name and a personal access token as the client credentials.
    quinn = django_user_model.objects.create_user("quinn", "quinn@example.com", "pw-quinn-12345")
    UserProfile.objects.create(user=quinn, role=Role.NONE)
    quinn_token = create_token(user=quinn, comment="oauth client secret")[1]
    sdk.serving_endpoints.update_permissions(
        routed.id,
        access_control_list=[
            ServingEndpointAccessControlRequest(
                user_name="quinn", permission_level=ServingEndpointPermissionLevel.CAN_QUERY
            )
        ],
    )
    oauth_client = WorkspaceClient(host=stack.url, client_id="quinn", client_secret=quinn_token, auth_type="oauth-m2m")
    assert oauth_client.config.auth_type == "oauth-m2m"

    # 3. The data-plane query: get → token exchange at /oidc/v1/token → POST endpoint_url.
    answer = oauth_client.serving_endpoints_data_plane.query(
        "routed", dataframe_split=DataframeSplitInput(columns=IRIS_COLUMNS, data=[ROW, ROW])
    )
    assert answer.predictions == [0, 0] and answer.served_model_name == "iris-1"

    # 4. The same exchange by hand: the data-plane token is short-lived and queries that endpoint only.
    workspace = oauth_client.config.oauth_token().access_token
    exchanged = requests.post(
        stack.url + TOKEN_URL,
        data={
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "assertion": workspace,
            "authorization_details": routed.data_plane_info.query_info.authorization_details,
        },
        timeout=10,
    )
    assert exchanged.status_code == 200, exchanged.text
    assert 0 < exchanged.json()["expires_in"] <= 900
    data_plane = {"Authorization": f"Bearer {exchanged.json()['access_token']}"}
    body = {"dataframe_split": {"columns": IRIS_COLUMNS, "data": [ROW]}}
    assert requests.post(url, json=body, headers=data_plane, timeout=30).status_code == 200
    elsewhere = requests.post(
        f"{stack.url}/serving-endpoints/elsewhere/invocations", json=body, headers=data_plane, timeout=30
    )
    assert elsewhere.status_code == 404  # quinn cannot see it: as for any token of hers
    elsewhere_id = sdk.serving_endpoints.get("elsewhere").id
    sdk.serving_endpoints.update_permissions(
        elsewhere_id,
        access_control_list=[
            ServingEndpointAccessControlRequest(
                user_name="quinn", permission_level=ServingEndpointPermissionLevel.CAN_QUERY
            )
        ],
    )

    def refused_elsewhere() -> bool:
        answer = requests.post(
            f"{stack.url}/serving-endpoints/elsewhere/invocations", json=body, headers=data_plane, timeout=30
        )
        return answer.status_code == 403 and "queries another endpoint" in answer.json()["message"]

    within(2, refused_elsewhere)  # she may query it, but not with this token
    assert requests.get(f"{stack.url}/api/2.0/serving-endpoints", headers=data_plane, timeout=10).status_code == 401
    # quinn's workspace token works on the API as she does; she may query, not manage.
    with pytest.raises(PermissionDenied):
        oauth_client.serving_endpoints.update_notifications("routed", email_notifications=EmailNotifications())

    # 5. Her rights and her token still rule it: a revoke reaches the gateway within a second.
    sdk.serving_endpoints.set_permissions(routed.id, access_control_list=[])
    within(2, lambda: requests.post(url, json=body, headers=data_plane, timeout=30).status_code == 404)
    sdk.serving_endpoints.update_permissions(
        routed.id,
        access_control_list=[
            ServingEndpointAccessControlRequest(
                user_name="quinn", permission_level=ServingEndpointPermissionLevel.CAN_QUERY
            )
        ],
    )
    within(2, lambda: requests.post(url, json=body, headers=data_plane, timeout=30).status_code == 200)
    revoke_token(token=AccessToken.objects.get(user=quinn))
    within(2, lambda: requests.post(url, json=body, headers=data_plane, timeout=30).status_code == 401)
    refused = requests.post(
        stack.url + TOKEN_URL,
        data={"grant_type": "client_credentials"},
        auth=("quinn", quinn_token),
        timeout=10,
    )
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
    sdk.serving_endpoints.delete("routed")
    sdk.serving_endpoints.delete("elsewhere")
