"""Revocation is immediate: a change of rights reaches every gateway process within a second.

Two real web processes (uvicorn, as ``modelfleet up`` starts them) share the test database and
the test Redis. Each timed test warms both gateways' caches with queries, changes a right through
one process's management API, and times how long until *both* gateways answer by the new rule.
Before the access generation, each took up to the 5 s cache lifetime.

The steady-state test runs the gateway in this process with database access blocked for every
thread (pytest-django's blocker patches the connection class), so a single query to the
database fails the request: cached rights cost no query, and a change costs one reload.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from django.contrib.auth.models import Group

from endpoints_app import access_generation
from endpoints_app.models import AccessToken, Role, SecretScope, UserProfile
from endpoints_app.services import permissions, secrets, tokens, users
from endpoints_app.services.tokens import create_token
from tests.providers import OpenAIServer, allow_egress
from tests.stack import database_url, free_port

KEY = "sk-live-revocation-0123456789"
CHAT = {"messages": [{"role": "user", "content": "Hi"}]}
# What "immediate" means here: every process, within this many seconds of the API's answer.
DEADLINE_SECONDS = 1.0


# --- two real web processes -----------------------------------------------------------------------


@dataclass
class Web:
    url: str
    process: subprocess.Popen
    log_path: Path


def _start_web(database: str, log_path: Path) -> Web:
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "dashboard.settings",
        "DATABASE_URL": database,
        "MODELFLEET_EGRESS_ALLOW": "127.0.0.1",  # the fake provider listens on loopback
        # Route tables (which hold resolved credentials) would expire in 1 s by themselves: make
        # them outlive every deadline here, so only the access generation can meet it.
        "MODELFLEET_GATEWAY_ROUTE_TTL_SECONDS": "30",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
    }
    command = [sys.executable, "-m", "uvicorn", "dashboard.asgi:application", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--lifespan", "on", "--no-access-log", "--log-level", "warning"]
    out = open(log_path, "wb")  # noqa: SIM115 - closed when the process ends
    process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Web(f"http://127.0.0.1:{port}", process, log_path)


def _wait_ready(web: Web) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if web.process.poll() is not None:
            raise RuntimeError(f"web exited with {web.process.returncode}:\n{web.log_path.read_text()[-5000:]}")
        try:
            if requests.get(web.url + "/.well-known/databricks-config", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"web did not answer within 60 s:\n{web.log_path.read_text()[-5000:]}")


@pytest.fixture(scope="module")
def webs(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[list[Web]]:
    """Two web processes on the test database, as several uvicorn workers or compose replicas run."""
    from django.db import connection

    with django_db_blocker.unblock():
        database = database_url(connection.settings_dict)
    folder = tmp_path_factory.mktemp("webs")
    started = [_start_web(database, folder / f"web-{i}.log") for i in range(2)]
    try:
        for web in started:
            _wait_ready(web)
        yield started
    finally:
        for web in started:
            web.process.terminate()
        for web in started:
            try:
                web.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                web.process.kill()
                web.process.wait()


@pytest.fixture
def provider() -> Iterator[OpenAIServer]:
    fake = OpenAIServer(KEY)
    yield fake
    fake.stop()


@dataclass
class Setup:
    webs: list[Web]
    endpoint: str  # its name
    endpoint_id: str
    admin: str  # the admin's token

    def api(self, method: str, path: str, body: dict | None = None, *, via: int = 0) -> dict:
        """A management API call through one of the processes (the first unless ``via``)."""
        response = requests.request(
            method,
            f"{self.webs[via].url}{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.admin}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return response.json()

    def status(self, web: Web, token: str) -> int:
        response = requests.post(
            f"{web.url}/serving-endpoints/{self.endpoint}/invocations",
            json=CHAT,
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        return response.status_code

    def warm(self, token: str, expected: int) -> None:
        """Query every process (twice: the second answer is from its caches) and check the answer."""
        for web in self.webs:
            assert [self.status(web, token) for _ in range(2)] == [expected, expected]

    def seconds_until(self, token: str, expected: int, *, limit: float = 6.0) -> float:
        """Seconds until every process answers ``expected`` (polled every 20 ms)."""
        started = time.monotonic()
        waiting = list(self.webs)
        last: dict[str, int] = {}
        while waiting and time.monotonic() - started < limit:
            for web in list(waiting):
                last[web.url] = self.status(web, token)
                if last[web.url] == expected:
                    waiting.remove(web)
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        assert not waiting, f"still {last} after {elapsed:.2f} s, not {expected}"
        # And it stays so: no process answers by the old rule afterwards.
        for web in self.webs:
            assert self.status(web, token) == expected
        return elapsed

    def grant(self, **principal: str) -> None:
        entry = {**principal, "permission_level": "CAN_QUERY"}
        self.api(
            "PATCH", f"/api/2.0/permissions/serving-endpoints/{self.endpoint_id}", {"access_control_list": [entry]}
        )


def _person(django_user_model, name: str, role: str) -> tuple:  # type: ignore[no-untyped-def]
    person = django_user_model.objects.create_user(name, f"{name}@example.com", "pw-123456789")
    UserProfile.objects.create(user=person, role=role)
    return person, create_token(user=person, comment="revocation test")[1]


_counter = iter(range(1_000_000))


@pytest.fixture
def setup(webs, provider, transactional_db, django_user_model) -> Setup:  # type: ignore[no-untyped-def]
    """An admin, and an external-model endpoint (answered by a fake OpenAI) created through the API.

    The endpoint's name differs per test: route tables of a previous test's endpoint may still
    be cached under its name.
    """
    admin = django_user_model.objects.create_superuser("rev-admin", "rev-admin@example.com", "pw-123456789")
    token = create_token(user=admin, comment="revocation admin")[1]
    name = f"rev-{os.getpid()}-{next(_counter)}"
    ref = "{{secrets/rev-keys/openai}}"
    setup = Setup(webs, name, "", token)
    setup.api("POST", "/api/2.0/secrets/scopes/create", {"scope": "rev-keys"})
    setup.api("POST", "/api/2.0/secrets/put", {"scope": "rev-keys", "key": "openai", "string_value": KEY})
    model = {
        "provider": "openai",
        "name": "gpt-4o",
        "task": "llm/v1/chat",
        "openai_config": {"openai_api_key": ref, "openai_api_base": f"{provider.url}/v1"},
    }
    created = setup.api(
        "POST", "/api/2.0/serving-endpoints", {"name": name, "config": {"served_entities": [{"external_model": model}]}}
    )
    setup.endpoint_id = created["id"]
    return setup


# --- timed at the gateway ------------------------------------------------------------------------


def test_a_grant_and_a_revoke_reach_every_process_within_a_second(setup, django_user_model):
    bob, token = _person(django_user_model, "bob", Role.VIEWER)
    # What is timed is the grant reaching each process, not a cold route table or a first
    # connection to the provider: the admin's queries warm those (under load they took ~0.5 s).
    setup.warm(setup.admin, 200)
    setup.warm(token, 403)  # CAN_VIEW only: both processes cache that
    setup.grant(user_name="bob")
    assert setup.seconds_until(token, 200) < DEADLINE_SECONDS
    setup.warm(token, 200)
    # Revoke: PUT replaces the list, leaving bob out.
    setup.api(
        "PUT",
        f"/api/2.0/permissions/serving-endpoints/{setup.endpoint_id}",
        {"access_control_list": []},
        via=1,  # through the other process this time
    )
    assert setup.seconds_until(token, 403) < DEADLINE_SECONDS


def test_a_revoked_token_stops_within_a_second(setup, django_user_model):
    bob, token = _person(django_user_model, "bob", Role.VIEWER)
    setup.grant(user_name="bob")
    setup.warm(token, 200)
    token_id = AccessToken.objects.get(user=bob).pk
    setup.api("DELETE", f"/api/2.0/modelfleet/tokens/{token_id}")
    assert setup.seconds_until(token, 401) < DEADLINE_SECONDS


def test_a_deactivated_user_stops_within_a_second(setup, django_user_model):
    bob, token = _person(django_user_model, "bob", Role.VIEWER)
    setup.grant(user_name="bob")
    setup.warm(token, 200)
    setup.api("PATCH", "/api/2.0/modelfleet/users/bob", {"active": False})
    assert setup.seconds_until(token, 401) < DEADLINE_SECONDS


def test_a_user_deactivated_over_scim_stops_within_a_second(setup, django_user_model):
    """As an identity provider deactivates someone (Okta and Entra send this PATCH)."""
    bob, token = _person(django_user_model, "bob", Role.VIEWER)
    setup.grant(user_name="bob")
    setup.warm(token, 200)
    patch = {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "path": "active", "value": False}],
    }
    setup.api("PATCH", f"/api/2.0/preview/scim/v2/Users/{bob.pk}", patch, via=1)
    assert setup.seconds_until(token, 401) < DEADLINE_SECONDS


def test_leaving_a_group_that_had_the_grant_stops_within_a_second(setup, django_user_model):
    carol, token = _person(django_user_model, "carol", Role.VIEWER)
    carol.groups.add(Group.objects.create(name="analysts"))
    setup.grant(group_name="analysts")
    setup.warm(token, 200)
    setup.api("DELETE", "/api/2.0/modelfleet/groups/analysts/members/carol")
    assert setup.seconds_until(token, 403) < DEADLINE_SECONDS


def test_a_role_change_reaches_every_process_within_a_second(setup, django_user_model):
    dave, token = _person(django_user_model, "dave", Role.ADMIN)  # admin: CAN_MANAGE everywhere
    setup.warm(token, 200)
    setup.api("PATCH", "/api/2.0/modelfleet/users/dave", {"role": Role.VIEWER})
    assert setup.seconds_until(token, 403) < DEADLINE_SECONDS


def test_a_deleted_secret_stops_being_used_within_a_second(setup, django_user_model):
    """The route table holds the resolved key; deleting the secret drops it everywhere."""
    bob, token = _person(django_user_model, "bob", Role.VIEWER)
    setup.grant(user_name="bob")
    setup.warm(token, 200)
    setup.api("POST", "/api/2.0/secrets/delete", {"scope": "rev-keys", "key": "openai"})
    started = time.monotonic()
    answers: set[int] = set()
    while time.monotonic() - started < 6.0:
        answers = {setup.status(web, token) for web in setup.webs}
        if 200 not in answers:
            break
        time.sleep(0.02)
    assert 200 not in answers, "a deleted key is still used"
    assert time.monotonic() - started < DEADLINE_SECONDS


# --- the steady state costs no database query --------------------------------------------------


def _redis_gets() -> int:
    from endpoints_app.redis_client import get_redis

    return int(get_redis().info("commandstats").get("cmdstat_get", {}).get("calls", 0))


@pytest.mark.django_db(transaction=True)
def test_cached_rights_cost_no_database_query_and_a_change_costs_one_reload(
    api, user, token, provider, settings, django_db_blocker
):
    from asgiref.testing import ApplicationCommunicator
    from django.core.asgi import get_asgi_application

    from endpoints_app.gateway.app import mount

    settings.GATEWAY_ROUTE_TTL_SECONDS = 60.0  # route tables stay: this test is about rights
    allow_egress(settings, provider)
    model = {
        "provider": "openai",
        "name": "gpt-4o",
        "task": "llm/v1/chat",
        "openai_config": {"openai_api_key_plaintext": KEY, "openai_api_base": f"{provider.url}/v1"},
    }
    response = api.post(
        "/api/2.0/serving-endpoints",
        {"name": "steady", "config": {"served_entities": [{"external_model": model}]}},
        format="json",
    )
    assert response.status_code == 200, response.content
    app = mount(get_asgi_application())  # a fresh gateway, with the route TTL above

    async def query() -> int:
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/serving-endpoints/steady/invocations",
            "headers": [(b"authorization", f"Bearer {token}".encode()), (b"content-type", b"application/json")],
            "query_string": b"",
        }
        comm = ApplicationCommunicator(app, scope)
        await comm.send_input({"type": "http.request", "body": b'{"messages": [{"role": "user", "content": "Hi"}]}'})
        start = await comm.receive_output(timeout=10)
        await comm.receive_output(timeout=10)  # the body
        return int(start["status"])

    async def steady(n: int) -> tuple[list[int], float]:
        """Up to ``n`` queries, within 3 s of the warm-up: the caches' own 5 s TTL (a backstop for a
        lost announcement) would otherwise cost one reload, which is not what this measures."""
        started = time.monotonic()
        statuses = []
        while len(statuses) < n and time.monotonic() - started < 3.0:
            statuses.append(await query())
        return statuses, time.monotonic() - started

    assert asyncio.run(query()) == 200  # warm: token, level and route table cached
    gets_before = _redis_gets()
    with django_db_blocker.block():  # any database access, in any thread, raises
        statuses, elapsed = asyncio.run(steady(100))
    assert len(statuses) >= 10 and set(statuses) == {200}
    # The generation is read once per check interval, not once per query.
    assert _redis_gets() - gets_before <= elapsed / access_generation.CHECK_INTERVAL_SECONDS + 2

    # A change anywhere: the next query must reload the rights (here it cannot, so it fails).
    access_generation.bump()  # outside a transaction: announced at once
    time.sleep(access_generation.CHECK_INTERVAL_SECONDS + 0.05)
    with django_db_blocker.block(), pytest.raises(RuntimeError, match="Database access not allowed"):
        asyncio.run(query())
    assert asyncio.run(query()) == 200  # reloaded once, cached again
    with django_db_blocker.block():
        assert set(asyncio.run(steady(5))[0]) == {200}


# --- the watcher ------------------------------------------------------------------------------------


def test_with_redis_unreachable_cached_rights_live_one_check_interval_at_most(tmp_path):
    watcher = access_generation.Watcher(f"unix://{tmp_path / 'no-redis.sock'}", interval=0.2)
    drops: list[float] = []
    watcher.on_change(lambda: drops.append(time.monotonic()))

    async def run() -> float:
        started = time.monotonic()
        await watcher.refresh()
        took = time.monotonic() - started
        await watcher.refresh()  # within the interval: no second check
        assert len(drops) == 1
        await asyncio.sleep(0.25)
        await watcher.refresh()
        return took

    took = asyncio.run(run())
    assert len(drops) >= 2  # unknown generation: dropped each interval, never kept
    assert took < access_generation.READ_TIMEOUT_SECONDS + 0.2  # and no request waits long for Redis


def test_a_redis_that_hangs_holds_one_check_and_then_no_query():
    """A Redis that accepts connections and never answers: the first check gives up after
    READ_TIMEOUT_SECONDS; after that no request waits for it, and the caches keep being dropped."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # the kernel completes connections; nothing ever reads or answers
    try:
        watcher = access_generation.Watcher(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", interval=0.1)
        drops: list[float] = []
        watcher.on_change(lambda: drops.append(time.monotonic()))

        async def run() -> list[float]:
            waits = []
            for _ in range(6):
                started = time.monotonic()
                await watcher.refresh()
                waits.append(time.monotonic() - started)
                await asyncio.sleep(0.12)
            return waits

        waits = asyncio.run(run())
    finally:
        silent.close()
    assert waits[0] < access_generation.READ_TIMEOUT_SECONDS + 0.2
    assert max(waits[1:]) < 0.05, waits  # no query waits on a hung Redis after the first check
    assert len(drops) >= 5  # and cached rights never outlive an interval meanwhile
    gaps = [b - a for a, b in zip(drops, drops[1:], strict=False)]
    assert max(gaps) < 0.4, gaps


def test_the_watcher_drops_once_per_change_and_not_otherwise():
    from django.conf import settings

    watcher = access_generation.Watcher(settings.REDIS_URL, interval=0.0)
    drops: list[int] = []
    watcher.on_change(lambda: drops.append(1))

    async def run() -> None:
        await watcher.refresh()  # the first read: nothing cached yet, one drop
        await watcher.refresh()
        await watcher.refresh()
        assert len(drops) == 1
        access_generation._increment()
        await watcher.refresh()
        await watcher.refresh()
        assert len(drops) == 2

    asyncio.run(run())
    assert watcher.epoch == 2


# --- every way to change rights announces it ------------------------------------------------------


def _change(kind: str, admin, django_user_model) -> None:  # type: ignore[no-untyped-def]
    """Make one change of rights through its service (outside the measured step: its setup)."""
    bob = django_user_model.objects.create_user("bob-svc", "bob-svc@example.com", "pw-123456789")
    scope = secrets.create_scope(actor=admin, scope="svc-scope")
    secrets.put_secret(actor=admin, scope="svc-scope", key="k", string_value="v")
    secrets.put_acl(actor=admin, scope="svc-scope", principal="bob-svc", permission="READ")
    group = users.create_group(actor=admin, name="svc-group")
    token = create_token(user=bob)[0]
    from endpoints_app.models import Endpoint

    endpoint = Endpoint.objects.create(name="svc-endpoint", creator=admin)
    steps = {
        "grant": lambda: permissions.set_permissions(
            actor=admin,
            endpoint=endpoint,
            body={"access_control_list": [{"user_name": "bob-svc", "permission_level": "CAN_QUERY"}]},
            replace=False,
        ),
        "revoke": lambda: permissions.set_permissions(actor=admin, endpoint=endpoint, body={}, replace=True),
        "role": lambda: users.set_role(actor=admin, user=bob, role=Role.VIEWER),
        "deactivate": lambda: users.deactivate(actor=admin, user=bob),
        "join": lambda: users.set_membership(actor=admin, group=group, user=bob, member=True),
        "leave": lambda: users.set_membership(actor=admin, group=group, user=bob, member=False),
        "revoke token": lambda: tokens.revoke_token(token=token, actor=admin),
        "secret acl put": lambda: secrets.put_acl(
            actor=admin, scope="svc-scope", principal="bob-svc", permission="MANAGE"
        ),
        "secret acl delete": lambda: secrets.delete_acl(actor=admin, scope="svc-scope", principal="bob-svc"),
        "secret rotate": lambda: secrets.put_secret(actor=admin, scope="svc-scope", key="k", string_value="w"),
        "secret delete": lambda: secrets.delete_secret(actor=admin, scope="svc-scope", key="k"),
        "scope delete": lambda: secrets.delete_scope(actor=admin, scope="svc-scope"),
    }
    assert SecretScope.objects.filter(pk=scope.pk).exists()
    before = access_generation.current()
    steps[kind]()
    assert access_generation.current() > before, f"{kind} did not bump the access generation"


CHANGES = [
    "grant",
    "revoke",
    "role",
    "deactivate",
    "join",
    "leave",
    "revoke token",
    "secret acl put",
    "secret acl delete",
    "secret rotate",
    "secret delete",
    "scope delete",
]


@pytest.mark.django_db(transaction=True)  # on_commit runs for real
@pytest.mark.parametrize("kind", CHANGES)
def test_every_change_of_rights_bumps_the_generation_on_commit(kind, django_user_model):
    admin = django_user_model.objects.create_superuser("svc-admin", "svc-admin@example.com", "pw-123456789")
    _change(kind, admin, django_user_model)


@pytest.mark.django_db(transaction=True)
def test_the_bump_waits_for_the_commit_and_a_rollback_announces_nothing(django_user_model):
    from django.db import transaction

    admin = django_user_model.objects.create_superuser("svc-admin", "svc-admin@example.com", "pw-123456789")
    bob = django_user_model.objects.create_user("bob-svc", "bob-svc@example.com", "pw-123456789")
    before = access_generation.current()
    with pytest.raises(RuntimeError), transaction.atomic():
        users.deactivate(actor=admin, user=bob)
        assert access_generation.current() == before  # not before the commit
        raise RuntimeError("rolled back")
    assert access_generation.current() == before


@pytest.mark.django_db(transaction=True)
def test_the_django_admin_pages_announce_their_changes(client, django_user_model):
    admin = django_user_model.objects.create_superuser("site-admin", "site-admin@example.com", "pw-123456789")
    bob = django_user_model.objects.create_user("bob-adm", "bob-adm@example.com", "pw-123456789")
    group = Group.objects.create(name="adm-group")
    client.force_login(admin)
    before = access_generation.current()
    response = client.post(f"/admin/auth/group/{group.pk}/change/", {"name": "adm-group", "permissions": []})
    assert response.status_code == 302, response.content[:2000]
    assert access_generation.current() > before
    before = access_generation.current()
    response = client.post(f"/admin/auth/user/{bob.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not django_user_model.objects.filter(pk=bob.pk).exists()
    assert access_generation.current() > before
