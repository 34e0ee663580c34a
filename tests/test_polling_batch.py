"""The batched poll (issue 16 part 6): one task claims and polls many targets at once."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from endpoints_app.gateway.metrics import GatewayMetrics, forget
from endpoints_app.models import Endpoint, MetricPoint, PollKind, PollRun, PollTarget
from endpoints_app.monitoring import polling

pytestmark = pytest.mark.django_db


@pytest.fixture
def fleet() -> list[Endpoint]:
    endpoints = [Endpoint.objects.create(name=f"batch-{i}") for i in range(5)]
    gm = GatewayMetrics()
    for i, endpoint in enumerate(endpoints):
        forget(endpoint.id)
        for _ in range(i + 1):
            gm.observe(endpoint.id, None, 404, 3.0)  # unattributed: counted for the endpoint
    gm.flush()
    polling.ensure_targets()
    yield endpoints
    for endpoint in endpoints:
        forget(endpoint.id)


def metric_targets(endpoints: list[Endpoint]) -> list[int]:
    return list(
        PollTarget.objects.filter(endpoint__in=endpoints, kind=PollKind.METRICS)
        .order_by("id")
        .values_list("id", flat=True)
    )


def test_a_batch_polls_every_target_and_records_each_run(fleet):
    ids = metric_targets(fleet)
    assert polling.run_batch(ids) == 5
    counts = dict(
        MetricPoint.objects.filter(served_entity_name="", resolution=15).values_list("endpoint__name", "request_count")
    )
    assert counts == {f"batch-{i}": i + 1 for i in range(5)}
    assert PollRun.objects.filter(kind=PollKind.METRICS, ok=True).count() == 5
    assert all(t.last_ok_at is not None for t in PollTarget.objects.filter(id__in=ids))


def test_a_second_batch_finds_nothing_to_claim(fleet):
    ids = metric_targets(fleet)
    assert polling.run_batch(ids) == 5
    assert polling.run_batch(ids) == 0
    assert PollRun.objects.count() == 5


def test_the_batch_costs_a_fixed_number_of_queries(fleet):
    ids = metric_targets(fleet)
    with CaptureQueriesContext(connection) as five:
        polling.run_batch(ids[:2])
    more = [Endpoint.objects.create(name=f"more-{i}") for i in range(8)]
    polling.ensure_targets()
    rest = ids[2:] + metric_targets(more)
    with CaptureQueriesContext(connection) as ten:
        polling.run_batch(rest)
    assert len(ten) == len(five), "\n".join(q["sql"][:150] for q in ten.captured_queries)
