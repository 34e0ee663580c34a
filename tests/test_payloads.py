"""Payload logging (inference tables): sampling in the gateway, the writer thread, retention and
the payloads API."""

from __future__ import annotations

import json
import random
import time
import timeit
from datetime import UTC, datetime, timedelta

import pytest
import requests
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from endpoints_app.gateway.payloads import MAX_PAYLOAD_BYTES, PayloadLogger, client_request_id
from endpoints_app.gateway.routing import RouteTable, load_route_table
from endpoints_app.models import Endpoint, PayloadLog
from endpoints_app.monitoring import payloads as payload_monitoring
from endpoints_app.monitoring.payloads import prune_payloads
from tests.conftest import endpoint_body
from tests.model_fixtures import IRIS_COLUMNS
from tests.stack import Stack
from tests.test_api_endpoints import create, mark_ready

URL = "/api/2.0/modelfleet/serving-endpoints/{}/payloads"
ANSWERED_AT = datetime(2026, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC)
INFERENCE_TABLE = {"inference_table_config": {"enabled": True, "catalog_name": "main", "schema_name": "logs"}}


def table(endpoint_id: str = "e" * 32, rate: float | None = 1.0) -> RouteTable:
    return RouteTable("ep", exists=True, endpoint_id=endpoint_id, payload_sample_rate=rate)


def logger(**kw) -> PayloadLogger:
    """A logger that writes only on flush() (the test's rows live in its own transaction)."""
    kw.setdefault("background", False)
    kw.setdefault("rng", random.Random(7))
    return PayloadLogger(**kw)


def log_one(payloads: PayloadLogger, endpoint_id: str = "e" * 32, **kw) -> None:
    call = {
        "table": table(endpoint_id),
        "served_entity_name": "iris-1",
        "status": 200,
        "latency_ms": 12.5,
        "request_body": b'{"inputs": [[1, 2]]}',
        "response_body": b'{"predictions": [0]}',
        "client_request_id": "",
    }
    call.update(kw)
    payloads.maybe_log(**call)


# --- sampling and the buffer (no database) -------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "low", "high"), [(0.0, 0, 0), (0.1, 900, 1100), (0.5, 4800, 5200), (1.0, 10_000, 10_000)]
)
def test_sampling_keeps_the_configured_share_of_queries(rate, low, high):
    payloads = logger(rng=random.Random(2026), max_records=20_000)
    for _ in range(10_000):
        log_one(payloads, table=table(rate=rate))
    assert low <= payloads.pending <= high


def test_nothing_is_kept_when_the_route_table_has_payload_logging_off():
    payloads = logger()
    log_one(payloads, table=table(rate=None))
    assert payloads.pending == 0


def test_a_full_buffer_drops_and_counts_instead_of_blocking():
    payloads = logger(max_records=3)
    started = time.perf_counter()
    for _ in range(1000):
        log_one(payloads)
    assert time.perf_counter() - started < 0.5
    assert payloads.pending == 3
    assert payloads.dropped == 997


def test_the_buffer_is_bounded_by_bytes_too():
    payloads = logger(max_bytes=100)
    log_one(payloads, request_body=b"x" * 60, response_body=b"y" * 30)  # 90 bytes: kept
    log_one(payloads, request_body=b"x" * 20, response_body=b"")  # 110 > 100: dropped
    assert (payloads.pending, payloads.dropped) == (1, 1)


def test_maybe_log_never_raises():
    payloads = logger()
    log_one(payloads, request_body=None)  # not bytes: a bug in the caller must not fail the query
    log_one(payloads, table=object())
    assert payloads.pending == 0
    assert payloads.dropped == 2


def test_maybe_log_costs_microseconds():
    payloads = logger(max_records=10**7, max_bytes=10**12)
    body = json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2]] * 2000}).encode()  # ~50 KB: no parsing here
    off, on = table(rate=0.0), table(rate=1.0)
    skip = min(timeit.repeat(lambda: log_one(payloads, table=off, request_body=body), number=2000, repeat=3)) / 2000
    keep = min(timeit.repeat(lambda: log_one(payloads, table=on, request_body=body), number=2000, repeat=3)) / 2000
    # Generous bounds (shared CI machines); measured ~1 µs and ~2.5 µs.
    assert skip < 50e-6
    assert keep < 100e-6


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"client_request_id": "abc-1", "inputs": [1]}', "abc-1"),
        (b'{"inputs": [1]}', ""),
        (b"not json", ""),
        (b'"client_request_id"', ""),  # JSON, but a string
        (b'[{"client_request_id": "x"}]', ""),  # not an object
        (b'{"client_request_id": 42}', ""),  # not a string
        (b'{"params": {"client_request_id": "nested"}}', ""),  # only the top level counts
        (b'{"client_request_id": "caf\xc3\xa9"}', "café"),
        (b'{"client_request_id": "x", ', ""),  # truncated
        (b"", ""),
        (None, ""),
    ],
)
def test_client_request_id_is_read_from_a_json_object_body(body, expected):
    assert client_request_id(body) == expected


# --- the route table's sampling rate ---------------------------------------------------------------


@pytest.mark.django_db
def test_payload_sample_rate_comes_from_ai_gateway_or_auto_capture_and_telemetry(api, registered_models):
    iris = registered_models["iris"]
    body = endpoint_body("via-gateway", (iris, "1"))
    body["ai_gateway"] = INFERENCE_TABLE
    body["telemetry_config"] = {"inference_table_config": {"sampling_fraction": 0.25}}
    create(api, body)
    body = endpoint_body("via-auto-capture", (iris, "1"))
    body["config"]["auto_capture_config"] = {"enabled": True, "catalog_name": "main", "schema_name": "logs"}
    create(api, body)
    body = endpoint_body("disabled", (iris, "1"))
    body["ai_gateway"] = {"inference_table_config": {"enabled": False, "catalog_name": "main", "schema_name": "x"}}
    body["telemetry_config"] = {"inference_table_config": {"sampling_fraction": 0.5}}
    create(api, body)
    create(api, endpoint_body("plain", (iris, "1")))
    for name in ("via-gateway", "via-auto-capture", "disabled", "plain"):
        mark_ready(name)

    assert load_route_table("via-gateway").payload_sample_rate == 0.25
    assert load_route_table("via-auto-capture").payload_sample_rate == 1.0  # no fraction: everything
    assert load_route_table("disabled").payload_sample_rate is None
    assert load_route_table("plain").payload_sample_rate is None


# --- flushing to the database ------------------------------------------------------------------


@pytest.fixture
def endpoint(db, user) -> Endpoint:
    from endpoints_app.models import EndpointPermission, PermissionLevel

    created = Endpoint.objects.create(name="logged", creator=user)
    EndpointPermission.objects.create(endpoint=created, user=user, level=PermissionLevel.CAN_MANAGE)
    return created


@pytest.mark.django_db
def test_flush_writes_one_row_per_sampled_query(endpoint):
    payloads = logger(clock=ANSWERED_AT.timestamp)
    log_one(
        payloads,
        endpoint.id,
        status=400,
        latency_ms=7.25,
        request_body=b'{"client_request_id": "req-9", "inputs": [[1, 2]]}',
        response_body=b'{"error_code": "INVALID_PARAMETER_VALUE"}',
        user_id_hint="42",
    )
    assert payloads.flush() == 1
    row = PayloadLog.objects.get()
    assert row.endpoint_id == endpoint.id
    assert row.served_entity_name == "iris-1"
    assert row.ts == ANSWERED_AT
    assert (row.status_code, row.latency_ms) == (400, 7.25)
    assert row.client_request_id == "req-9"
    assert row.request == '{"client_request_id": "req-9", "inputs": [[1, 2]]}'
    assert row.response == '{"error_code": "INVALID_PARAMETER_VALUE"}'
    assert row.too_large is False
    assert row.user_id_hint == "42"
    assert payloads.pending == 0
    assert payloads.flush() == 0


@pytest.mark.django_db
def test_an_explicit_client_request_id_wins_over_the_body(endpoint):
    payloads = logger()
    log_one(payloads, endpoint.id, client_request_id="from-caller", request_body=b'{"client_request_id": "b"}')
    payloads.flush()
    assert PayloadLog.objects.get().client_request_id == "from-caller"


@pytest.mark.django_db
def test_payloads_over_1_mib_are_marked_too_large_and_not_stored(endpoint):
    payloads = logger()
    big = b'{"inputs": "' + b"x" * MAX_PAYLOAD_BYTES + b'"}'
    log_one(payloads, endpoint.id, request_body=big, response_body=b'{"predictions": [1]}')
    log_one(payloads, endpoint.id, request_body=b"{}", response_body=big)
    log_one(payloads, endpoint.id, request_body=b"a" * MAX_PAYLOAD_BYTES, response_body=b"{}")  # exactly 1 MiB: kept
    payloads.flush()
    rows = list(PayloadLog.objects.order_by("id"))
    assert [(r.too_large, r.request is None, r.response is None) for r in rows] == [
        (True, True, False),
        (True, False, True),
        (False, False, False),
    ]
    assert rows[0].response == '{"predictions": [1]}'
    assert len(rows[2].request) == MAX_PAYLOAD_BYTES


@pytest.mark.django_db
def test_bodies_that_are_not_utf8_are_stored_with_replacement_characters(endpoint):
    payloads = logger()
    log_one(payloads, endpoint.id, request_body=b"ok \xff\xfe", response_body=b"nul\x00byte")
    payloads.flush()
    row = PayloadLog.objects.get()
    assert row.request == "ok \ufffd\ufffd"
    assert row.response == "nul\ufffdbyte"  # PostgreSQL text cannot hold NUL


@pytest.mark.django_db
def test_queries_of_an_endpoint_deleted_before_the_flush_are_skipped(endpoint):
    gone = Endpoint.objects.create(name="gone")
    payloads = logger()
    log_one(payloads, endpoint.id)
    log_one(payloads, gone.id)
    gone.delete()
    assert payloads.flush() == 1
    assert list(PayloadLog.objects.values_list("endpoint_id", flat=True)) == [endpoint.id]


@pytest.mark.django_db(transaction=True)
def test_the_writer_thread_flushes_every_interval_and_survives_a_failed_write():
    endpoint = Endpoint.objects.create(name="threaded")
    payloads = PayloadLogger(flush_seconds=0.05)
    try:
        log_one(payloads, endpoint.id, status=-1)  # violates the column's check: the insert fails
        wait_for(lambda: payloads.failed == 1)
        log_one(payloads, endpoint.id, status=201)
        wait_for(lambda: PayloadLog.objects.filter(endpoint=endpoint).exists())
        assert list(PayloadLog.objects.values_list("status_code", flat=True)) == [201]
        log_one(payloads, endpoint.id, status=202)
    finally:
        payloads.stop()
    # stop() flushed what was still buffered and ended the thread.
    assert sorted(PayloadLog.objects.values_list("status_code", flat=True)) == [201, 202]
    assert payloads._thread is not None and not payloads._thread.is_alive()


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# --- retention ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_prune_deletes_rows_past_retention_in_batches_and_keeps_recent_ones(endpoint, settings, monkeypatch):
    settings.PAYLOAD_RETENTION_DAYS = 30
    monkeypatch.setattr(payload_monitoring, "PRUNE_BATCH_SIZE", 2)
    now = timezone.now()
    for age in (31, 40, 45, 29, 1):
        add_row(endpoint, ts=now - timedelta(days=age))
    assert prune_payloads(now=now) == 3
    assert prune_payloads(now=now) == 0
    assert sorted((now - r).days for r in PayloadLog.objects.values_list("ts", flat=True)) == [1, 29]


# --- the API -----------------------------------------------------------------------------------


def add_row(endpoint: Endpoint, **kw) -> PayloadLog:
    values = {
        "served_entity_name": "iris-1",
        "ts": ANSWERED_AT,
        "status_code": 200,
        "latency_ms": 3.5,
        "request": '{"inputs": [1]}',
        "response": '{"predictions": [0]}',
    }
    values.update(kw)
    return PayloadLog.objects.create(endpoint=endpoint, **values)


def ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


@pytest.mark.django_db
def test_the_api_lists_payloads_newest_first(api, endpoint):
    old = add_row(endpoint, ts=ANSWERED_AT - timedelta(seconds=5), client_request_id="r-1", latency_ms=9.0)
    new = add_row(endpoint, status_code=400, request=None, too_large=True)
    body = api.get(URL.format("logged")).json()
    assert body == {
        "payloads": [
            {
                "id": new.id,
                "ts": ms(ANSWERED_AT),
                "served_model_name": "iris-1",
                "status_code": 400,
                "latency_ms": 3.5,
                "client_request_id": "",
                "request": None,
                "response": '{"predictions": [0]}',
                "too_large": True,
            },
            {
                "id": old.id,
                "ts": ms(ANSWERED_AT) - 5000,
                "served_model_name": "iris-1",
                "status_code": 200,
                "latency_ms": 9.0,
                "client_request_id": "r-1",
                "request": '{"inputs": [1]}',
                "response": '{"predictions": [0]}',
                "too_large": False,
            },
        ]
    }


@pytest.mark.django_db
def test_include_bodies_false_leaves_out_request_and_response(api, endpoint):
    add_row(endpoint)
    (row,) = api.get(URL.format("logged"), {"include_bodies": "false"}).json()["payloads"]
    assert "request" not in row and "response" not in row
    assert row["status_code"] == 200


@pytest.mark.django_db
def test_the_api_shows_only_the_endpoints_own_payloads(api, endpoint):
    other = Endpoint.objects.create(name="other")
    add_row(other)
    assert api.get(URL.format("logged")).json() == {"payloads": []}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"served_model": "iris-2"}, ["b"]),
        ({"status": "503"}, ["c"]),
        ({"status": "4xx"}, ["d"]),
        ({"status": "5xx"}, ["e", "c"]),
        ({"since": ms(ANSWERED_AT) + 2000}, ["e", "d", "c"]),  # inclusive
        ({"until": ms(ANSWERED_AT) + 2000}, ["b", "a"]),  # exclusive
        ({"since": ms(ANSWERED_AT) + 1000, "until": ms(ANSWERED_AT) + 3000, "status": "5xx"}, ["c"]),
        ({"client_request_id": "d"}, ["d"]),
    ],
)
def test_the_api_filters(api, endpoint, params, expected):
    rows = [
        ("a", "iris-1", 200),
        ("b", "iris-2", 200),
        ("c", "iris-1", 503),
        ("d", "iris-1", 404),
        ("e", "iris-1", 500),
    ]
    for i, (crid, served, status) in enumerate(rows):
        add_row(
            endpoint,
            ts=ANSWERED_AT + timedelta(seconds=i),
            client_request_id=crid,
            served_entity_name=served,
            status_code=status,
        )
    body = api.get(URL.format("logged"), params).json()
    assert [p["client_request_id"] for p in body["payloads"]] == expected


@pytest.mark.django_db
def test_pages_follow_each_other_without_gaps_even_when_timestamps_tie(api, endpoint):
    # Three rows share one timestamp, so the page boundary falls inside the tie.
    stamps = [
        ANSWERED_AT,
        ANSWERED_AT,
        ANSWERED_AT,
        ANSWERED_AT - timedelta(microseconds=1),
        ANSWERED_AT - timedelta(days=1),
    ]
    ids = [add_row(endpoint, ts=ts).id for ts in stamps]
    seen: list[int] = []
    pages = 0
    token = None
    while True:
        params = {"limit": 2, **({"page_token": token} if token else {})}
        body = api.get(URL.format("logged"), params).json()
        pages += 1
        seen += [p["id"] for p in body["payloads"]]
        token = body.get("next_page_token")
        if not token:
            break
    assert pages == 3
    assert seen == [ids[2], ids[1], ids[0], ids[3], ids[4]]


@pytest.mark.django_db
def test_listing_takes_the_same_queries_for_one_row_or_many(api, endpoint):
    add_row(endpoint)
    api.get(URL.format("logged"))  # the token's first use is recorded once
    with CaptureQueriesContext(connection) as one:
        api.get(URL.format("logged"))
    for _ in range(30):
        add_row(endpoint)
    with CaptureQueriesContext(connection) as many:
        assert len(api.get(URL.format("logged")).json()["payloads"]) == 31
    assert len(many) == len(one)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"status": "6xx"}, "status"),
        ({"status": "ok"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"until": "-1"}, "until"),
        ({"page_token": "not-a-token"}, "page_token"),
        ({"include_bodies": "maybe"}, "include_bodies"),
    ],
)
def test_bad_parameters_are_a_400_naming_the_parameter(api, endpoint, params, named):
    response = api.get(URL.format("logged"), params)
    assert response.status_code == 400
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert named in response.json()["message"]


@pytest.mark.django_db
def test_an_unknown_endpoint_is_a_404(api):
    response = api.get(URL.format("nope"))
    assert response.status_code == 404
    assert response.json() == {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Endpoint 'nope' does not exist"}


@pytest.mark.django_db
def test_payloads_need_a_token(anon, endpoint):
    add_row(endpoint)
    response = anon.get(URL.format("logged"))
    assert response.status_code == 401
    assert response.json()["error_code"] == "UNAUTHENTICATED"


@pytest.mark.django_db
def test_payloads_are_read_only(api, endpoint):
    response = api.post(URL.format("logged"), {}, format="json")
    assert response.status_code == 405
    assert response.json()["error_code"] == "METHOD_NOT_ALLOWED"


# --- end to end ----------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_queries_through_the_gateway_are_logged_and_listed(stack: Stack, django_user_model, registered_models):
    from endpoints_app.services.tokens import create_token

    user = django_user_model.objects.create_superuser("e2e-payloads", "p@example.com", "e2e-password-1")
    headers = {"Authorization": f"Bearer {create_token(user=user, comment='e2e')[1]}"}
    body = endpoint_body("e2e-payloads", (registered_models["iris"], "1"))
    body["ai_gateway"] = INFERENCE_TABLE
    assert requests.post(f"{stack.url}/api/2.0/serving-endpoints", json=body, headers=headers, timeout=30).ok
    wait_for(
        lambda: (
            requests.get(f"{stack.url}/api/2.0/serving-endpoints/e2e-payloads", headers=headers, timeout=10).json()[
                "state"
            ]["ready"]
            == "READY"
        ),
        timeout=180,
    )
    query = {"client_request_id": "e2e-1", "dataframe_split": {"columns": IRIS_COLUMNS, "data": [[5.1, 3.5, 1.4, 0.2]]}}
    ok = requests.post(
        f"{stack.url}/serving-endpoints/e2e-payloads/invocations", json=query, headers=headers, timeout=30
    )
    assert ok.status_code == 200
    bad = requests.post(
        f"{stack.url}/serving-endpoints/e2e-payloads/invocations", json={"x": 1}, headers=headers, timeout=30
    )
    assert bad.status_code == 400

    url = f"{stack.url}{URL.format('e2e-payloads')}"
    listed: list[dict] = []

    def both_logged() -> bool:
        listed[:] = requests.get(url, headers=headers, timeout=10).json()["payloads"]
        return len(listed) == 2

    wait_for(both_logged, timeout=15)
    assert [p["status_code"] for p in listed] == [400, 200]
    assert listed[1]["client_request_id"] == "e2e-1"
    assert listed[1]["served_model_name"] == "iris-1"
    assert json.loads(listed[1]["request"]) == query
    assert json.loads(listed[1]["response"]) == ok.json()
    assert listed[0]["request"] == '{"x": 1}'
