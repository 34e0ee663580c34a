"""Shadow traffic (issue 17 part 4): the ``traffic_config.shadow`` extension through the config API
and its checks, the agreement of two answers, and the mirror's bounded hand-over.

End to end on the real stack: tests/test_e2e_shadow.py.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from endpoints_app.gateway.metrics import GatewayMetrics, forget, read_counters
from endpoints_app.gateway.shadow import MirrorJob, ShadowMirror, agreement, decode, encode
from endpoints_app.models import AuditEvent, ConfigVersion, Endpoint
from endpoints_app.monitoring.metrics import shadow_names
from endpoints_app.runtime.credentials import ReplicaTarget
from tests.conftest import endpoint_body
from tests.test_api_endpoints import URL, create, mark_ready
from tests.test_external_models import external

pytestmark = pytest.mark.django_db


def shadow_body(iris: str, shadow: list, routes: list[tuple[str, int]] | None = None) -> dict:
    body = endpoint_body("shadowed", (iris, "1"), (iris, "2"), routes=routes or [("iris-1", 100)])
    body["config"]["traffic_config"]["shadow"] = shadow
    return body


def test_a_shadow_is_stored_beside_the_routes_and_read_back(api, registered_models):
    iris = registered_models["iris"]
    out = create(api, shadow_body(iris, [{"served_entity_name": "iris-2", "percentage": 25}]))
    traffic = out["pending_config"]["traffic_config"]
    assert traffic["routes"] == [
        {"served_model_name": "iris-1", "served_entity_name": "iris-1", "traffic_percentage": 100}
    ]
    assert traffic["shadow"] == [{"served_entity_name": "iris-2", "percentage": 25, "agreement_tolerance": 0.0}]
    mark_ready("shadowed")
    got = api.get(f"{URL}/shadowed").json()
    assert got["config"]["traffic_config"]["shadow"][0]["served_entity_name"] == "iris-2"
    # Both entities are deployed; the shadow is in no route with traffic.
    assert {e["name"] for e in got["config"]["served_entities"]} == {"iris-1", "iris-2"}
    # Audited like any config.
    event = AuditEvent.objects.filter(action="endpoint.create").latest("id")
    assert '"shadow"' in json.dumps(event.after)


def test_without_routes_the_one_entity_that_is_not_a_shadow_takes_all_traffic(api, registered_models):
    iris = registered_models["iris"]
    body = endpoint_body("shadowed", (iris, "1"), (iris, "2"))
    body["config"]["traffic_config"] = {"shadow": [{"served_entity_name": "iris-2", "percentage": 100}]}
    out = create(api, body)
    assert out["pending_config"]["traffic_config"]["routes"] == [
        {"served_model_name": "iris-1", "served_entity_name": "iris-1", "traffic_percentage": 100}
    ]


def test_a_config_without_shadows_stores_routes_only(api, registered_models):
    create(api, endpoint_body("plain", (registered_models["iris"], "1")))
    assert list(ConfigVersion.objects.get(endpoint__name="plain").traffic_config) == ["routes"]


@pytest.mark.parametrize(
    ("shadow", "routes", "needle"),
    [
        ([{"served_entity_name": "iris-2", "percentage": 101}], None, "percentage must be between 0 and 100"),
        ([{"served_entity_name": "iris-2", "percentage": -1}], None, "percentage must be between 0 and 100"),
        ([{"served_entity_name": "iris-2"}], None, "percentage is required"),
        ([{"served_entity_name": "iris-2", "percentage": "many"}], None, "must be an integer"),
        ([{"served_entity_name": "nope", "percentage": 10}], None, "'nope', which is not in this config"),
        ([{"percentage": 10}], None, "must name served_entity_name"),
        (
            [{"served_entity_name": "iris-2", "percentage": 10}, {"served_entity_name": "iris-2", "percentage": 5}],
            None,
            "named twice",
        ),
        ([{"served_entity_name": "iris-2", "percentage": 10}], [("iris-1", 50), ("iris-2", 50)], "is a shadow"),
        ([{"served_entity_name": "iris-2", "percentage": 10, "agreement_tolerance": -1}], None, "agreement_tolerance"),
        ([{"served_entity_name": "iris-2", "percentage": 10, "agreement_tolerance": "x"}], None, "agreement_tolerance"),
        (
            [{"served_entity_name": "iris-2", "percentage": 10, "agreement_tolerance": True}],
            None,
            "agreement_tolerance",
        ),
        ({"served_entity_name": "iris-2"}, None, "shadow must be an array"),
        (["iris-2"], None, "must be a JSON object"),
        (
            [{"served_entity_name": "iris-1", "percentage": 10}, {"served_entity_name": "iris-2", "percentage": 10}],
            [("iris-1", 100)],
            "is a shadow",
        ),
    ],
)
def test_bad_shadows_are_400_naming_the_field(api, registered_models, shadow, routes, needle):
    response = api.post(URL, shadow_body(registered_models["iris"], shadow, routes), format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert needle in response.json()["message"]
    assert not Endpoint.objects.exists()


def test_an_external_model_cannot_be_a_shadow(api):
    config = {"openai_api_key_plaintext": "sk-live-4f9a8b7c6d5e4f3a2b1c"}
    body = {
        "name": "llm",
        "config": {
            "served_entities": [
                {"name": "a", "external_model": external("openai", "openai_config", config, name="gpt-4o")},
                {"name": "b", "external_model": external("openai", "openai_config", config, name="gpt-4o-mini")},
            ],
            "traffic_config": {
                "routes": [{"served_model_name": "a", "traffic_percentage": 100}],
                "shadow": [{"served_entity_name": "b", "percentage": 100}],
            },
        },
    }
    response = api.post(URL, body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "only custom-model entities can be shadows" in response.json()["message"]


def test_an_update_takes_the_shadow_and_a_bad_one_is_refused(api, registered_models):
    iris = registered_models["iris"]
    create(api, endpoint_body("shadowed", (iris, "1")))
    mark_ready("shadowed")
    config = shadow_body(iris, [{"served_entity_name": "iris-2", "percentage": 100}])["config"]
    response = api.put(f"{URL}/shadowed/config", config, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["pending_config"]["traffic_config"]["shadow"][0]["percentage"] == 100
    api_bad = shadow_body(iris, [{"served_entity_name": "iris-2", "percentage": 500}])["config"]
    mark_ready("shadowed")
    response = api.put(f"{URL}/shadowed/config", api_bad, format="json")
    assert response.status_code == 400
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"


def test_the_endpoint_total_leaves_out_a_shadow():
    assert shadow_names({"routes": [], "shadow": [{"served_entity_name": "b", "percentage": 5}]}) == {"b"}
    assert shadow_names({"routes": []}) == set()
    assert shadow_names(None) == set()


# --- agreement ----------------------------------------------------------------------------------


def answer(predictions) -> bytes:  # type: ignore[no-untyped-def]
    return json.dumps({"predictions": predictions}).encode()


def test_agreement_counts_predictions_row_by_row():
    assert agreement(answer([0, 1, 2, 2]), answer([0, 1, 1, 1])) == (4, 2)
    assert agreement(answer([0, 1]), answer([0, 1])) == (2, 2)


def test_numbers_agree_within_the_tolerance_and_nothing_else_does():
    assert agreement(answer([1.0, 2.0]), answer([1.05, 2.5]), 0.1) == (2, 1)
    assert agreement(answer([1.0]), answer([1.05])) == (1, 0)
    assert agreement(answer([[1.0, 2.0]]), answer([[1.01, 2.0]]), 0.02) == (1, 1)
    assert agreement(answer([{"p": 1.0, "label": "a"}]), answer([{"p": 1.0, "label": "b"}]), 1.0) == (1, 0)
    assert agreement(answer([True]), answer([1])) == (1, 0)  # a boolean is not a number here
    assert agreement(answer(["a"]), answer(["a"]), 5) == (1, 1)


def test_answers_of_other_shapes_count_as_one_prediction():
    assert agreement(answer([0, 1]), answer([0, 1, 2])) == (1, 0)  # row counts differ
    assert agreement(b'{"x": 1}', b'{"x": 1}') == (1, 1)
    assert agreement(b"not json", b"not json") == (1, 1)
    assert agreement(b"not json", b"other") == (1, 0)
    deep = b"[" * 100 + b"]" * 100  # too deep to parse: compared as bytes
    assert agreement(deep, deep) == (1, 1)


# --- the mirror's hand-over to its worker process -------------------------------------------------


def job(replicas: list[ReplicaTarget], body: bytes = b"{}") -> MirrorJob:
    return MirrorJob(
        endpoint_id="ep-shadow-test",
        entity="shadow",
        replicas=replicas,
        body=body,
        content_type="application/json",
        primary_status=200,
        primary_body=b"{}",
        tolerance=0.0,
    )


def counter(field: str) -> float:
    return read_counters("ep-shadow-test").get("shadow", {}).get(field, 0.0)


def eventually(condition, seconds: float = 20) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.fixture
def fresh_counters():
    forget("ep-shadow-test")
    yield
    forget("ep-shadow-test")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_frames_carry_a_job_to_the_worker_and_back_whole():
    import asyncio

    original = MirrorJob(
        "ep", "shadow", [ReplicaTarget("http://127.0.0.1:1", "cred")], b"q" * 70000, "text/csv", 201, b"a", 0.5
    )

    async def roundtrip() -> MirrorJob | None:
        reader = asyncio.StreamReader()
        reader.feed_data(encode(original) + encode(original)[:10])
        reader.feed_eof()
        first = await decode(reader)
        assert await decode(reader) is None  # a frame cut short ends the stream
        return first

    assert asyncio.run(roundtrip()) == original


def test_a_full_queue_drops_and_counts_without_waiting(fresh_counters):
    """A replica that never answers (a listener nobody accepts on) holds the worker's one mirror;
    past the two waiting, every mirror is dropped and counted, and submitting never waits."""
    metrics = GatewayMetrics()
    mirror = ShadowMirror(metrics, queue_size=2, queue_bytes=10**6, concurrency=1, timeout=30)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        replica = ReplicaTarget(f"http://127.0.0.1:{listener.getsockname()[1]}", "credential")
        assert mirror.submit(job([replica]))  # starts the worker
        started = time.perf_counter()
        assert all(mirror.submit(job([replica])) for _ in range(9))  # handed over, whatever becomes of them
        assert time.perf_counter() - started < 0.1
        assert eventually(lambda: counter("shadow_dropped") >= 7), read_counters("ep-shadow-test")
        time.sleep(1.5)
        assert counter("shadow_dropped") in (7, 8)  # 1 sending (or about to) and 2 waiting
        mirror.stop(timeout=0.5)  # the never-answered ones are cut short


def test_no_replica_and_a_body_over_the_byte_bound_are_drops(fresh_counters):
    metrics = GatewayMetrics()
    mirror = ShadowMirror(metrics, queue_size=100, queue_bytes=50, concurrency=1, timeout=5)
    assert not mirror.submit(job([]))  # dropped in the gateway
    metrics.flush()
    assert counter("shadow_dropped") == 1
    assert mirror.submit(job([ReplicaTarget(f"http://127.0.0.1:{closed_port()}", "c")], body=b"x" * 100))
    assert eventually(lambda: counter("shadow_dropped") == 2)  # dropped by the worker
    mirror.stop()
    assert counter("count") == 0


def test_a_failing_shadow_is_recorded_as_its_own_error_and_a_dead_worker_is_replaced(fresh_counters):
    metrics = GatewayMetrics()
    mirror = ShadowMirror(metrics, queue_size=10, queue_bytes=10**6, concurrency=1, timeout=5)
    refusing = ReplicaTarget(f"http://127.0.0.1:{closed_port()}", "c")
    assert mirror.submit(job([refusing]))
    assert eventually(lambda: counter("5xx") == 1 and counter("count") == 1)
    assert mirror._process is not None
    first = mirror._process.pid
    mirror._process.kill()
    mirror._process.wait()
    # The next mirror finds the worker gone and starts another (at most one start a second; a
    # mirror that comes sooner is dropped and counted).
    assert mirror.submit(job([refusing]))
    assert mirror._process is not None and mirror._process.pid != first
    assert eventually(lambda: counter("5xx") == 2)
    mirror.stop()


# --- the dashboard: the traffic-split editor and the endpoint page ---------------------------------


def test_the_split_editor_sets_shows_and_keeps_a_shadow_share(client, api, user, registered_models):
    from tests.test_dashboard_edit import entity, etag_in, form_data

    iris = registered_models["iris"]
    create(api, shadow_body(iris, [{"served_entity_name": "iris-2", "percentage": 30, "agreement_tolerance": 0.5}]))
    mark_ready("shadowed")
    client.force_login(user)
    html = client.get("/endpoints/shadowed/edit").content.decode()
    assert 'name="entities-1-shadow"' in html
    assert 'name="entities-1-shadow" value="30"' in html

    # Saving with another share keeps the tolerance the form does not show.
    data = form_data(entity("1", 100), entity("2", 0, shadow="60"), etag=etag_in(html), initial=2)
    response = client.post("/endpoints/shadowed/edit", data)
    assert response.status_code == 302, response.content.decode()[-3000:]
    config = Endpoint.objects.get(name="shadowed").pending_config
    assert config.traffic_config["shadow"] == [
        {"served_entity_name": "iris-2", "percentage": 60, "agreement_tolerance": 0.5}
    ]

    # A shadow that also takes traffic is refused next to the split.
    mark_ready("shadowed")
    html = client.get("/endpoints/shadowed/edit").content.decode()
    data = form_data(entity("1", 50), entity("2", 50, shadow="10"), etag=etag_in(html), initial=2)
    response = client.post("/endpoints/shadowed/edit", data)
    assert response.status_code == 400
    assert "is a shadow" in response.content.decode()

    # The endpoint page shows the share and the shadow's charts.
    page = client.get("/endpoints/shadowed/").content.decode()
    assert "shadow 60 %" in page
    assert 'id="chart-agreement"' in page and 'id="chart-shadow-dropped"' in page


def test_an_endpoint_without_shadows_has_no_shadow_charts(client, api, user, registered_models):
    create(api, endpoint_body("plain", (registered_models["iris"], "1")))
    mark_ready("plain")
    client.force_login(user)
    page = client.get("/endpoints/plain/").content.decode()
    assert 'id="chart-agreement"' not in page and "shadow " not in page.lower().replace("shadow-", "")
