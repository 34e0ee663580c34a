"""An endpoint deleted while the pollers write about it (PostgreSQL, real commits, two connections).

Foreign keys are checked at commit, and pollers write rows that point at an endpoint and at its poll
targets. Two attacks:

* a poll run committed by another connection while the delete runs (after its cascade deleted the
  target's runs, before the target) must not fail the delete (it used to answer 500): the delete locks the endpoint's
  poll targets, and a write conflict is retried;
* an endpoint deleted while a metrics batch polls it must not fail the batch for its neighbours: their
  points, cursors and runs are stored, the deleted endpoint's are dropped.
"""

from __future__ import annotations

import threading

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, connections
from django.utils import timezone

from endpoints_app.gateway.metrics import GatewayMetrics, forget
from endpoints_app.models import Endpoint, MetricPoint, PollKind, PollRun, PollTarget
from endpoints_app.monitoring import polling
from endpoints_app.services import endpoints as endpoint_service

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="two writing connections: PostgreSQL"),
]


def in_other_connection(work) -> tuple[threading.Thread, list[BaseException]]:  # type: ignore[no-untyped-def]
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def test_a_poll_run_written_during_the_delete_does_not_fail_it():
    admin = get_user_model().objects.create_superuser("race-admin", "race@example.com", "race-password-1")
    endpoint = Endpoint.objects.create(name="deleted-while-polled")
    polling.ensure_targets()
    target = PollTarget.objects.filter(endpoint=endpoint).first()
    assert target is not None
    writers: list[tuple[threading.Thread, list[BaseException]]] = []

    def poll_run_meanwhile(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        # Just before the poll targets' own DELETE: the cascade has deleted their runs already.
        if not writers and sql.lstrip().upper().startswith('DELETE FROM "ENDPOINTS_APP_POLLTARGET"'):
            writers.append(
                in_other_connection(
                    lambda: PollRun.objects.create(
                        target_id=target.id, kind=target.kind, started_at=timezone.now(), duration_ms=1.0, ok=True
                    )
                )
            )
            writers[0][0].join(timeout=2)  # committed now, unless the delete's locks hold it back
        return execute(sql, params, many, context)

    try:
        with connection.execute_wrapper(poll_run_meanwhile):
            endpoint_service.delete_endpoint(actor=admin, name="deleted-while-polled")
    finally:
        if writers:
            writers[0][0].join(timeout=30)
    assert writers, "the delete ran its cascade"
    # The poll run either went in before the delete's commit (and the delete took it along) or
    # waited for it and was refused: never any other failure.
    assert all(isinstance(error, IntegrityError) for error in writers[0][1]), writers[0][1]
    assert not Endpoint.fleet.filter(name="deleted-while-polled").exists()
    assert not PollTarget.objects.filter(id=target.id).exists()
    assert not PollRun.objects.filter(target_id=target.id).exists()


def test_an_endpoint_deleted_during_a_metrics_batch_fails_only_itself():
    admin = get_user_model().objects.create_superuser("race-admin2", "race2@example.com", "race-password-1")
    endpoints = [Endpoint.objects.create(name=f"batch-race-{i}") for i in range(3)]
    gm = GatewayMetrics()
    for endpoint in endpoints:
        forget(endpoint.id)
        gm.observe(endpoint.id, None, 404, 3.0)
    gm.flush()
    polling.ensure_targets()
    ids = list(
        PollTarget.objects.filter(endpoint__in=endpoints, kind=PollKind.METRICS)
        .order_by("id")
        .values_list("id", flat=True)
    )
    deleted: list[bool] = []

    def delete_before_the_first_cursor_write(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        if not deleted and "metriccursor" in sql.lower() and sql.lstrip().upper().startswith("INSERT"):
            deleted.append(True)
            thread, errors = in_other_connection(
                lambda: endpoint_service.delete_endpoint(actor=admin, name="batch-race-1")
            )
            thread.join(timeout=30)
            assert not errors, errors
        return execute(sql, params, many, context)

    try:
        with connection.execute_wrapper(delete_before_the_first_cursor_write):
            assert polling.run_batch(ids) == 3
    finally:
        for endpoint in endpoints:
            forget(endpoint.id)
    assert deleted, "the batch wrote cursors"
    alive = {"batch-race-0", "batch-race-2"}
    stored = set(MetricPoint.objects.filter(served_entity_name="").values_list("endpoint__name", flat=True))
    assert stored == alive
    runs = PollRun.objects.filter(kind=PollKind.METRICS)
    assert runs.count() == 2 and all(run.ok for run in runs)
