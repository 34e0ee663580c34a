"""The Databricks SDK, unchanged, signed in as a service principal with OAuth machine-to-machine
(``WorkspaceClient(client_id=…, client_secret=…, auth_type="oauth-m2m")``) against the live
stack: it creates, queries and deletes an endpoint it manages, is refused what it was not granted,
is granted by ``service_principal_name``; an expired token and a deleted principal's token get 401
at the API and at the gateway. The SDK's ``w.tokens`` (``/api/2.0/token/…``) rides along.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import requests
from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import NotFound, PermissionDenied
from databricks.sdk.service.serving import (
    DataframeSplitInput,
    EndpointCoreConfigInput,
    ServedEntityInput,
    ServingEndpointAccessControlRequest,
    ServingEndpointPermissionLevel,
)

from endpoints_app.models import ServicePrincipal
from endpoints_app.services import signed_tokens
from tests.model_fixtures import IRIS_COLUMNS
from tests.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("e2e_token")]

ROW = [5.1, 3.5, 1.4, 0.2]
TIMEOUT = timedelta(minutes=3)
SP = "/api/2.0/modelfleet/service-principals"


def within(seconds: float, check) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "did not happen in time"
        time.sleep(0.1)


def create_principal(stack: Stack, name: str, role: str = "") -> dict:
    answer = requests.post(
        stack.url + SP,
        json={"display_name": name, "role": role},
        headers={"Authorization": f"Bearer {stack.token}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def oauth_client(stack: Stack, principal: dict) -> WorkspaceClient:
    client = WorkspaceClient(
        host=stack.url, client_id=principal["application_id"], client_secret=principal["secret"], auth_type="oauth-m2m"
    )
    assert client.config.auth_type == "oauth-m2m"
    return client


def statuses(stack: Stack, token: str) -> tuple[int, int]:
    """(the API's answer, the gateway's answer) for ``token``."""
    headers = {"Authorization": f"Bearer {token}"}
    api = requests.get(f"{stack.url}/api/2.0/serving-endpoints", headers=headers, timeout=10)
    query = requests.post(
        f"{stack.url}/serving-endpoints/sp-made/invocations",
        json={"dataframe_split": {"columns": IRIS_COLUMNS, "data": [ROW]}},
        headers=headers,
        timeout=30,
    )
    return api.status_code, query.status_code


def test_a_service_principal_manages_an_endpoint_with_oauth_m2m_and_nothing_more(
    stack: Stack, sdk: WorkspaceClient, registered_models
):
    # 1. A principal with the editor role creates, and so manages, an endpoint through the SDK.
    deployer = create_principal(stack, "deployer", "editor")
    w = oauth_client(stack, deployer)
    iris = ServedEntityInput(
        entity_name=registered_models["iris"], entity_version="1", workload_size="Small", scale_to_zero_enabled=False
    )
    w.serving_endpoints.create_and_wait(
        name="sp-made", config=EndpointCoreConfigInput(name="sp-made", served_entities=[iris]), timeout=TIMEOUT
    )
    answer = w.serving_endpoints.query("sp-made", dataframe_split=DataframeSplitInput(columns=IRIS_COLUMNS, data=[ROW]))
    assert answer.predictions == [0]
    endpoint_id = w.serving_endpoints.get("sp-made").id
    token = w.config.oauth_token()
    assert 3500 < (token.expiry.timestamp() - time.time()) <= 3600  # an hour, as Databricks gives

    # 2. Another principal, with no role and no grant, is refused everything about it.
    outsider = create_principal(stack, "outsider")
    o = oauth_client(stack, outsider)
    with pytest.raises(NotFound):
        o.serving_endpoints.get("sp-made")
    with pytest.raises(NotFound):
        o.serving_endpoints.query("sp-made", dataframe_split=DataframeSplitInput(columns=IRIS_COLUMNS, data=[ROW]))
    with pytest.raises(NotFound):
        o.serving_endpoints.delete("sp-made")
    with pytest.raises(PermissionDenied):
        o.serving_endpoints.create(
            name="not-allowed", config=EndpointCoreConfigInput(name="not-allowed", served_entities=[iris])
        )
    assert [e.name for e in o.serving_endpoints.list()] == []

    # 3. The deployer grants it CAN_MANAGE by its application id, as Databricks names principals.
    w.serving_endpoints.update_permissions(
        endpoint_id,
        access_control_list=[
            ServingEndpointAccessControlRequest(
                service_principal_name=outsider["application_id"],
                permission_level=ServingEndpointPermissionLevel.CAN_MANAGE,
            )
        ],
    )
    acl = sdk.serving_endpoints.get_permissions(endpoint_id).access_control_list
    granted = {a.service_principal_name: a.all_permissions[0].permission_level for a in acl if a.service_principal_name}
    assert granted[outsider["application_id"]] == ServingEndpointPermissionLevel.CAN_MANAGE
    within(2, lambda: statuses(stack, o.config.oauth_token().access_token)[1] == 200)  # the grant reaches the gateway
    answer = o.serving_endpoints.query("sp-made", dataframe_split=DataframeSplitInput(columns=IRIS_COLUMNS, data=[ROW]))
    assert answer.predictions == [0]

    # 4. The deployer is deleted: its token gets 401 at the API and the gateway (within a second).
    raw = token.access_token
    assert statuses(stack, raw) == (200, 200)
    gone = requests.delete(
        f"{stack.url}{SP}/{deployer['application_id']}", headers={"Authorization": f"Bearer {stack.token}"}, timeout=10
    )
    assert gone.status_code == 200
    within(2, lambda: statuses(stack, raw) == (401, 401))
    with pytest.raises(Exception) as refused:  # noqa: B017 - the SDK wraps the token endpoint's 401 its own way
        list(oauth_client(stack, deployer).serving_endpoints.list())  # its secret no longer signs in
    assert "invalid" in str(refused.value).lower()

    # 5. An expired token of the outsider gets 401 at both, at once.
    principal = ServicePrincipal.objects.get(application_id=outsider["application_id"])
    expires_at = int(time.time()) + 3
    short = signed_tokens.mint(
        signed_tokens.Claims(
            kind="workspace",
            user_id=principal.user.pk,
            token_id=0,
            secret_id=principal.secrets.get().pk,
            expires_at=expires_at,
        )
    )
    assert statuses(stack, short) == (200, 200)
    time.sleep(max(0.0, expires_at - time.time()) + 0.2)
    assert statuses(stack, short) == (401, 401)

    # 6. The outsider, granted CAN_MANAGE, deletes the endpoint.
    o.serving_endpoints.delete("sp-made")
    with pytest.raises(NotFound):
        sdk.serving_endpoints.get("sp-made")


def test_the_sdks_token_api_creates_expiring_tokens(stack: Stack, sdk: WorkspaceClient):
    made = sdk.tokens.create(comment="short-lived", lifetime_seconds=600)
    assert made.token_value and made.token_info.comment == "short-lived"
    assert made.token_info.expiry_time - made.token_info.creation_time == pytest.approx(600_000, abs=1000)
    assert made.token_info.token_id in [t.token_id for t in sdk.tokens.list()]
    assert WorkspaceClient(host=stack.url, token=made.token_value).serving_endpoints.list() is not None
    sdk.tokens.delete(made.token_info.token_id)
    assert made.token_info.token_id not in [t.token_id for t in sdk.tokens.list()]
