"""End to end (issue 17): rollout plans on the real stack (web + gateway, Celery worker and beat,
runtime agent, real model servers), judged every second (MODELFLEET_ROLLOUT_PLAN_EVALUATION_SECONDS=1).

- a good new version is promoted through every step to 100 % while callers see no error;
- a version that fails 30 % of its queries is rolled back by itself: callers see errors only from
  it (at its share) and only until the next evaluation; it stays deployed at 0 % until closed;
- a slow version is rolled back on the p99 gate;
- on an endpoint an approval policy covers, the plan waits for approval and approval starts it;
- a manual config change pauses a running plan; resume carries on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from endpoints_app import registry
from endpoints_app.models import ApprovalPolicy, EndpointPermission, PermissionLevel, Role, UserProfile
from endpoints_app.services.tokens import create_token
from tests import model_fixtures
from tests.model_fixtures import IRIS_COLUMNS
from tests.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("e2e_token")]

FLAKY = "main.default.flaky"
ROW = dict(zip(IRIS_COLUMNS, [5.1, 3.5, 1.4, 0.2], strict=True))
EP = "/api/2.0/serving-endpoints"
MF = "/api/2.0/modelfleet/serving-endpoints"


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, registered_models, tmp_path_factory):
    """The stack, with rollout plans judged every second."""
    from django.db import connection

    from tests.stack import database_url, start_stack

    if not registry.list_registered_models(FLAKY):
        base = tmp_path_factory.mktemp("flaky")
        registry.register_model_dir(model_fixtures.save_flaky_model(base / "flaky", failures=3), FLAKY)
    with django_db_blocker.unblock():
        db = database_url(connection.settings_dict)
    running = start_stack(
        database=db,
        token="",
        log_path=tmp_path_factory.mktemp("stack") / "stack.log",
        extra_env={"MODELFLEET_ROLLOUT_PLAN_EVALUATION_SECONDS": "1"},
    )
    try:
        yield running
    finally:
        running.stop()


def call(stack: Stack, method: str, path: str, body: Any = None, token: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token or stack.token}"}
    return requests.request(method, stack.url + path, json=body, headers=headers, timeout=30)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what} (last: {last})")


def create_ready(stack: Stack, name: str, model: str, version: str) -> None:
    body = {
        "name": name,
        "config": {
            "served_entities": [
                {
                    "entity_name": model,
                    "entity_version": version,
                    "workload_size": "Small",
                    "scale_to_zero_enabled": False,
                }
            ]
        },
        "email_notifications": {"on_update_failure": ["oncall@example.com"]},
    }
    assert call(stack, "POST", EP, body).status_code == 200

    def ready() -> bool:
        state = call(stack, "GET", f"{EP}/{name}").json()["state"]
        return state == {"ready": "READY", "config_update": "NOT_UPDATING"}

    wait_for(f"{name} ready", ready)


def routes(stack: Stack, name: str) -> dict[str, int]:
    config = call(stack, "GET", f"{EP}/{name}").json().get("config") or {}
    return {r["served_model_name"]: r["traffic_percentage"] for r in config.get("traffic_config", {}).get("routes", [])}


def plan_state(stack: Stack, name: str, plan_id: int) -> dict:
    response = call(stack, "GET", f"{MF}/{name}/rollouts/{plan_id}")
    assert response.status_code == 200, response.content
    return response.json()


def wait_plan(stack: Stack, name: str, plan_id: int, states: set[str], timeout: float = 180) -> dict:
    return wait_for(
        f"plan {plan_id} in {states}",
        lambda: (lambda p: p if p["state"] in states else None)(plan_state(stack, name, plan_id)),
        timeout,
    )


def entity(model: str, version: str) -> dict:
    return {"entity_name": model, "entity_version": version, "workload_size": "Small", "scale_to_zero_enabled": False}


class Traffic:
    """Callers querying the endpoint from ``threads`` threads: (time, status, served entity) per answer."""

    def __init__(self, stack: Stack, name: str, threads: int = 2) -> None:
        self.stack, self.name = stack, name
        self.answers: list[tuple[float, int, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        session = requests.Session()
        url = f"{self.stack.url}/serving-endpoints/{self.name}/invocations"
        headers = {"Authorization": f"Bearer {self.stack.token}"}
        while not self._stop.is_set():
            try:
                r = session.post(url, json={"dataframe_records": [ROW]}, headers=headers, timeout=30)
                self.answers.append((time.time(), r.status_code, r.headers.get("served-model-name", "")))
            except requests.RequestException:
                self.answers.append((time.time(), 0, ""))
            time.sleep(0.02)

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=35)


def start(stack: Stack, name: str, body: dict, token: str | None = None) -> dict:
    response = call(stack, "POST", f"{MF}/{name}/rollouts", body, token=token)
    assert response.status_code == 200, response.content
    return response.json()


def test_a_good_version_is_promoted_through_every_step(stack, registered_models):
    iris = registered_models["iris"]
    create_ready(stack, "roll-good", iris, "1")
    body = {
        "served_entity": entity(iris, "2"),
        "steps": [25, 50, 100],
        "bake_seconds": 2,
        "gates": {"min_requests": 5, "max_p99_latency_ratio": 3, "p99_latency_floor_ms": 200},
    }
    with Traffic(stack, "roll-good") as traffic:
        plan = start(stack, "roll-good", body)
        assert plan["state"] == "RUNNING" and plan["current_share"] == 25
        done = wait_plan(stack, "roll-good", plan["id"], {"SUCCEEDED", "ROLLED_BACK", "PAUSED", "FAILED"}, 240)
    assert done["state"] == "SUCCEEDED", done
    assert [h["share"] for h in done["history"]] == [25, 50, 100]
    assert all(h["readings"]["status"] == "PASS" for h in done["history"][1:])
    assert routes(stack, "roll-good") == {"iris-2": 100}
    statuses = {s for _, s, _ in traffic.answers}
    assert statuses == {200}, [a for a in traffic.answers if a[1] != 200][:5]
    served = {e for _, _, e in traffic.answers}
    assert {"iris-1", "iris-2"} <= served
    # Each step is in the audit log with the readings that allowed it.
    events = call(stack, "GET", "/api/2.0/modelfleet/audit-events?object_name=roll-good").json()
    rows = events.get("events") or events.get("audit_events") or []
    steps = [e for e in rows if e.get("action") == "endpoint.update_config"]
    assert len(steps) == 3 and all("rollout_plan" in (e.get("after") or {}) for e in steps), rows[:3]


def test_a_failing_version_is_rolled_back_and_callers_see_its_errors_only_briefly(stack, registered_models):
    create_ready(stack, "roll-flaky", registered_models["iris"], "1")
    body = {
        "served_entity": entity(FLAKY, "1"),
        "steps": [25, 100],
        "bake_seconds": 600,
        "gates": {"min_requests": 10, "max_4xx_rate_increase": 0.05},
    }
    with Traffic(stack, "roll-flaky", threads=3) as traffic:
        plan = start(stack, "roll-flaky", body)
        done = wait_plan(stack, "roll-flaky", plan["id"], {"ROLLED_BACK", "SUCCEEDED", "FAILED", "PAUSED"}, 240)
        assert done["state"] == "ROLLED_BACK", done
        rolled_back_at = done["finished_at"] / 1000
        time.sleep(5)
    assert "4xx_rate_increase" in done["reason"]
    assert done["readings"]["new_version"]["rate_4xx"] >= 0.2 and done["current_share"] == 0
    errors = [a for a in traffic.answers if a[1] != 200]
    assert errors, "the flaky version answered no error"
    assert {e for _, _, e in errors} == {"flaky-1"}  # never the current version
    assert {s for _, s, _ in errors} == {400}
    # Only until the gate interval: none a few seconds after the rollback (switch + route cache).
    assert not [a for a in errors if a[0] > rolled_back_at + 4], errors[-3:]
    # While the new version took traffic: from its first answer to the rollback.
    first = min(a[0] for a in traffic.answers if a[2] == "flaky-1")
    during = [a for a in traffic.answers if first <= a[0] <= rolled_back_at]
    canary = [a for a in during if a[2] == "flaky-1"]
    assert 0.1 < len(canary) / len(during) < 0.45  # about its 25 % share
    assert len(errors) / len(during) < 0.2
    # Rolled back fast: the breach is judged once the new version had its 10 requests in the
    # step's window (which opens at the first evaluation that sees the step's config active); the
    # gateway's counters reach Redis within a second, and the evaluation runs every second.
    window_start = done["step_started_at"] / 1000
    tenth = sorted(a[0] for a in canary if a[0] >= window_start)[9]
    assert rolled_back_at - tenth < 8, (rolled_back_at - tenth, rolled_back_at - window_start)
    # The new version stays deployed at 0 % until the plan is closed.
    assert routes(stack, "roll-flaky") == {"iris-1": 100, "flaky-1": 0}
    closed = call(stack, "POST", f"{MF}/roll-flaky/rollouts/{plan['id']}/close")
    assert closed.status_code == 200, closed.content
    wait_for("flaky-1 removed", lambda: routes(stack, "roll-flaky") == {"iris-1": 100}, 60)
    again = call(stack, "POST", f"{MF}/roll-flaky/rollouts/{plan['id']}/resume")
    assert again.status_code == 409 and again.json()["error_code"] == "RESOURCE_CONFLICT"


def test_a_slow_version_is_rolled_back_on_the_p99_gate(stack, registered_models):
    create_ready(stack, "roll-slow", registered_models["iris"], "1")
    body = {
        "served_entity": entity(registered_models["slow"], "1"),
        "steps": [50, 100],
        "bake_seconds": 600,
        "gates": {"min_requests": 5, "max_p99_latency_ratio": 2, "p99_latency_floor_ms": 100},
    }
    with Traffic(stack, "roll-slow", threads=4):
        plan = start(stack, "roll-slow", body)
        done = wait_plan(stack, "roll-slow", plan["id"], {"ROLLED_BACK", "SUCCEEDED", "FAILED", "PAUSED"}, 240)
    assert done["state"] == "ROLLED_BACK", done
    assert "p99_latency_ratio" in done["reason"] and done["readings"]["new_version"]["p99_ms"] >= 400
    assert routes(stack, "roll-slow") == {"iris-1": 100, "slow-1": 0}


def test_a_plan_on_a_covered_endpoint_waits_for_approval_then_a_manual_change_pauses_it(
    stack, registered_models, django_user_model
):
    iris = registered_models["iris"]
    create_ready(stack, "roll-gov", iris, "1")
    editor = django_user_model.objects.create_user("ed", "ed@example.com", "pw-123456789")
    UserProfile.objects.create(user=editor, role=Role.EDITOR)
    from endpoints_app.models import Endpoint

    EndpointPermission.objects.create(
        endpoint=Endpoint.objects.get(name="roll-gov"), user=editor, level=PermissionLevel.CAN_MANAGE
    )
    viewer = django_user_model.objects.create_user("vic", "vic@example.com", "pw-123456789")
    UserProfile.objects.create(user=viewer, role=Role.VIEWER)
    ApprovalPolicy.objects.create(endpoint_name="roll-gov")
    editor_token, viewer_token = create_token(user=editor)[1], create_token(user=viewer)[1]

    body = {"served_entity": entity(iris, "2"), "steps": [30, 100], "bake_seconds": 600, "gates": {"min_requests": 5}}
    refused = call(stack, "POST", f"{MF}/roll-gov/rollouts", body, token=viewer_token)
    assert refused.status_code == 403 and refused.json()["error_code"] == "PERMISSION_DENIED"
    plan = start(stack, "roll-gov", body, token=editor_token)
    assert plan["state"] == "PENDING_APPROVAL" and plan["change_request_id"]
    time.sleep(2)  # the evaluator leaves it alone
    assert plan_state(stack, "roll-gov", plan["id"])["state"] == "PENDING_APPROVAL"
    assert routes(stack, "roll-gov") == {"iris-1": 100}
    # A viewer cannot abort it; the admin approves it, which starts it.
    assert call(stack, "POST", f"{MF}/roll-gov/rollouts/{plan['id']}/abort", token=viewer_token).status_code == 403
    approved = call(stack, "POST", f"/api/2.0/modelfleet/change-requests/{plan['change_request_id']}/approve", {})
    assert approved.status_code == 200, approved.content
    wait_for("the first step", lambda: routes(stack, "roll-gov") == {"iris-1": 70, "iris-2": 30}, 180)
    assert plan_state(stack, "roll-gov", plan["id"])["state"] == "RUNNING"

    # A manual change (the admin's, an approver) while it runs pauses it.
    manual = {
        "served_entities": [{**entity(iris, "1"), "name": "iris-1"}, {**entity(iris, "2"), "name": "iris-2"}],
        "traffic_config": {
            "routes": [
                {"served_model_name": "iris-1", "traffic_percentage": 90},
                {"served_model_name": "iris-2", "traffic_percentage": 10},
            ]
        },
    }
    assert call(stack, "PUT", f"{EP}/roll-gov/config", manual).status_code == 200
    paused = plan_state(stack, "roll-gov", plan["id"])
    assert paused["state"] == "PAUSED" and "by hand" in paused["reason"]
    wait_for("the manual split", lambda: routes(stack, "roll-gov") == {"iris-1": 90, "iris-2": 10}, 60)
    # Resume applies the plan's step again; abort puts all traffic back.
    assert call(stack, "POST", f"{MF}/roll-gov/rollouts/{plan['id']}/resume", token=editor_token).status_code == 200
    wait_for("the step again", lambda: routes(stack, "roll-gov") == {"iris-1": 70, "iris-2": 30}, 60)
    aborted = call(stack, "POST", f"{MF}/roll-gov/rollouts/{plan['id']}/abort", token=editor_token)
    assert aborted.status_code == 200 and aborted.json()["state"] == "ABORTED", aborted.content
    wait_for("all traffic back", lambda: routes(stack, "roll-gov") == {"iris-1": 100, "iris-2": 0}, 60)


def test_the_strip_in_a_browser_starts_a_plan_and_follows_it(stack, registered_models, page, django_user_model):
    """The endpoint page's form (defaults filled in) starts a plan; the strip follows it live
    (static/js/rollout.js, under the page's CSP) through its steps to SUCCEEDED."""
    from tests.browser import login, screenshot, stack_password

    stack_password(django_user_model.objects.get(username="e2e-admin"), "e2e-password-1")
    create_ready(stack, "roll-page", registered_models["iris"], "1")
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"{m.text} {m.location}") if m.type == "error" else None)
    login(page, stack.url, "e2e-admin", "e2e-password-1")
    page.goto(f"{stack.url}/endpoints/roll-page/")
    assert page.input_value("#rollout-form input[name=entity_version]") == "2"  # the newest version
    assert page.input_value("#rollout-form input[name=steps]") == "5,25,50,100"
    page.fill("#rollout-form input[name=steps]", "50,100")
    page.fill("#rollout-form input[name=bake_seconds]", "1")
    page.fill("#rollout-form input[name=min_requests]", "3")
    page.fill("#rollout-form input[name=p99_latency_floor_ms]", "500")
    page.click("#rollout-form button[type=submit]")
    page.wait_for_selector("#rollout[data-rollout-state=RUNNING]")
    screenshot(page, "rollout-running")
    with Traffic(stack, "roll-page"):
        # No reload by the test: the strip's script reloads the page when the plan moves on.
        page.wait_for_selector("#rollout[data-rollout-state=SUCCEEDED]", timeout=240_000)
    screenshot(page, "rollout-succeeded")
    assert "100 %" in page.inner_text("#rollout")
    assert routes(stack, "roll-page") == {"iris-2": 100}
    assert not [e for e in errors if "rollout" in e], errors  # the strip's script ran without an error
