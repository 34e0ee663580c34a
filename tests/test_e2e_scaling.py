"""End to end on the real stack: scale to zero and wake-up, autoscaling under load, GPU workload
types on a host without GPUs, and the gateway's deadline."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import requests
from databricks.sdk.errors import OperationFailed
from databricks.sdk.service.serving import (
    EndpointCoreConfigInput,
    EndpointStateReady,
    ServedEntityInput,
    ServingModelWorkloadType,
)

from endpoints_app.models import Deployment, Replica, ReplicaState, ScalingDecision
from tests.model_fixtures import IRIS_COLUMNS
from tests.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("e2e_token")]

TIMEOUT = timedelta(minutes=3)
RECORD = {"inputs": [dict(zip(IRIS_COLUMNS, [5.1, 3.5, 1.4, 0.2], strict=True))]}


def query(stack: Stack, endpoint: str, body: dict, timeout: float = 90) -> requests.Response:
    return requests.post(
        f"{stack.url}/serving-endpoints/{endpoint}/invocations",
        json=body,
        headers={"Authorization": f"Bearer {stack.token}"},
        timeout=timeout,
    )


def wait_until(condition, seconds: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {seconds:.0f} s"
        time.sleep(0.25)


def ready_replicas(endpoint: str) -> int:
    return Replica.objects.filter(deployment__endpoint__name=endpoint, state=ReplicaState.READY).count()


def test_an_idle_entity_scales_to_zero_and_the_next_queries_wake_it(stack, sdk, registered_models):
    sdk.serving_endpoints.create_and_wait(
        name="e2e-zero",
        config=EndpointCoreConfigInput(
            name="e2e-zero",
            served_entities=[
                ServedEntityInput(
                    entity_name=registered_models["iris"],
                    entity_version="1",
                    workload_size="Small",
                    scale_to_zero_enabled=True,
                )
            ],
        ),
        timeout=TIMEOUT,
    )
    assert query(stack, "e2e-zero", RECORD).status_code == 200
    # Idle for the (test-sized) 4 s window: every replica stops, the endpoint stays READY.
    wait_until(lambda: Deployment.objects.get(endpoint__name="e2e-zero").desired_replicas == 0, 30, "no scale to zero")
    wait_until(lambda: ready_replicas("e2e-zero") == 0, 30, "replicas still running after scale to zero")
    got = sdk.serving_endpoints.get(name="e2e-zero")
    assert got.state.ready == EndpointStateReady.READY
    raw = requests.get(
        f"{stack.url}/api/2.0/serving-endpoints/e2e-zero", headers={"Authorization": f"Bearer {stack.token}"}
    ).json()
    assert raw["config"]["served_entities"][0]["scaled_to_zero"] is True

    # Ten queries at once while at zero: each is held until the replica is ready, none fails.
    started = time.monotonic()
    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(lambda _: query(stack, "e2e-zero", RECORD), range(10)))
    cold = time.monotonic() - started
    assert [r.status_code for r in responses] == [200] * 10, [r.text for r in responses if r.status_code != 200]
    assert all(r.json() == {"predictions": [0]} for r in responses)
    assert cold < 30
    reasons = list(
        ScalingDecision.objects.filter(deployment__endpoint__name="e2e-zero").values_list("reason", flat=True)
    )
    assert any("scale to zero" in r for r in reasons) and any("woken up" in r for r in reasons)
    text = requests.get(
        f"{stack.url}/api/2.0/serving-endpoints/e2e-zero/metrics", headers={"Authorization": f"Bearer {stack.token}"}
    ).text
    from endpoints_app.monitoring.metrics import parse_prometheus

    samples = {name: value for name, _labels, value in parse_prometheus(text)}
    assert samples["cold_starts_total"] >= 2  # the first start, and at least one wake-up
    assert 0 < samples["cold_start_duration_seconds"] < 30


def test_replicas_follow_the_load_between_the_workload_size_bounds(stack, sdk, registered_models):
    sdk.serving_endpoints.create_and_wait(
        name="e2e-scale",
        config=EndpointCoreConfigInput(
            name="e2e-scale",
            served_entities=[
                ServedEntityInput(
                    entity_name=registered_models["slow"],
                    entity_version="1",
                    workload_size="Medium",
                    scale_to_zero_enabled=False,
                )
            ],
        ),
        timeout=TIMEOUT,
    )
    assert ready_replicas("e2e-scale") == 2  # Medium: 8–16 concurrency → 2–4 replicas
    stop = threading.Event()
    failures: list[int] = []

    def client() -> None:
        session = requests.Session()
        while not stop.is_set():
            r = session.post(
                f"{stack.url}/serving-endpoints/e2e-scale/invocations",
                json={"inputs": [[1.0]]},
                headers={"Authorization": f"Bearer {stack.token}"},
                timeout=60,
            )
            if r.status_code != 200:
                failures.append(r.status_code)

    clients = [threading.Thread(target=client) for _ in range(14)]
    for c in clients:
        c.start()
    try:
        wait_until(lambda: ready_replicas("e2e-scale") == 4, 60, "no scale up to 4 replicas under load")
    finally:
        stop.set()
        for c in clients:
            c.join()
    assert failures == []
    wait_until(lambda: ready_replicas("e2e-scale") == 2, 60, "no scale down to 2 replicas after the load")
    decisions = list(ScalingDecision.objects.filter(deployment__endpoint__name="e2e-scale").order_by("at"))
    assert decisions[0].to_replicas > decisions[0].from_replicas and "scale up" in decisions[0].reason
    assert decisions[-1].to_replicas == 2 and "scale down" in decisions[-1].reason
    entity = requests.get(
        f"{stack.url}/api/2.0/serving-endpoints/e2e-scale", headers={"Authorization": f"Bearer {stack.token}"}
    ).json()["config"]["served_entities"][0]
    assert (entity["min_replicas"], entity["max_replicas"], entity["target_replicas"]) == (2, 4, 2)


def test_a_gpu_workload_on_a_host_without_gpus_fails_and_nothing_else_changes(stack, sdk, registered_models):
    sdk.serving_endpoints.create_and_wait(
        name="e2e-gpu",
        config=EndpointCoreConfigInput(
            name="e2e-gpu",
            served_entities=[
                ServedEntityInput(
                    entity_name=registered_models["iris"],
                    entity_version="1",
                    workload_size="Small",
                    scale_to_zero_enabled=False,
                )
            ],
        ),
        timeout=TIMEOUT,
    )
    with pytest.raises(OperationFailed):
        sdk.serving_endpoints.update_config_and_wait(
            name="e2e-gpu",
            served_entities=[
                ServedEntityInput(
                    entity_name=registered_models["iris"],
                    entity_version="2",
                    workload_size="Small",
                    workload_type=ServingModelWorkloadType.GPU_SMALL,
                    scale_to_zero_enabled=False,
                )
            ],
            timeout=TIMEOUT,
        )
    got = sdk.serving_endpoints.get(name="e2e-gpu")
    assert "needs a GPU" in got.pending_config.served_entities[0].state.deployment_state_message
    assert got.config.config_version == 1
    assert query(stack, "e2e-gpu", RECORD).headers["served-model-name"] == "iris-1"


def test_a_query_past_the_deadline_gets_504(stack, sdk, registered_models):
    sdk.serving_endpoints.create_and_wait(
        name="e2e-slow",
        config=EndpointCoreConfigInput(
            name="e2e-slow",
            served_entities=[
                ServedEntityInput(
                    entity_name=registered_models["very_slow"],
                    entity_version="1",
                    workload_size="Small",
                    scale_to_zero_enabled=False,
                )
            ],
        ),
        timeout=TIMEOUT,
    )
    started = time.monotonic()
    response = query(stack, "e2e-slow", {"inputs": [[1.0]]})
    assert response.status_code == 504  # the stack's deadline is 6 s; the model takes 10 s
    assert response.json()["error_code"] == "DEADLINE_EXCEEDED"
    assert 5 < time.monotonic() - started < 9
