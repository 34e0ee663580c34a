"""The batched status and logs polls (issue 16 part 6): a batch of endpoints in a fixed number of
queries, the same results as the per-endpoint polls, and one endpoint's failure its own."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from endpoints_app.models import (
    ConfigVersion,
    Deployment,
    DeploymentState,
    Endpoint,
    HealthChange,
    HealthStatus,
    LogLine,
    PollKind,
    PollRun,
    PollTarget,
    Replica,
    ReplicaState,
    ServedEntity,
)
from endpoints_app.monitoring import health, logs, polling
from endpoints_app.runtime.layout import log_path

pytestmark = pytest.mark.django_db

SERVER_LOG = (
    "2026-11-27 04:44:36,010 INFO [m-1 replica 0] loading model\n"
    "2026-11-27 04:44:40,500 ERROR [m-1 replica 0] prediction failed\n"
    "Traceback (most recent call last):\n"
    "ValueError: bad input\n"
)


@pytest.fixture(autouse=True)
def runtime_dir(settings, tmp_path: Path) -> Path:
    settings.RUNTIME_DIR = tmp_path / "runtime"
    return settings.RUNTIME_DIR


def make_fleet(n: int, *, prefix: str = "kinds", state: str = DeploymentState.READY) -> list[Endpoint]:
    """Single-entity endpoints, each with a deployment, one ready replica and a server log."""
    endpoints = []
    for i in range(n):
        endpoint = Endpoint.objects.create(name=f"{prefix}-{i}")
        version = ConfigVersion.objects.create(endpoint=endpoint, version=1, traffic_config={})
        dep = Deployment.objects.create(
            endpoint=endpoint,
            endpoint_name=endpoint.name,
            served_entity_name="m-1",
            spec_hash="x",
            spec={},
            model_name="m",
            model_version="1",
            state=state,
        )
        ServedEntity.objects.create(
            config_version=version, position=0, name="m-1", entity_name="m", entity_version="1", deployment=dep
        )
        Replica.objects.create(
            deployment=dep, agent_id="t", index=0, host="127.0.0.1", port=1, state=ReplicaState.READY
        )
        endpoint.active_config = version
        endpoint.save(update_fields=["active_config"])
        path = log_path(dep.id, "server")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(SERVER_LOG)
        endpoints.append(endpoint)
    polling.ensure_targets()
    return endpoints


def targets(endpoints: list[Endpoint], kind: str) -> list[int]:
    return list(
        PollTarget.objects.filter(endpoint__in=endpoints, kind=kind).order_by("id").values_list("id", flat=True)
    )


def make_due(ids: list[int]) -> None:
    PollTarget.objects.filter(id__in=ids).update(next_poll_at=timezone.now() - timedelta(seconds=1))


# --- status ---------------------------------------------------------------------------------------


def test_a_status_batch_computes_what_the_single_poll_computes():
    fleet = make_fleet(4)
    Deployment.objects.filter(endpoint=fleet[1]).update(state=DeploymentState.FAILED, state_message="oom")
    Replica.objects.filter(deployment__endpoint=fleet[2]).update(state=ReplicaState.STARTING)
    Endpoint.objects.filter(id=fleet[3].id).update(active_config=None)
    now = timezone.now()
    expected = {e.name: health.compute_health(Endpoint.objects.get(id=e.id), now=now) for e in fleet}
    assert polling.run_batch(targets(fleet, PollKind.STATUS)) == 4
    got = {e.name: (e.health, e.health_reason) for e in Endpoint.objects.filter(id__in=[e.id for e in fleet])}
    assert got == {name: (h.status, h.reason) for name, h in expected.items()}
    assert got["kinds-0"][0] == HealthStatus.HEALTHY and got["kinds-1"][0] == HealthStatus.DOWN
    assert HealthChange.objects.count() == 4
    assert PollRun.objects.filter(kind=PollKind.STATUS, ok=True).count() == 4
    # A second poll with nothing new records no change.
    make_due(targets(fleet, PollKind.STATUS))
    assert polling.run_batch(targets(fleet, PollKind.STATUS)) == 4
    assert HealthChange.objects.count() == 4


def test_a_status_batch_costs_a_fixed_number_of_queries():
    small = make_fleet(2, prefix="small")
    with CaptureQueriesContext(connection) as two:
        polling.run_batch(targets(small, PollKind.STATUS))
    large = make_fleet(7, prefix="large")
    with CaptureQueriesContext(connection) as seven:
        polling.run_batch(targets(large, PollKind.STATUS))
    assert len(seven) == len(two), "\n".join(q["sql"][:150] for q in seven.captured_queries)


def test_a_status_change_is_not_recorded_over_a_concurrent_one():
    fleet = make_fleet(2)
    stale = list(Endpoint.objects.filter(id__in=[e.id for e in fleet]).order_by("name"))
    Endpoint.objects.filter(id=fleet[0].id).update(health=HealthStatus.DOWN)  # another poll got there
    changed = health.record_health_batch(
        [(e, health.Health(HealthStatus.HEALTHY, "")) for e in stale], now=timezone.now()
    )
    assert changed == {fleet[1].id}
    assert Endpoint.objects.get(id=fleet[0].id).health == HealthStatus.DOWN
    assert HealthChange.objects.filter(endpoint_id=fleet[0].id).count() == 0


# --- logs -----------------------------------------------------------------------------------------


def test_a_logs_batch_stores_what_the_single_poll_stores():
    fleet = make_fleet(3)
    assert polling.run_batch(targets(fleet[:2], PollKind.LOGS)) == 2
    logs.poll_logs(fleet[2])
    rows = {
        e.name: list(
            LogLine.objects.filter(endpoint=e).order_by("ts", "id").values_list("ts", "level", "replica", "message")
        )
        for e in fleet
    }
    assert rows["kinds-0"] == rows["kinds-1"] == rows["kinds-2"]
    assert len(rows["kinds-0"]) == 4 and rows["kinds-0"][3][1] == "ERROR"  # the traceback joins its line
    # Appended lines only, once; a continuation read in a later poll joins its stored line.
    for e in fleet[:2]:
        dep = Deployment.objects.get(endpoint=e)
        with open(log_path(dep.id, "server"), "a", encoding="utf-8") as fh:
            fh.write('  File "x.py", line 1\n2026-11-27 04:45:00 INFO [m-1 replica 0] ok\n')
    make_due(targets(fleet[:2], PollKind.LOGS))
    assert polling.run_batch(targets(fleet[:2], PollKind.LOGS)) == 2
    added = list(LogLine.objects.filter(endpoint=fleet[0]).order_by("ts", "id").values_list("level", "message"))[4:]
    assert added == [("ERROR", '  File "x.py", line 1'), ("INFO", "ok")]
    assert LogLine.objects.filter(endpoint=fleet[1]).count() == 6
    make_due(targets(fleet[:2], PollKind.LOGS))
    with CaptureQueriesContext(connection) as quiet:
        polling.run_batch(targets(fleet[:2], PollKind.LOGS))
    assert not [q for q in quiet.captured_queries if "logline" in q["sql"].lower()], "nothing new: no line written"


def test_a_log_stored_by_another_poll_first_is_not_stored_twice(monkeypatch):
    fleet = make_fleet(2)
    real = logs.store_batch

    def racing(reads, *, now):
        logs.poll_logs(Endpoint.objects.get(id=fleet[0].id))  # another poll stores endpoint 0's lines
        return real(reads, now=now)

    monkeypatch.setattr(logs, "store_batch", racing)
    polling.run_batch(targets(fleet, PollKind.LOGS))
    assert LogLine.objects.filter(endpoint=fleet[0]).count() == 4
    assert LogLine.objects.filter(endpoint=fleet[1]).count() == 4


def test_an_unreadable_log_fails_its_endpoint_alone_with_backoff(monkeypatch, settings):
    fleet = make_fleet(3)
    bad = Deployment.objects.get(endpoint=fleet[1]).id
    from endpoints_app.backends.local import LocalBackend

    real = LocalBackend.read_log

    def read_log(self, *, deployment_id, kind, offset, max_bytes=1_000_000):
        if deployment_id == bad:
            raise PermissionError(13, "Permission denied")
        return real(self, deployment_id=deployment_id, kind=kind, offset=offset, max_bytes=max_bytes)

    monkeypatch.setattr(LocalBackend, "read_log", read_log)
    ids = targets(fleet, PollKind.LOGS)
    before = timezone.now()
    assert polling.run_batch(ids) == 3
    rows = {t.endpoint_id: t for t in PollTarget.objects.filter(id__in=ids)}
    failed = rows[fleet[1].id]
    assert failed.consecutive_failures == 1 and "Permission denied" in failed.last_error
    assert failed.failing_since is not None and failed.last_ok_at is None
    wait = (failed.next_poll_at - before).total_seconds()
    assert polling.backoff_seconds(PollKind.LOGS, 1) - 1 <= wait <= polling.backoff_seconds(PollKind.LOGS, 1) + 5
    for ok in (fleet[0], fleet[2]):
        assert rows[ok.id].consecutive_failures == 0 and rows[ok.id].last_ok_at is not None
        assert rows[ok.id].last_error == "" and rows[ok.id].failing_since is None
        assert LogLine.objects.filter(endpoint=ok).count() == 4
    runs = dict(PollRun.objects.filter(kind=PollKind.LOGS).values_list("target__endpoint_id", "ok"))
    assert runs == {fleet[0].id: True, fleet[1].id: False, fleet[2].id: True}
    # Failing again: the backoff grows and failing_since stays; a success clears both.
    since = failed.failing_since
    make_due(ids)
    polling.run_batch(ids)
    failed = PollTarget.objects.get(id=failed.id)
    assert failed.consecutive_failures == 2 and failed.failing_since == since
    assert (failed.next_poll_at - timezone.now()).total_seconds() > polling.backoff_seconds(PollKind.LOGS, 1) + 1
    monkeypatch.setattr(LocalBackend, "read_log", real)
    make_due(ids)
    polling.run_batch(ids)
    failed = PollTarget.objects.get(id=failed.id)
    assert failed.consecutive_failures == 0 and failed.failing_since is None and failed.last_error == ""
    assert LogLine.objects.filter(endpoint=fleet[1]).count() == 4


@pytest.mark.django_db(transaction=True)  # foreign keys are checked at commit
def test_an_endpoint_deleted_during_a_logs_batch_is_dropped_alone(monkeypatch):
    fleet = make_fleet(3)
    real = logs.store_batch
    deleted: list[bool] = []

    def delete_first(reads, *, now):
        if not deleted:
            deleted.append(True)
            Endpoint.objects.filter(id=fleet[1].id).delete()
        return real(reads, now=now)

    monkeypatch.setattr(logs, "store_batch", delete_first)
    assert polling.run_batch(targets(fleet, PollKind.LOGS)) == 3
    assert set(LogLine.objects.values_list("endpoint__name", flat=True)) == {"kinds-0", "kinds-2"}
    runs = PollRun.objects.filter(kind=PollKind.LOGS)
    assert runs.count() == 2 and all(run.ok for run in runs)


def test_a_logs_batch_costs_a_fixed_number_of_queries():
    small = make_fleet(2, prefix="small")
    with CaptureQueriesContext(connection) as two:
        polling.run_batch(targets(small, PollKind.LOGS))
    large = make_fleet(7, prefix="large")
    with CaptureQueriesContext(connection) as seven:
        polling.run_batch(targets(large, PollKind.LOGS))
    assert len(seven) == len(two), "\n".join(q["sql"][:150] for q in seven.captured_queries)
