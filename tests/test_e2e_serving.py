"""End to end: the real stack (web + gateway, Celery worker and beat, runtime agent, model servers)
driven with the official databricks-sdk, curl-like HTTP and the modelfleet CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from databricks.sdk.errors import OperationFailed, ResourceDoesNotExist
from databricks.sdk.service.serving import (
    DataframeSplitInput,
    EndpointCoreConfigInput,
    EndpointStateConfigUpdate,
    EndpointStateReady,
    Route,
    ServedEntityInput,
    TrafficConfig,
)

from endpoints_app.models import Deployment, Replica, ReplicaState
from tests.model_fixtures import IRIS_COLUMNS, iris_frame
from tests.stack import Stack

# Transactional: the stack's processes must see what the test writes, and the test what they write.
pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("e2e_token")]

ROW = [5.1, 3.5, 1.4, 0.2]
TIMEOUT = timedelta(minutes=3)


def entity(name: str, version: str, **kw) -> ServedEntityInput:
    return ServedEntityInput(
        entity_name=name, entity_version=version, workload_size="Small", scale_to_zero_enabled=False, **kw
    )


def query(
    stack: Stack, endpoint: str, body: dict, *, path: str | None = None, token: str | None = None
) -> requests.Response:
    url = f"{stack.url}/serving-endpoints/{endpoint}/{path or 'invocations'}"
    return requests.post(url, json=body, headers={"Authorization": f"Bearer {token or stack.token}"}, timeout=30)


def test_the_sdk_workflow_create_query_split_logs_delete(stack, sdk, registered_models):
    iris = registered_models["iris"]
    features, _ = iris_frame()

    # 1. create_and_wait → READY, then query with the SDK.
    created = sdk.serving_endpoints.create_and_wait(
        name="e2e-sdk",
        config=EndpointCoreConfigInput(name="e2e-sdk", served_entities=[entity(iris, "1")]),
        timeout=TIMEOUT,
    )
    assert created.state.ready == EndpointStateReady.READY
    assert created.config.config_version == 1
    answer = sdk.serving_endpoints.query(
        name="e2e-sdk", dataframe_split=DataframeSplitInput(columns=IRIS_COLUMNS, data=features.head(5).values.tolist())
    )
    assert answer.served_model_name == "iris-1"
    assert answer.predictions == [0, 0, 0, 0, 0]

    # 2. update to two versions at 80/20 while a client keeps querying: no request may fail.
    failures: list[int] = []
    served: Counter[str] = Counter()
    stop = threading.Event()

    def steady_traffic() -> None:
        session = requests.Session()
        while not stop.is_set():
            r = session.post(
                f"{stack.url}/serving-endpoints/e2e-sdk/invocations",
                json={"dataframe_split": {"columns": IRIS_COLUMNS, "data": [ROW]}},
                headers={"Authorization": f"Bearer {stack.token}"},
                timeout=30,
            )
            if r.status_code != 200:
                failures.append(r.status_code)
            served[r.headers.get("served-model-name", "")] += 1

    client = threading.Thread(target=steady_traffic)
    client.start()
    try:
        updated = sdk.serving_endpoints.update_config_and_wait(
            name="e2e-sdk",
            served_entities=[entity(iris, "1"), entity(iris, "2")],
            traffic_config=TrafficConfig(
                routes=[
                    Route(served_model_name="iris-1", traffic_percentage=80),
                    Route(served_model_name="iris-2", traffic_percentage=20),
                ]
            ),
            timeout=TIMEOUT,
        )
        time.sleep(2)
    finally:
        stop.set()
        client.join()
    assert failures == []
    assert sum(served.values()) > 20
    assert updated.config.config_version == 2
    assert updated.state.config_update == EndpointStateConfigUpdate.NOT_UPDATING

    # 3. the observed split over 2,000 queries is within ±4 points of 80/20.
    seen: Counter[str] = Counter()
    for _ in range(2000):
        seen[
            sdk.serving_endpoints.query(
                name="e2e-sdk", inputs=[dict(zip(IRIS_COLUMNS, ROW, strict=True))]
            ).served_model_name
        ] += 1
    assert set(seen) == {"iris-1", "iris-2"}
    assert abs(seen["iris-1"] / 2000 * 100 - 80) <= 4, seen

    # 4. logs and build logs of each served model.
    assert "model loaded" in sdk.serving_endpoints.logs(name="e2e-sdk", served_model_name="iris-1").logs
    assert "Build finished" in sdk.serving_endpoints.build_logs(name="e2e-sdk", served_model_name="iris-2").logs

    # 5. delete → get raises ResourceDoesNotExist, and the replicas stop.
    sdk.serving_endpoints.delete(name="e2e-sdk")
    with pytest.raises(ResourceDoesNotExist):
        sdk.serving_endpoints.get(name="e2e-sdk")
    deadline = time.monotonic() + 30
    while (
        Replica.objects.filter(deployment__endpoint_name="e2e-sdk")
        .exclude(state__in=[ReplicaState.STOPPED, ReplicaState.FAILED])
        .exists()
    ):
        assert time.monotonic() < deadline, "replicas of a deleted endpoint are still running"
        time.sleep(0.5)


def test_a_model_that_fails_to_load_fails_the_update_and_the_old_config_keeps_serving(stack, sdk, registered_models):
    sdk.serving_endpoints.create_and_wait(
        name="e2e-fail",
        config=EndpointCoreConfigInput(name="e2e-fail", served_entities=[entity(registered_models["iris"], "1")]),
        timeout=TIMEOUT,
    )
    with pytest.raises(OperationFailed):
        sdk.serving_endpoints.update_config_and_wait(
            name="e2e-fail", served_entities=[entity(registered_models["broken"], "1")], timeout=TIMEOUT
        )
    got = sdk.serving_endpoints.get(name="e2e-fail")
    assert got.state.config_update == EndpointStateConfigUpdate.UPDATE_FAILED
    assert got.state.ready == EndpointStateReady.READY
    assert got.config.config_version == 1
    failed = got.pending_config.served_entities[0]
    assert failed.state.deployment.value == "DEPLOYMENT_FAILED"
    assert "weights file is corrupt" in failed.state.deployment_state_message
    assert "weights file is corrupt" in sdk.serving_endpoints.logs(name="e2e-fail", served_model_name="broken-1").logs

    r = query(stack, "e2e-fail", {"inputs": [dict(zip(IRIS_COLUMNS, ROW, strict=True))]})
    assert r.status_code == 200 and r.headers["served-model-name"] == "iris-1"

    # The failed replicas are cleaned up; a new update is allowed after a failure.
    broken = Deployment.objects.get(endpoint__name="e2e-fail", model_name=registered_models["broken"])
    deadline = time.monotonic() + 30
    while Deployment.objects.get(id=broken.id).stopped_at is None:
        assert time.monotonic() < deadline, "the failed deployment was not cleaned up"
        time.sleep(0.5)
    assert (
        not Replica.objects.filter(deployment=broken)
        .exclude(state__in=[ReplicaState.STOPPED, ReplicaState.FAILED])
        .exists()
    )
    sdk.serving_endpoints.update_config_and_wait(
        name="e2e-fail", served_entities=[entity(registered_models["iris"], "2")], timeout=TIMEOUT
    )
    assert sdk.serving_endpoints.get(name="e2e-fail").config.config_version == 3


def test_a_first_config_that_fails_leaves_the_endpoint_not_ready(stack, sdk, registered_models):
    with pytest.raises(OperationFailed):
        sdk.serving_endpoints.create_and_wait(
            name="e2e-fail-first",
            config=EndpointCoreConfigInput(
                name="e2e-fail-first", served_entities=[entity(registered_models["broken"], "1")]
            ),
            timeout=TIMEOUT,
        )
    r = query(stack, "e2e-fail-first", {"inputs": [[1]]})
    assert r.status_code == 503
    assert r.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert "not ready" in r.json()["message"]


def test_queries_in_every_format_and_bad_input(stack, sdk, registered_models):
    sdk.serving_endpoints.create_and_wait(
        name="e2e-query",
        config=EndpointCoreConfigInput(name="e2e-query", served_entities=[entity(registered_models["iris"], "1")]),
        timeout=TIMEOUT,
    )
    record = dict(zip(IRIS_COLUMNS, ROW, strict=True))
    for body in (
        {"dataframe_split": {"columns": IRIS_COLUMNS, "data": [ROW]}},
        {"dataframe_records": [record]},
        {"instances": [record]},
        {"inputs": [record]},
        {"inputs": {c: [v] for c, v in record.items()}, "params": {}},
    ):
        r = query(stack, "e2e-query", body)
        assert r.status_code == 200, (body, r.text)
        assert r.json() == {"predictions": [0]}
        assert r.headers["served-model-name"] == "iris-1"

    r = query(stack, "e2e-query", {"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2]]}})
    assert r.status_code == 400
    assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "petal_length" in r.json()["message"] or "schema" in r.json()["message"].lower()
    r = requests.post(
        f"{stack.url}/serving-endpoints/e2e-query/invocations",
        data="{nope",
        headers={"Authorization": f"Bearer {stack.token}"},
        timeout=10,
    )
    assert r.status_code == 400 and r.json()["error_code"] == "MALFORMED_REQUEST"
    # The replica survived the bad requests.
    assert query(stack, "e2e-query", {"inputs": [record]}).status_code == 200

    direct = query(stack, "e2e-query", {"inputs": [record]}, path="served-models/iris-1/invocations")
    assert direct.status_code == 200 and direct.headers["served-model-name"] == "iris-1"
    assert query(stack, "e2e-query", {"inputs": [record]}, path="served-models/nope/invocations").status_code == 404
    assert query(stack, "no-such-endpoint", {"inputs": [record]}).json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    unauth = query(stack, "e2e-query", {"inputs": [record]}, token="mf-wrong")
    assert unauth.status_code == 401 and unauth.json()["error_code"] == "UNAUTHENTICATED"
    assert requests.get(f"{stack.url}/serving-endpoints/e2e-query/invocations", timeout=5).status_code == 405


def modelfleet(stack: Stack, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MODELFLEET_HOST": stack.url, "MODELFLEET_TOKEN": stack.token}
    return subprocess.run(
        [str(Path(sys.executable).parent / "modelfleet"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=cwd,
    )


def test_the_seed_workflow_with_the_cli(stack, registered_models, tmp_path):
    """The seed's commands, as written there, with `databricks` replaced by `modelfleet`."""
    iris = registered_models["iris"]
    (tmp_path / "endpoint-config.json").write_text(
        json.dumps(
            {
                "name": "my-model-endpoint",
                "config": {
                    "served_entities": [
                        {
                            "entity_name": iris,
                            "entity_version": "1",
                            "workload_size": "Small",
                            "scale_to_zero_enabled": True,
                        }
                    ]
                },
            }
        )
    )
    created = modelfleet(stack, "serving-endpoints", "create", "--json", "@endpoint-config.json", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    assert "READY" in created.stdout

    got = modelfleet(stack, "serving-endpoints", "get", "--name", "my-model-endpoint", "-o", "json")
    assert json.loads(got.stdout)["state"]["ready"] == "READY"
    status = modelfleet(stack, "serving-endpoints", "get-status", "--name", "my-model-endpoint")
    assert "READY" in status.stdout and "NOT_UPDATING" in status.stdout
    listed = modelfleet(stack, "serving-endpoints", "list")
    assert "my-model-endpoint" in listed.stdout

    q = modelfleet(
        stack,
        "serving-endpoints",
        "query",
        "--name",
        "my-model-endpoint",
        "--json",
        json.dumps({"inputs": [dict(zip(IRIS_COLUMNS, ROW, strict=True))]}),
    )
    assert q.returncode == 0, q.stderr
    assert json.loads(q.stdout)["predictions"] == [0]
    bad = modelfleet(
        stack, "serving-endpoints", "query", "--name", "my-model-endpoint", "--json", '{"inputs": [{"feature1": 1.0}]}'
    )
    assert bad.returncode != 0 and bad.stderr.startswith("Error: ")

    (tmp_path / "updated-config.json").write_text(
        json.dumps(
            {
                "served_entities": [
                    {
                        "entity_name": iris,
                        "entity_version": "1",
                        "workload_size": "Small",
                        "scale_to_zero_enabled": False,
                    },
                    {
                        "entity_name": iris,
                        "entity_version": "2",
                        "workload_size": "Small",
                        "scale_to_zero_enabled": False,
                    },
                ],
                "traffic_config": {
                    "routes": [
                        {"served_model_name": "iris-1", "traffic_percentage": 80},
                        {"served_model_name": "iris-2", "traffic_percentage": 20},
                    ]
                },
            }
        )
    )
    updated = modelfleet(
        stack,
        "serving-endpoints",
        "update-config",
        "--name",
        "my-model-endpoint",
        "--json",
        "@updated-config.json",
        cwd=tmp_path,
    )
    assert updated.returncode == 0, updated.stderr
    logs = modelfleet(stack, "serving-endpoints", "logs", "--name", "my-model-endpoint")
    assert "==> iris-1 <==" in logs.stdout and "==> iris-2 <==" in logs.stdout
    patched = modelfleet(
        stack,
        "serving-endpoints",
        "patch",
        "my-model-endpoint",
        "--json",
        '{"add_tags": [{"key": "team", "value": "ml"}]}',
        "-o",
        "json",
    )
    assert json.loads(patched.stdout) == {"tags": [{"key": "team", "value": "ml"}]}

    conflict = modelfleet(stack, "serving-endpoints", "create", "--json", "@endpoint-config.json", cwd=tmp_path)
    assert conflict.returncode == 1 and "already exists" in conflict.stderr
    deleted = modelfleet(stack, "serving-endpoints", "delete", "--name", "my-model-endpoint")
    assert deleted.returncode == 0
    missing = modelfleet(stack, "serving-endpoints", "get", "--name", "my-model-endpoint")
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_models_register_and_list_with_the_cli(stack, tmp_path):
    from tests.model_fixtures import save_constant_model

    path = save_constant_model(tmp_path / "const", "b")
    registered = modelfleet(stack, "models", "register", str(path), "--name", "main.default.cli_model")
    assert registered.returncode == 0, registered.stderr
    version = registered.stdout.strip().splitlines()[-1]
    assert version == "1"
    listed = modelfleet(stack, "models", "list", "-o", "json")
    names = {m["name"] for m in json.loads(listed.stdout)}
    assert "main.default.cli_model" in names
    not_a_model = modelfleet(stack, "models", "register", str(tmp_path), "--name", "x")
    assert not_a_model.returncode != 0


def test_a_crashed_replica_is_restarted_and_serves_again(stack, sdk, registered_models):
    import signal

    sdk.serving_endpoints.create_and_wait(
        name="e2e-crash",
        config=EndpointCoreConfigInput(name="e2e-crash", served_entities=[entity(registered_models["iris"], "1")]),
        timeout=TIMEOUT,
    )
    replica = Replica.objects.get(deployment__endpoint__name="e2e-crash", state=ReplicaState.READY)
    os.kill(replica.pid, signal.SIGKILL)
    record = {"inputs": [dict(zip(IRIS_COLUMNS, ROW, strict=True))]}
    deadline = time.monotonic() + 30
    while True:
        time.sleep(0.5)
        if (
            Replica.objects.filter(deployment=replica.deployment, state=ReplicaState.READY)
            .exclude(id=replica.id)
            .exists()
        ):
            if query(stack, "e2e-crash", record).status_code == 200:
                break
        assert time.monotonic() < deadline, "the crashed replica was not replaced within 30s"
    assert Replica.objects.get(id=replica.id).state == ReplicaState.FAILED
    assert sdk.serving_endpoints.get(name="e2e-crash").state.ready == EndpointStateReady.READY


def test_metrics_follow_real_queries_and_the_sdk_exports_them(stack, sdk, registered_models):
    """Gateway counters → Redis → beat → worker poll → 15 s points; export and OpenAPI via the SDK."""
    from endpoints_app.models import Endpoint, MetricPoint
    from endpoints_app.monitoring.metrics import parse_prometheus

    sdk.serving_endpoints.create_and_wait(
        name="e2e-metrics",
        config=EndpointCoreConfigInput(name="e2e-metrics", served_entities=[entity(registered_models["iris"], "1")]),
        timeout=TIMEOUT,
    )
    good = {"inputs": [dict(zip(IRIS_COLUMNS, ROW, strict=True))]}
    bad = {"dataframe_split": {"columns": ["x"], "data": [[1]]}}
    statuses = [query(stack, "e2e-metrics", good).status_code for _ in range(40)]
    statuses += [query(stack, "e2e-metrics", bad).status_code for _ in range(5)]
    assert statuses.count(200) == 40 and statuses.count(400) == 5

    endpoint = Endpoint.objects.get(name="e2e-metrics")
    deadline = time.monotonic() + 30
    while True:
        points = MetricPoint.objects.filter(endpoint=endpoint, served_entity_name="", resolution=15)
        if sum(p.request_count for p in points) >= 45:
            break
        assert time.monotonic() < deadline, "the poller did not store the queries within 30 s"
        time.sleep(0.5)
    assert sum(p.request_count for p in points) == 45
    assert sum(p.count_4xx for p in points) == 5
    assert any(p.p50_ms for p in points)
    assert any(p.replicas and p.replicas > 0 for p in points)  # averaged over the polls of an interval

    text = sdk.serving_endpoints.export_metrics(name="e2e-metrics").contents.read().decode()
    samples = {(n, lbl.get("served_entity")): v for n, lbl, v in parse_prometheus(text) if "le" not in lbl}
    assert samples[("request_count_total", "iris-1")] == 40 + 5
    assert samples[("request_4xx_count_total", "iris-1")] == 5
    openapi = json.loads(sdk.serving_endpoints.get_open_api(name="e2e-metrics").contents.read())
    assert "/served-models/iris-1/invocations" in openapi["paths"]

    cli = modelfleet(stack, "serving-endpoints", "get-metrics", "--name", "e2e-metrics")
    assert cli.returncode == 0 and "request_count_total" in cli.stdout
