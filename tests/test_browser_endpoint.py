"""End to end in a real browser: the dashboard's pages against the whole stack.

An endpoint is created through the API, deployed by the real runtime and queried for real; then
Chromium signs in and reads the fleet list, the endpoint page (charts drawn from the polled
metrics, logs, the query playground through the gateway with the session cookie), the models
and tokens pages. Every page is screenshotted into var/test-artifacts/.
"""

from __future__ import annotations

import time

import pytest
import requests

from endpoints_app.models import Endpoint, HealthStatus, MetricPoint
from tests.browser import login, screenshot, stack_password
from tests.model_fixtures import IRIS_COLUMNS

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

NAME = "browser-ep"
ROW = [5.1, 3.5, 1.4, 0.2]
CANVASES = ("chart-latency", "chart-requests", "chart-errors", "chart-cpu", "chart-mem", "chart-replicas")


def create_and_wait_ready(stack, iris: str) -> None:
    auth = {"Authorization": f"Bearer {stack.token}"}
    body = {
        "name": NAME,
        "config": {
            "served_entities": [
                {"entity_name": iris, "entity_version": "1", "workload_size": "Small", "scale_to_zero_enabled": False}
            ]
        },
        "tags": [{"key": "env", "value": "prod"}],
    }
    response = requests.post(f"{stack.url}/api/2.0/serving-endpoints", json=body, headers=auth, timeout=30)
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        state = requests.get(f"{stack.url}/api/2.0/serving-endpoints/{NAME}", headers=auth, timeout=10).json()["state"]
        if state["ready"] == "READY" and state["config_update"] == "NOT_UPDATING":
            return
        assert state["config_update"] != "UPDATE_FAILED", state
        time.sleep(0.5)
    raise AssertionError(f"{NAME} not READY in time:\n{stack.log()[-4000:]}")


def send_queries(stack, count: int) -> None:
    session = requests.Session()
    for i in range(count):
        response = session.post(
            f"{stack.url}/serving-endpoints/{NAME}/invocations",
            json={"dataframe_split": {"columns": IRIS_COLUMNS, "data": [ROW]}},
            headers={"Authorization": f"Bearer {stack.token}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        if i % 10 == 9:
            time.sleep(0.5)  # spread over a few polls


def wait_for_polls(seconds: float = 60) -> None:
    """Until the metrics poller (every 2 s on the test stack) stored counted requests for iris-1
    and the status poller found the endpoint healthy (the fleet's badge reads both)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        polled = MetricPoint.objects.filter(
            endpoint__name=NAME, served_entity_name="iris-1", request_count__gt=0, cpu_pct__isnull=False
        ).exists()
        if polled and Endpoint.objects.filter(name=NAME, health=HealthStatus.HEALTHY).exists():
            return
        time.sleep(0.5)
    raise AssertionError("the pollers did not record metrics and health in time")



def chart_points(page, canvas: str) -> int:
    return page.evaluate(
        """(id) => {
            const chart = Chart.getChart(document.getElementById(id));
            return chart && chart.data.datasets.length ? chart.data.datasets[0].data.length : 0;
        }""",
        canvas,
    )


def test_the_dashboard_in_a_browser(stack, e2e_token, registered_models, page, django_user_model):
    stack_password(django_user_model.objects.get(username="e2e-admin"), "e2e-password-1")
    create_and_wait_ready(stack, registered_models["iris"])
    send_queries(stack, 40)
    wait_for_polls()

    # 1. Sign in (the login page first).
    page.goto(f"{stack.url}/accounts/login/")
    screenshot(page, "login")
    login(page, stack.url, "e2e-admin", "e2e-password-1")

    # 2. The fleet list: the endpoint, its badge, its split and a sparkline drawn by the server.
    page.goto(f"{stack.url}/")
    row = page.locator("tr", has=page.locator(f"a:text-is('{NAME}')"))
    assert row.locator(".badge").inner_text() == "Ready"
    assert row.locator("svg.spark polyline").count() >= 1
    assert "iris-1" in row.inner_text() and "env=prod" in row.inner_text()
    page.fill("#f-q", "no-such-endpoint")
    page.wait_for_selector("text=No endpoint matches these filters")
    page.fill("#f-q", NAME)
    page.wait_for_selector(f"a:text-is('{NAME}')")
    screenshot(page, "fleet")

    # 3. The endpoint page: every chart drawn with data points from the metric-series API.
    page.click(f"a:text-is('{NAME}')")
    page.wait_for_url(f"**/endpoints/{NAME}/")
    page.wait_for_function(
        "() => window.Chart && Chart.getChart(document.getElementById('chart-requests'))"
        " && Chart.getChart(document.getElementById('chart-requests')).data.datasets[0].data.length > 0"
    )
    for canvas in CANVASES:
        assert chart_points(page, canvas) > 0, canvas
    drawn = page.evaluate(
        "() => Chart.getChart(document.getElementById('chart-requests')).data.datasets[0].data.some(p => p.y > 0)"
    )
    assert drawn, "the request-rate chart has no positive point"
    page.click("button[data-range='21600']")  # 6 h: still 15 s points (24 h reads the 1 min rollups)
    page.wait_for_function("() => document.getElementById('chart-status').textContent.startsWith('Updated')")
    assert chart_points(page, "chart-requests") > 0
    assert page.get_attribute("button[data-range='21600']", "aria-pressed") == "true"
    page.click("button[data-range='3600']")
    page.wait_for_function("() => document.getElementById('chart-status').textContent.startsWith('Updated')")

    # 4. The logs viewer: server lines (followed as they are polled), the build log, a text filter.
    page.check("#logs-follow")
    page.wait_for_function("() => document.getElementById('log-lines').textContent.includes('model loaded')")
    page.select_option("#logs-kind", "build")
    page.wait_for_function("() => document.getElementById('log-lines').textContent.includes('Build finished')")
    page.select_option("#logs-kind", "server")
    page.fill("#logs-q", "model loaded")
    page.wait_for_function(
        "() => { const t = document.getElementById('log-lines').textContent;"
        " return t.includes('model loaded') && t.trim().split('\\n').every(l => l.includes('model loaded')); }"
    )

    # 5. The playground: the example body from the signature, answered through the gateway.
    body = page.input_value("#query-body")
    assert "dataframe_split" in body and "sepal_length" in body
    page.click("#query-form button[type=submit]")
    page.wait_for_selector("#query-result:not([hidden])")
    assert page.inner_text("#query-status") == "200 OK"
    assert page.inner_text("#query-served") == "iris-1"
    assert page.inner_text("#query-latency").endswith(" ms")
    assert "predictions" in page.inner_text("#query-response")
    page.fill("#query-body", '{"dataframe_split": {"columns": ["nope"], "data": [[1]]}}')
    page.click("#query-form button[type=submit]")
    page.wait_for_function("() => document.getElementById('query-status').textContent.startsWith('400')")
    assert "INVALID_PARAMETER_VALUE" in page.inner_text("#query-response")

    # 6. The permissions panel: add a grant and remove it again, through the permissions API.
    django_user_model.objects.create_user("gus", "gus@example.com", "pw-gus-123456")
    page.fill("#grant-name", "nobody")
    page.click("text=Add grant")
    page.wait_for_function("() => document.querySelector('[data-grant-error]').textContent.includes('does not exist')")
    page.fill("#grant-name", "gus")
    page.select_option("#grant-level", "CAN_QUERY")
    page.click("text=Add grant")
    page.wait_for_selector("[data-remove-grant][data-principal='gus']")
    assert "CAN_QUERY" in page.inner_text("#permissions")
    screenshot(page, "endpoint")
    page.click("[data-remove-grant][data-principal='gus']")
    page.wait_for_selector("[data-remove-grant][data-principal='gus']", state="detached")
    assert page.locator("[data-remove-grant][data-principal='e2e-admin']").count() == 1  # the others stay

    # 7. The models page and the tokens page (a token made with the form, shown once).
    page.goto(f"{stack.url}/models/")
    assert NAME in page.inner_text("#model-maindefaultiris")
    screenshot(page, "models")
    page.goto(f"{stack.url}/account/tokens/")
    page.fill("#token-comment", "browser test")
    page.click("text=Create token")
    token = page.inner_text("#new-token")
    assert token.startswith("mf-")
    answer = requests.get(
        f"{stack.url}/api/2.0/serving-endpoints/{NAME}", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert answer.status_code == 200
    screenshot(page, "tokens")

    # 8. A phone's screen: the fleet list still reads.
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{stack.url}/")
    assert page.locator(f"a:text-is('{NAME}')").is_visible()
    screenshot(page, "fleet-phone")
