"""End to end (issue 16): a second, independent Modelfleet as a remote workspace of the first.

The remote is ``modelfleet up`` (with its setup: its own SQLite database, Redis, model registry
and demo model) in its own data directory and on its own port; it serves a real endpoint of the
demo classifier. The first Modelfleet is the test stack (``modelfleet up --no-setup`` on the test
database) with its remote poller every 2 s and the egress policy allowing exactly the remote's
port. Driven through the first one's API:

1. register the remote as workspace ``far`` with the CLI; after a sweep its endpoint is in the
   fleet list and on the fleet page, with its own page;
2. queries sent to the remote show in the first one's charts (metric-series), and the remote's
   server log lines in its log-lines;
3. the remote stopped: ``far`` is marked unreachable (the error, since when), the endpoint is
   still listed, marked stale (on its page too), its series and logs still there;
4. the remote started again: ``far`` recovers and the endpoint is fresh again;
5. (issue 16 part 4, in the same module so the two stacks start once) a change to the remote's
   endpoint through the first one's approval gate, with users that hold roles in the workspace
   only: the editor's direct change refused (403, how to propose), their 80/20 proposal approved
   by the approver and the remote, read back with the SDK, serving 80/20; a proposal made stale
   by a direct change to the remote refused (409, STALE); a model the remote lacks fails the
   request, the remote's error on it and in the audit row (what was sent and what came back).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from databricks.sdk import WorkspaceClient
from databricks.sdk.service.serving import EndpointCoreConfigInput, Route, ServedEntityInput, TrafficConfig
from django.test import Client

from tests.stack import Stack, database_url, free_port, start_stack

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

REMOTE_TOKEN = "dapi" + "e2efleet" * 5
DEMO_MODEL = "main.default.demo_classifier"
FLEET = "/api/2.0/modelfleet/fleet/endpoints"
ROW = {
    "dataframe_split": {
        "columns": ["sepal_length", "sepal_width", "petal_length", "petal_width"],
        "data": [[5.1, 3.5, 1.4, 0.2]],
    }
}


class Remote:
    """``modelfleet up`` in its own data directory, on a fixed port (so it can be restarted there)."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = root / "remote.log"

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("MODELFLEET_", "DATABASE_URL", "REDIS_URL", "MLFLOW_", "DATABRICKS_", "DJANGO_"))
        }
        env.update(
            {
                "HOME": str(self.root),
                "MODELFLEET_DATA_DIR": str(self.root / "data"),
                "MODELFLEET_CONFIG_FILE": str(self.root / "modelfleetcfg"),
                "MODELFLEET_BIND": f"127.0.0.1:{self.port}",
                "MODELFLEET_BOOTSTRAP_TOKEN": REMOTE_TOKEN,
                "MODELFLEET_POLL_METRICS_SECONDS": "2",
                "MODELFLEET_POLL_STATUS_SECONDS": "2",
                "MODELFLEET_POLL_LOGS_SECONDS": "2",
                "MLFLOW_DISABLE_TELEMETRY": "true",
                "DO_NOT_TRACK": "true",
            }
        )
        return env

    def start(self, timeout: float = 300) -> None:
        modelfleet = Path(sys.executable).parent / "modelfleet"
        out = open(self.log_path, "ab")  # noqa: SIM115 - closed when the process ends
        self.process = subprocess.Popen(
            [str(modelfleet), "up"], env=self.env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the remote exited:\n{self.log_path.read_text()[-5000:]}")
            try:
                if requests.get(self.url + "/.well-known/databricks-config", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the remote did not answer:\n{self.log_path.read_text()[-5000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture(scope="module")
def remote_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def fleet_stack(django_db_setup, django_db_blocker, remote_port, tmp_path_factory) -> Iterator[Stack]:
    """The first Modelfleet: the test stack, polling remotes every 2 s, allowed to reach the remote only."""
    from django.db import connection

    with django_db_blocker.unblock():
        db = database_url(connection.settings_dict)
    running = start_stack(
        database=db,
        token="",
        log_path=tmp_path_factory.mktemp("fleet-stack") / "stack.log",
        extra_env={
            "MODELFLEET_REMOTE_POLL_SECONDS": "2",
            "MODELFLEET_POLL_MAX_BACKOFF_SECONDS": "4",
            "MODELFLEET_EGRESS_ALLOW": f"127.0.0.1:{remote_port}",
        },
    )
    try:
        yield running
    finally:
        running.stop()
        if os.environ.get("MODELFLEET_TEST_SHOW_STACK_LOG"):
            print(running.log()[-20000:])


@pytest.fixture(scope="module")
def remote(fleet_stack, remote_port, tmp_path_factory) -> Iterator[Remote]:
    """The remote, started after the first stack answers (two start-ups at once are slow here)."""
    root = tmp_path_factory.mktemp("remote")
    running = Remote(root, remote_port)
    running.start()
    try:
        yield running
    finally:
        running.stop()
        if os.environ.get("MODELFLEET_TEST_SHOW_STACK_LOG"):
            print(running.log_path.read_text(errors="replace")[-20000:])
        shutil.rmtree(root / "data", ignore_errors=True)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except requests.RequestException as exc:
            last = exc
        if last:
            return last
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def test_a_second_modelfleet_is_polled_charted_and_survives_going_away(fleet_stack, remote, django_user_model):
    from endpoints_app.services.tokens import create_token

    admin = django_user_model.objects.create_superuser("fleet-admin", "fleet@example.com", "fleet-password-1")
    headers = {"Authorization": f"Bearer {create_token(user=admin, comment='e2e')[1]}"}
    api = fleet_stack.url + "/api/2.0/modelfleet"

    def get(path: str, **params: Any) -> Any:
        answer = requests.get(api + path, params=params, headers=headers, timeout=30)
        answer.raise_for_status()
        return answer.json()

    # The remote serves a real endpoint of its demo model.
    remote_sdk = WorkspaceClient(host=remote.url, token=REMOTE_TOKEN, auth_type="pat")
    remote_sdk.serving_endpoints.create_and_wait(
        name="far-demo",
        config=EndpointCoreConfigInput(
            name="far-demo",
            served_entities=[
                ServedEntityInput(
                    entity_name=DEMO_MODEL, entity_version="1", workload_size="Small", scale_to_zero_enabled=False
                )
            ],
        ),
    )

    # 1. Registered with the CLI (checked against the remote first), then its endpoint is in the
    #    fleet after a sweep.
    cli_env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELFLEET_", "DATABRICKS_"))}
    cli_env |= {
        "MODELFLEET_HOST": fleet_stack.url,
        "MODELFLEET_TOKEN": headers["Authorization"].removeprefix("Bearer "),
        "MODELFLEET_CONFIG_FILE": str(remote.root / "no-such-cfg"),
    }
    added = subprocess.run(
        [
            str(Path(sys.executable).parent / "modelfleet"),
            "workspaces",
            "add",
            "far",
            "--host",
            remote.url,
            "--token-stdin",
        ],
        input=REMOTE_TOKEN + "\n",
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert added.returncode == 0, added.stderr
    assert "Workspace far registered: OK" in added.stderr and REMOTE_TOKEN not in added.stdout + added.stderr
    row = wait_for(
        "the remote's endpoint in the fleet",
        lambda: next(
            (e for e in get("/fleet/endpoints", workspace="far")["endpoints"] if e["name"] == "far-demo"), None
        ),
    )
    assert row["workspace"] == "far" and row["stale"] is False
    wait_for("READY", lambda: get("/fleet/endpoints/far/far-demo")["state"]["ready"] == "READY")
    names = [(e["workspace"], e["name"]) for e in get("/fleet/endpoints")["endpoints"]]
    assert ("far", "far-demo") in names
    # The fleet page lists it with its workspace and links to its page, which shows it.
    page = Client()
    page.force_login(admin)
    listing = page.get("/?workspace=far").content.decode()
    assert 'href="/workspaces/far/endpoints/far-demo/"' in listing
    detail = page.get("/workspaces/far/endpoints/far-demo/").content.decode()
    assert "far-demo" in detail and "stale-notice" not in detail
    # The local Databricks-compatible API does not know it.
    assert (
        requests.get(f"{fleet_stack.url}/api/2.0/serving-endpoints/far-demo", headers=headers, timeout=10).status_code
        == 404
    )

    # 2. Queries to the remote show in the first one's charts; its server log in the log lines.
    for _ in range(20):
        answer = requests.post(
            f"{remote.url}/serving-endpoints/far-demo/invocations",
            json=ROW,
            headers={"Authorization": f"Bearer {REMOTE_TOKEN}"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text

    def requests_charted() -> float:
        series = get("/fleet/endpoints/far/far-demo/metric-series", metrics="request_rate")["series"]["request_rate"]
        return sum((v or 0) for _, v in series)

    wait_for("the remote's requests in the charts", requests_charted)
    lines = wait_for(
        "the remote's server log lines",
        lambda: get("/fleet/endpoints/far/far-demo/log-lines", kind="server")["lines"],
    )
    assert all(line["served_model_name"] for line in lines)
    health = get("/fleet/endpoints/far/far-demo")["health"]
    assert health in ("HEALTHY", "DEGRADED")

    # 3. The remote goes away: marked unreachable with the error and since when; nothing lost.
    remote.stop()
    workspace = wait_for(
        "the workspace marked unreachable",
        lambda: (w := get("/workspaces/far"))["status"]["state"] == "ERROR" and w,
    )
    assert "Cannot reach" in workspace["status"]["message"] or "did not answer" in workspace["status"]["message"]
    assert workspace["status"]["since"]
    stale = get("/fleet/endpoints/far/far-demo")
    assert stale["stale"] is True and stale["config_version"] == 1 and stale["served_entities"]
    assert requests_charted() > 0
    assert get("/fleet/endpoints/far/far-demo/log-lines", kind="server")["lines"]
    detail = page.get("/workspaces/far/endpoints/far-demo/").content.decode()
    assert "stale-notice" in detail and "badge-stale" in page.get("/?workspace=far").content.decode()

    # 4. Back: it recovers.
    remote.start()
    wait_for("the workspace back to OK", lambda: get("/workspaces/far")["status"]["state"] == "OK", timeout=120)
    wait_for("the endpoint fresh again", lambda: get("/fleet/endpoints/far/far-demo")["stale"] is False)


# -- 5. a remote change through the gate (issue 16 part 4) -------------------------------------------


def split_entity(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "entity_name": DEMO_MODEL,
        "entity_version": "1",
        "workload_size": "Small",
        "scale_to_zero_enabled": False,
    }


def split(a: int, b: int) -> dict[str, Any]:
    return {
        "served_entities": [split_entity("demo-a"), split_entity("demo-b")],
        "traffic_config": {
            "routes": [
                {"served_model_name": "demo-a", "traffic_percentage": a},
                {"served_model_name": "demo-b", "traffic_percentage": b},
            ]
        },
    }


def test_a_traffic_split_on_a_remote_goes_through_the_gate(fleet_stack, remote, django_user_model):
    from endpoints_app.models import Role, UserProfile
    from endpoints_app.services.tokens import create_token

    admin = django_user_model.objects.create_superuser("rc-admin", "rc@example.com", "rc-password-1")
    people = {}
    for name in ("rc-editor", "rc-approver"):
        person = django_user_model.objects.create_user(name, f"{name}@example.com", "rc-password-1")
        UserProfile.objects.create(user=person, role=Role.NONE)  # roles in far only
        people[name] = {"Authorization": f"Bearer {create_token(user=person, comment='e2e')[1]}"}
    as_admin = {"Authorization": f"Bearer {create_token(user=admin, comment='e2e')[1]}"}
    api = fleet_stack.url + "/api/2.0/modelfleet"

    def call(method: str, path: str, headers: dict[str, str], body: Any = None) -> requests.Response:
        return requests.request(method, api + path, json=body, headers=headers, timeout=120)

    remote_sdk = WorkspaceClient(host=remote.url, token=REMOTE_TOKEN, auth_type="pat")
    remote_sdk.serving_endpoints.create_and_wait(
        name="far-split",
        config=EndpointCoreConfigInput(
            name="far-split",
            served_entities=[ServedEntityInput.from_dict(split_entity("demo-a"))],
        ),
    )

    # 1. Registered, with a policy for the whole workspace and roles granted there only.
    registered = call("POST", "/workspaces", as_admin, {"name": "far", "host": remote.url, "token": REMOTE_TOKEN})
    assert registered.status_code == 200, registered.text
    assert call("POST", "/approval-policies", as_admin, {"workspace": "far"}).status_code == 200
    for name, role in (("rc-editor", "editor"), ("rc-approver", "approver")):
        granted = call("PUT", "/workspaces/far/grants", as_admin, {"user_name": name, "role": role})
        assert granted.status_code == 200, granted.text
    wait_for(
        "the remote's endpoint in the fleet",
        lambda: call("GET", "/fleet/endpoints/far/far-split", as_admin).status_code == 200,
    )
    editor, approver = people["rc-editor"], people["rc-approver"]

    direct = call("PUT", "/workspaces/far/serving-endpoints/far-split/config", editor, split(80, 20))
    assert direct.status_code == 403 and "change-requests" in direct.json()["message"], direct.text

    def propose(body: dict[str, Any]) -> dict[str, Any]:
        answer = call(
            "POST",
            "/change-requests",
            editor,
            {"endpoint_name": "far-split", "workspace": "far", "action": "update_config", "body": body},
        )
        assert answer.status_code == 200, answer.text
        return answer.json()

    change = propose(split(80, 20))
    assert change["status"] == "PENDING" and change["base_config_version"] == 1
    approved = call("POST", f"/change-requests/{change['id']}/approve", approver, {"comment": "go"})
    assert approved.status_code == 200 and approved.json()["status"] == "APPLIED", approved.text

    def serving_80_20() -> bool:
        detail = remote_sdk.serving_endpoints.get("far-split")
        if detail.config is None or detail.pending_config is not None:
            return False
        routes = {
            r.served_model_name or r.served_entity_name: r.traffic_percentage
            for r in detail.config.traffic_config.routes
        }
        ready = all(
            e.state and e.state.deployment and e.state.deployment.value == "DEPLOYMENT_READY"
            for e in detail.config.served_entities
        )
        return routes == {"demo-a": 80, "demo-b": 20} and ready

    wait_for("the remote serving 80/20", serving_80_20, timeout=150)

    # 2. A proposal, then the remote changed directly: approving is refused as stale.
    stale = propose(split(50, 50))
    assert stale["base_config_version"] == 2
    remote_sdk.serving_endpoints.update_config(
        "far-split",
        served_entities=[
            ServedEntityInput.from_dict(split_entity("demo-a")),
            ServedEntityInput.from_dict(split_entity("demo-b")),
        ],
        traffic_config=TrafficConfig(
            routes=[
                Route(served_model_name="demo-a", traffic_percentage=60),
                Route(served_model_name="demo-b", traffic_percentage=40),
            ]
        ),
    )
    refused = call("POST", f"/change-requests/{stale['id']}/approve", approver, {})
    assert refused.status_code == 409 and refused.json()["error_code"] == "RESOURCE_CONFLICT", refused.text
    assert call("GET", f"/change-requests/{stale['id']}", approver).json()["status"] == "STALE"
    wait_for(
        "the remote's own change rolled out",
        lambda: remote_sdk.serving_endpoints.get("far-split").pending_config is None,
        timeout=120,
    )

    # 3. A model the remote does not have: the remote's refusal is on the request and in the audit.
    missing = {"served_entities": [{**split_entity("ghost"), "entity_name": "main.default.no_such_model"}]}
    failing = propose(missing)
    failed = call("POST", f"/change-requests/{failing['id']}/approve", approver, {})
    assert failed.status_code in (400, 404), failed.text
    shown = call("GET", f"/change-requests/{failing['id']}", approver).json()
    assert shown["status"] == "FAILED" and "no_such_model" in shown["error"] and "far" in shown["error"]
    events = call("GET", "/audit-events", as_admin).json()
    rows = [
        e
        for e in events.get("events", events.get("audit_events", []))
        if "remote_endpoint.update_config" in e["action"]
    ]
    failed_row = next(e for e in rows if e["action"].endswith(".failed"))
    text = json.dumps(failed_row)
    assert "no_such_model" in text and '"method": "PUT"' in text and REMOTE_TOKEN not in json.dumps(events)
    applied_row = next(e for e in rows if not e["action"].endswith(".failed"))
    assert '"traffic_percentage": 80' in json.dumps(applied_row) and '"response"' in json.dumps(applied_row)
