"""Shared fixtures: users and tokens, registered models, an API client."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest
from rest_framework.test import APIClient

from endpoints_app import egress, registry
from endpoints_app.services.tokens import create_token
from tests import model_fixtures
from tests.providers import Resolver

pytest_plugins = ["tests.browser"]  # the `browser` and `page` fixtures


def _flush_retrying_on_lock_conflicts() -> None:
    """A transactional test ends with Django's ``flush``: one TRUNCATE of every table. The e2e
    stacks (worker, beat, runtime agent) keep writing while it runs, and on PostgreSQL their
    row locks and the TRUNCATE's table locks can deadlock; PostgreSQL then cancels one side, and
    when that is the TRUNCATE, flush fails with "The SQL was invalid" and the next test errors.
    The flush runs in one transaction, so trying it again is safe; other errors still fail."""
    import time

    from django.core.management.base import CommandError
    from django.core.management.commands import flush
    from django.db import OperationalError

    handle = flush.Command.handle
    if getattr(handle, "retries_lock_conflicts", False):
        return

    def handle_retrying(self, **options):  # type: ignore[no-untyped-def]
        for attempt in range(5):
            try:
                return handle(self, **options)
            except CommandError as exc:
                if attempt == 4 or not isinstance(exc.__cause__, OperationalError):
                    raise
                time.sleep(0.2 * (attempt + 1))
        return None

    handle_retrying.retries_lock_conflicts = True  # type: ignore[attr-defined]
    flush.Command.handle = handle_retrying


_flush_retrying_on_lock_conflicts()


def _live_server_answers_without_nagle() -> None:
    """Django's test server (``live_server``) writes an answer's head and body in separate small
    sends; with Nagle's algorithm on, the body waits for the client's ACK of the head, which Linux
    delays up to 40 ms: ~50 ms a request instead of a few (scim2-tester's ~1,000 requests took
    ~55 s). TCP_NODELAY on the accepted sockets sends each write at once (as asyncio's servers,
    uvicorn's included, do by default)."""
    from django.test.testcases import QuietWSGIRequestHandler

    QuietWSGIRequestHandler.disable_nagle_algorithm = True


_live_server_answers_without_nagle()


class _SharedRows:
    """One open ``shared_rows`` block: its outer transaction, rolled back exactly once."""

    open_blocks: list[_SharedRows] = []

    def __init__(self, django_db_blocker) -> None:  # type: ignore[no-untyped-def]
        from django.db import transaction

        self.blocker = django_db_blocker
        self.atomic = transaction.atomic()
        with self.blocker.unblock():
            self.atomic.__enter__()
        self.open_blocks.append(self)

    def close(self) -> None:
        from django.db import transaction

        if self in self.open_blocks:
            self.open_blocks.remove(self)
            with self.blocker.unblock():
                transaction.set_rollback(True)
                self.atomic.__exit__(None, None, None)


@contextlib.contextmanager
def shared_rows(django_db_blocker) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """Django's ``setUpTestData`` for a module-scoped fixture: the rows created inside the block
    are made once and seen by every test of the module, and rolled back at its end. Each test's
    own transaction is a savepoint inside this one, so what a test changes still goes with it.

    Only for fixtures of non-transactional tests. pytest-django runs every ``django_db`` test
    before any transactional one; a transactional test that follows in the same module (run on
    its own, say) first rolls the block back (``pytest_runtest_setup`` below), since it commits
    and flushes."""
    block = _SharedRows(django_db_blocker)
    try:
        with django_db_blocker.unblock():
            yield
    finally:
        block.close()


def _is_transactional(item: pytest.Item) -> bool:
    marker = item.get_closest_marker("django_db")
    if marker is not None and (marker.kwargs.get("transaction") or (marker.args and marker.args[0])):
        return True
    return bool({"transactional_db", "live_server"} & set(getattr(item, "fixturenames", ())))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if _SharedRows.open_blocks and _is_transactional(item):
        for block in reversed(list(_SharedRows.open_blocks)):
            block.close()


# How hard the fuzz tests dig: one setting, MODELFLEET_FUZZ_SCALE, a factor on each fuzz test's
# full budget (its "deep" number of hypothesis or schemathesis examples). `make test` runs a tenth
# of it (a few seconds per test, derandomized where the test asks); `make fuzz` runs the full one
# (MODELFLEET_FUZZ_SCALE=1), and any larger factor digs deeper still.
FUZZ_SCALE = float(os.environ.get("MODELFLEET_FUZZ_SCALE") or "0.1")


def fuzz_examples(deep: int, least: int = 1) -> int:
    """The number of examples for a fuzz test whose full budget is ``deep``: scaled by
    MODELFLEET_FUZZ_SCALE, never fewer than ``least``."""
    return max(least, round(deep * FUZZ_SCALE))


MODEL = "main.default.iris"


@pytest.fixture(scope="session")
def registered_models(django_db_setup, tmp_path_factory) -> dict[str, str]:
    """Registry entries used across tests (the registry is MLflow's, outside Django's test DB).

    iris v1 and v2 (real scikit-learn models), a constant model, one that fails to load, and two
    that take 0.5 s and 10 s per query.
    """
    base = tmp_path_factory.mktemp("models")
    if not registry.list_registered_models(MODEL):
        registry.register_model_dir(model_fixtures.save_iris_model(base / "v1"), MODEL)
        registry.register_model_dir(model_fixtures.save_iris_model(base / "v2", multiply=2), MODEL)
        registry.register_model_dir(model_fixtures.save_constant_model(base / "a", "a"), "main.default.constant")
        registry.register_model_dir(model_fixtures.save_broken_model(base / "broken"), "main.default.broken")
        registry.register_model_dir(model_fixtures.save_slow_model(base / "slow", 0.5), "main.default.slow")
        registry.register_model_dir(model_fixtures.save_slow_model(base / "very_slow", 10.0), "main.default.very_slow")
    return {
        "iris": MODEL,
        "constant": "main.default.constant",
        "broken": "main.default.broken",
        "slow": "main.default.slow",
        "very_slow": "main.default.very_slow",
    }


@pytest.fixture(autouse=True)
def dns(monkeypatch) -> Resolver:
    """The egress policy resolves provider host names: in tests only ``localhost`` and the names a
    test adds (``dns.names[...] = [...]``) answer, so no DNS query leaves loopback."""
    resolver = Resolver()
    monkeypatch.setattr(egress, "resolve_name", resolver)
    return resolver


@pytest.fixture(autouse=True)
def _no_failed_sign_ins_counted() -> None:
    """Every test starts with no failed sign-ins or bad tokens counted against 127.0.0.1: the
    throttle's counters (endpoints_app.auth_throttle) live in the Redis the whole run shares."""
    from endpoints_app.redis_client import get_redis

    client = get_redis()
    keys = list(client.scan_iter("mf:authfail:*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def user(django_user_model):
    """An editor: may create endpoints, and manages the ones she creates."""
    from endpoints_app.models import Role, UserProfile

    alice = django_user_model.objects.create_user("alice", "alice@example.com", "pw-alice-123")
    UserProfile.objects.create(user=alice, role=Role.EDITOR)
    return alice


@pytest.fixture
def token(user) -> str:
    return create_token(user=user, comment="test")[1]


@pytest.fixture
def api(token) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def anon() -> APIClient:
    return APIClient()


def endpoint_body(name: str, *entities: tuple[str, str], routes: list[tuple[str, int]] | None = None) -> dict:
    body: dict = {
        "name": name,
        "config": {
            "served_entities": [
                {"entity_name": e, "entity_version": v, "workload_size": "Small", "scale_to_zero_enabled": False}
                for e, v in entities
            ]
        },
    }
    if routes:
        body["config"]["traffic_config"] = {
            "routes": [{"served_model_name": n, "traffic_percentage": p} for n, p in routes]
        }
    return body


# --- the real stack, for end-to-end tests ---------------------------------------------------------


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, registered_models, tmp_path_factory):
    """`modelfleet up` on the test database, one per test module that asks for it."""
    import os

    from django.db import connection

    from tests.stack import database_url, start_stack

    with django_db_blocker.unblock():
        db = database_url(connection.settings_dict)
    running = start_stack(database=db, token="", log_path=tmp_path_factory.mktemp("stack") / "stack.log")
    try:
        yield running
    finally:
        running.stop()
        if os.environ.get("MODELFLEET_TEST_SHOW_STACK_LOG"):
            print(running.log()[-20000:])


@pytest.fixture
def e2e_token(stack, django_user_model) -> str:
    """An admin and its token, committed; each transactional test flushes the database after."""
    user = django_user_model.objects.create_superuser("e2e-admin", "e2e@example.com", "e2e-password-1")
    stack.token = create_token(user=user, comment="e2e")[1]
    return stack.token


@pytest.fixture
def sdk(stack):
    from databricks.sdk import WorkspaceClient

    return WorkspaceClient(host=stack.url, token=stack.token)
