"""mlflow's Databricks deployment client, unchanged, against the live stack.

``mlflow.deployments.get_deploy_client("databricks")`` reads ``DATABRICKS_HOST`` and
``DATABRICKS_TOKEN``, lists and creates at ``/api/2.0/serving-endpoints/`` (with the trailing
slash Databricks accepts), sends a create's legacy ``rate_limits`` beside its config, and sets them
with ``PUT …/rate-limits``; here they are AI-gateway rate limits the gateway enforces.
"""

from __future__ import annotations

import time

import pytest
import requests
from mlflow.deployments import get_deploy_client
from mlflow.exceptions import MlflowException

from tests.model_fixtures import IRIS_COLUMNS
from tests.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("e2e_token")]

ROW = [5.1, 3.5, 1.4, 0.2]
# What mlflow raises for an error answer: requests' HTTPError with the body, or MlflowException.
ERRORS = (requests.HTTPError, MlflowException)
QUERY = {"dataframe_split": {"columns": IRIS_COLUMNS, "data": [ROW]}}


@pytest.fixture
def client(stack: Stack, monkeypatch, tmp_path):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DATABRICKS_HOST", stack.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", stack.token)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-databrickscfg"))
    return get_deploy_client("databricks")


def query(stack: Stack) -> requests.Response:
    """What mlflow's ``predict`` posts, answered as is."""
    return requests.post(
        f"{stack.url}/serving-endpoints/mlflow-iris/invocations",
        json=QUERY,
        headers={"Authorization": f"Bearer {stack.token}"},
        timeout=30,
    )


def wait_ready(client, name: str, timeout: float = 180) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        endpoint = client.get_endpoint(endpoint=name)
        if endpoint["state"]["config_update"] == "NOT_UPDATING":
            assert endpoint["state"]["ready"] == "READY", endpoint
            return endpoint
        assert endpoint["state"]["config_update"] == "IN_PROGRESS", endpoint
        assert time.monotonic() < deadline, endpoint
        time.sleep(1)


def test_create_with_rate_limits_predict_update_limits_list_and_delete(stack: Stack, client, registered_models):
    # 1. Create, legacy rate limits included (POST /api/2.0/serving-endpoints/).
    created = client.create_endpoint(
        config={
            "name": "mlflow-iris",
            "config": {
                "served_entities": [
                    {
                        "entity_name": registered_models["iris"],
                        "entity_version": "1",
                        "workload_size": "Small",
                        "scale_to_zero_enabled": False,
                    }
                ]
            },
            "rate_limits": [{"calls": 3, "key": "endpoint", "renewal_period": "minute"}],
            "tags": [{"key": "team", "value": "ml"}],
        }
    )
    assert created["name"] == "mlflow-iris"
    assert created["ai_gateway"]["rate_limits"] == [{"calls": 3, "key": "endpoint", "renewal_period": "minute"}]
    assert wait_ready(client, "mlflow-iris")["tags"] == [{"key": "team", "value": "ml"}]

    # 2. predict, then the same query as mlflow posts it: three calls per (clock) minute for the
    #    whole endpoint, so within four more one is refused with 429 and Retry-After (mlflow's
    #    client would wait that long and retry, so the refusal is read with requests).
    for _ in range(3):
        assert client.predict(endpoint="mlflow-iris", inputs=QUERY)["predictions"] == [0]
    answers = [query(stack) for _ in range(4)]
    refused = [a for a in answers if a.status_code == 429]
    assert refused and refused[0].json()["error_code"] == "REQUEST_LIMIT_EXCEEDED", [a.text for a in answers]
    assert 1 <= int(refused[0].headers["Retry-After"]) <= 60

    # 3. update_endpoint_rate_limits (PUT …/rate-limits) answers what it set, and the gateway
    #    follows within its route-table refresh: per user now, a fresh budget.
    limits = {"rate_limits": [{"calls": 100, "key": "user", "renewal_period": "minute"}]}
    assert client.update_endpoint_rate_limits(endpoint="mlflow-iris", config=limits) == limits
    assert client.get_endpoint(endpoint="mlflow-iris")["ai_gateway"]["rate_limits"] == limits["rate_limits"]
    deadline = time.monotonic() + 5
    while query(stack).status_code == 429:
        assert time.monotonic() < deadline, "the new rate limits did not reach the gateway"
        time.sleep(0.5)
    assert client.predict(endpoint="mlflow-iris", inputs=QUERY)["predictions"] == [0]

    # 4. list (GET /api/2.0/serving-endpoints/), delete, and get of what is gone.
    assert [e["name"] for e in client.list_endpoints()] == ["mlflow-iris"]
    client.delete_endpoint(endpoint="mlflow-iris")
    with pytest.raises(ERRORS, match="RESOURCE_DOES_NOT_EXIST"):
        client.get_endpoint(endpoint="mlflow-iris")
    assert client.list_endpoints() == []


def test_the_deprecated_create_form_sends_rate_limits_too(stack: Stack, client, registered_models):
    """``create_endpoint(name=..., config={...})`` moves ``rate_limits`` out of the config (mlflow's own code)."""
    with pytest.warns(UserWarning, match="deprecated"):
        created = client.create_endpoint(
            name="mlflow-old-style",
            config={
                "served_entities": [
                    {"entity_name": registered_models["iris"], "entity_version": "1", "workload_size": "Small"}
                ],
                "rate_limits": [{"calls": 7, "renewal_period": "minute"}],
            },
        )
    assert created["ai_gateway"]["rate_limits"] == [{"calls": 7, "key": "endpoint", "renewal_period": "minute"}]
    wait_ready(client, "mlflow-old-style")
    client.delete_endpoint(endpoint="mlflow-old-style")
    gone = requests.get(
        f"{stack.url}/api/2.0/serving-endpoints/mlflow-old-style",
        headers={"Authorization": f"Bearer {stack.token}"},
        timeout=10,
    )
    assert gone.status_code == 404
