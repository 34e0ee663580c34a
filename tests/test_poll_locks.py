"""Polls that lock endpoint rows never wait on the foreign-key checks of other polls (PostgreSQL,
two connections).

A metrics or logs poll inserts rows that point at endpoints; PostgreSQL checks those foreign keys at
commit with a key-share lock on each endpoint row, in the order the rows were written. A status poll
that locked the same endpoints FOR UPDATE (sorted by id) waited on those locks while the other
waited on its own, and one of them died in a deadlock (measured: a 10,000-endpoint sweep lost a
250-endpoint status batch). The row locks taken to change an endpoint's health or a remote's log
cursors are FOR NO KEY UPDATE, which a key-share lock does not block.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from django.db import connection, connections, transaction
from django.utils import timezone

from endpoints_app.models import Endpoint, HealthStatus, LogLine, Workspace, WorkspaceKind
from endpoints_app.monitoring import health, remote

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="two connections holding row locks: PostgreSQL"),
]


def key_share_held(endpoint_id: str) -> tuple[threading.Event, threading.Event, threading.Thread]:
    """Another connection holds the lock a foreign-key check takes on the endpoint's row until
    ``release`` is set."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM endpoints_app_endpoint WHERE id = %s FOR KEY SHARE", [endpoint_id])
                held.set()
                release.wait(20)
        finally:
            connections.close_all()

    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(10)
    return held, release, thread


def without_waiting(work) -> None:  # type: ignore[no-untyped-def]
    """Run ``work`` with a lock timeout: waiting on the other connection's lock fails it."""
    with connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = '2s'")
    try:
        work()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")


def test_a_health_change_does_not_wait_on_a_foreign_key_check():
    endpoint = Endpoint.objects.create(name="checked-at-commit")
    _, release, thread = key_share_held(endpoint.id)
    try:
        changed: set[str] = set()
        without_waiting(
            lambda: changed.update(
                health.record_health_batch([(endpoint, health.Health(HealthStatus.HEALTHY, ""))], now=timezone.now())
            )
        )
    finally:
        release.set()
        thread.join(20)
    assert changed == {endpoint.id}
    assert Endpoint.objects.get(id=endpoint.id).health == HealthStatus.HEALTHY


def test_a_remote_log_store_does_not_wait_on_a_foreign_key_check():
    workspace = Workspace.objects.create(name="far", kind=WorkspaceKind.REMOTE, host="https://far.example.com")
    endpoint = Endpoint.fleet.create(name="far-ep", workspace=workspace)
    text = f"{datetime(2026, 12, 8, 4, 0, tzinfo=UTC):%Y-%m-%d %H:%M:%S},000 INFO [m-1 replica 0] hello\n"
    _, release, thread = key_share_held(endpoint.id)
    try:
        stored: list[int] = []
        without_waiting(lambda: stored.append(remote.store_logs_many([(endpoint, "m-1", "server", text)])))
    finally:
        release.set()
        thread.join(20)
    assert stored == [1] and LogLine.objects.filter(endpoint=endpoint).count() == 1
