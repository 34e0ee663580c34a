"""End to end: shadow traffic on the real stack (issue 17 part 4).

Two endpoints, deployed together: ``shadow-agree`` answers with iris v1 and mirrors every query
to iris v2 (the pair agree on rows 0-49 of iris and on none of rows 50-149, so on a third of the
150 rows), under a rate limit of 3 calls a minute per user; ``shadow-slow`` answers with iris v1
and mirrors to a model that takes 10 s per query, past the gateway's 2 s timeout, through a queue
of 3 with one mirror at a time. Timing (the caller's p50 with and without a shadow) is measured by
benchmarks/bench_shadow.py, not asserted here.
"""

from __future__ import annotations

import time

import pytest
import requests

from endpoints_app.models import MetricPoint
from endpoints_app.monitoring.metrics import parse_prometheus
from tests.model_fixtures import IRIS_COLUMNS, iris_frame
from tests.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("e2e_token")]

API = "/api/2.0/serving-endpoints"


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, registered_models, tmp_path_factory):
    """The stack with a small mirror queue and a short gateway timeout (the shadow's errors)."""
    from django.db import connection

    from tests.stack import database_url, start_stack

    with django_db_blocker.unblock():
        db = database_url(connection.settings_dict)
    running = start_stack(
        database=db,
        token="",
        log_path=tmp_path_factory.mktemp("stack") / "stack.log",
        extra_env={
            "MODELFLEET_GATEWAY_SHADOW_QUEUE_SIZE": "3",
            "MODELFLEET_GATEWAY_SHADOW_CONCURRENCY": "1",
            "MODELFLEET_GATEWAY_TIMEOUT_SECONDS": "2",
        },
    )
    try:
        yield running
    finally:
        running.stop()


def headers(stack: Stack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.token}"}


def entity(model: str, version: str, name: str) -> dict:
    return {
        "name": name,
        "entity_name": model,
        "entity_version": version,
        "workload_size": "Small",
        "scale_to_zero_enabled": False,
    }


def create(stack: Stack, body: dict) -> None:
    response = requests.post(stack.url + API, json=body, headers=headers(stack), timeout=30)
    assert response.status_code == 200, response.text


def wait_ready(stack: Stack, *names: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            state = requests.get(f"{stack.url}{API}/{name}", headers=headers(stack), timeout=30).json()["state"]
            if state["ready"] == "READY" and state["config_update"] == "NOT_UPDATING":
                pending.discard(name)
            assert state["config_update"] != "UPDATE_FAILED", state
        time.sleep(1)
    assert not pending, f"not ready: {pending}\n{stack.log()[-5000:]}"
    time.sleep(1.5)  # past the gateway's route-table TTL


def query(stack: Stack, endpoint: str, rows: list[list[float]]) -> requests.Response:
    return requests.post(
        f"{stack.url}/serving-endpoints/{endpoint}/invocations",
        json={"dataframe_split": {"columns": IRIS_COLUMNS, "data": rows}},
        headers=headers(stack),
        timeout=30,
    )


def exported(stack: Stack, endpoint: str) -> dict[tuple[str, str], float]:
    """The endpoint's Prometheus export: {(metric, served entity): value}."""
    text = requests.get(f"{stack.url}{API}/{endpoint}/metrics", headers=headers(stack), timeout=30).text
    return {(name, labels.get("served_entity", "")): value for name, labels, value in parse_prometheus(text)}


def wait_for(condition, seconds: float = 30) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.25)
    return condition()


def test_shadow_traffic_end_to_end(stack, registered_models, sdk):
    iris = registered_models["iris"]
    create(
        stack,
        {
            "name": "shadow-agree",
            "config": {
                "served_entities": [entity(iris, "1", "current"), entity(iris, "2", "candidate")],
                "traffic_config": {
                    "routes": [
                        {"served_model_name": "current", "traffic_percentage": 100},
                        {"served_model_name": "candidate", "traffic_percentage": 0},
                    ],
                    "shadow": [{"served_entity_name": "candidate", "percentage": 100}],
                },
            },
            "ai_gateway": {"rate_limits": [{"calls": 3, "key": "user", "renewal_period": "minute"}]},
        },
    )
    create(
        stack,
        {
            "name": "shadow-slow",
            "config": {
                "served_entities": [entity(iris, "1", "current"), entity(registered_models["very_slow"], "1", "slow")],
                "traffic_config": {
                    "routes": [{"served_model_name": "current", "traffic_percentage": 100}],
                    "shadow": [{"served_entity_name": "slow", "percentage": 100}],
                },
            },
        },
    )
    wait_ready(stack, "shadow-agree", "shadow-slow")

    # The official SDK reads the config with the extension (it ignores the shadow list).
    got = sdk.serving_endpoints.get("shadow-agree")
    assert [r.served_model_name for r in got.config.traffic_config.routes] == ["current", "candidate"]
    assert {e.name for e in got.config.served_entities} == {"current", "candidate"}
    raw = requests.get(f"{stack.url}{API}/shadow-agree", headers=headers(stack), timeout=30).json()
    assert raw["config"]["traffic_config"]["shadow"] == [
        {"served_entity_name": "candidate", "percentage": 100, "agreement_tolerance": 0.0}
    ]

    # 1. Agreement: 150 iris rows in three queries, all mirrored; v1 answers every caller.
    features, _ = iris_frame()
    rows = features.values.tolist()
    for start in (0, 50, 100):
        response = query(stack, "shadow-agree", rows[start : start + 50])
        assert response.status_code == 200, response.text
        assert response.headers["served-model-name"] == "current"
    assert wait_for(
        lambda: exported(stack, "shadow-agree").get(("shadow_predictions_compared_total", "candidate")) == 150
    ), stack.log()[-3000:]
    metrics = exported(stack, "shadow-agree")
    assert metrics[("shadow_predictions_agreed_total", "candidate")] == 50  # rows 0-49
    assert metrics[("request_count_total", "candidate")] == 3  # the shadow's own latency and errors
    assert metrics[("request_count_total", "current")] == 3

    # 2. Mirrors do not count against the caller's rate limit: 3 calls a minute, 3 were answered
    # (and mirrored); the 4th is the caller's own.
    limited = query(stack, "shadow-agree", rows[:1])
    assert limited.status_code == 429, limited.text
    assert limited.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"

    # 3. Charted: the shadow's points carry the agreement, the endpoint's total leaves mirrors out.
    def agreement_series() -> list:
        response = requests.get(
            f"{stack.url}/api/2.0/modelfleet/serving-endpoints/shadow-agree/metric-series",
            params={"metrics": "agreement_rate,request_rate", "served_model": "candidate"},
            headers=headers(stack),
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return [v for _, v in response.json()["series"]["agreement_rate"] if v is not None]

    assert wait_for(lambda: bool(agreement_series()), 30)
    assert wait_for(
        lambda: (
            sum(p.shadow_compared for p in MetricPoint.objects.filter(served_entity_name="candidate", resolution=15))
            == 150
        ),
        30,
    )
    points = MetricPoint.objects.filter(endpoint__name="shadow-agree", resolution=15)
    shadow = points.filter(served_entity_name="candidate")
    assert sum(p.shadow_agreed for p in shadow) == 50
    assert sum(p.request_count for p in shadow) == 3
    # The endpoint's total: the three answered by "current" and the one refused by the rate limit;
    # not the mirrors.
    assert wait_for(lambda: sum(p.request_count for p in points.filter(served_entity_name="")) == 4, 30)
    assert sum(p.request_count for p in points.filter(served_entity_name="current")) == 3
    assert all(0 <= v <= 1 for v in agreement_series())

    # 4. A failing shadow never reaches the caller, and a full queue drops and counts: ten quick
    # queries, one mirror at a time that times out after 2 s, three waiting; the rest dropped.
    answers = [query(stack, "shadow-slow", rows[i : i + 1]) for i in range(10)]
    assert [a.status_code for a in answers] == [200] * 10
    assert {a.headers["served-model-name"] for a in answers} == {"current"}
    assert [a.json()["predictions"] for a in answers] == [[0]] * 10

    def settled() -> bool:
        m = exported(stack, "shadow-slow")
        mirrored = m.get(("request_count_total", "slow"), 0)
        dropped = m.get(("shadow_mirrors_dropped_total", "slow"), 0)
        return mirrored + dropped == 10

    assert wait_for(settled, 40), exported(stack, "shadow-slow")
    m = exported(stack, "shadow-slow")
    dropped = m[("shadow_mirrors_dropped_total", "slow")]
    assert dropped >= 5
    assert m[("request_5xx_count_total", "slow")] == 10 - dropped  # every mirror timed out (504)
    assert m[("request_5xx_count_total", "current")] == 0
    assert m.get(("shadow_predictions_compared_total", "slow"), 0) == 0  # no answer, nothing compared
