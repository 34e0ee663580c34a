"""The endpoint editor and the approval flow in a real browser (Playwright driving Debian's Chromium).

The first test drives the traffic-split slider against Django's live server; the end-to-end test
runs the whole product (`modelfleet up`): an editor creates an endpoint through the form, moves
the slider under an approval policy (a change request appears), an approver approves it, and the
running product applies the split.
"""

from __future__ import annotations

import time

import pytest
import requests

from endpoints_app.models import ChangeRequest, Endpoint, Role
from tests.browser import login, screenshot, stack_password
from tests.test_dashboard_edit import make_user

IRIS = "main.default.iris"


def choose(page, row: int, version: str) -> None:
    """Pick iris vN in served entity `row` with the model and version selects the script adds."""
    page.select_option(f"#id_entities-{row}-entity_model", IRIS)
    page.select_option(f"#id_entities-{row}-entity_version", f"{IRIS}/{version}")


def shares(page, rows: int) -> list[int]:
    return [int(page.input_value(f"#id_entities-{i}-traffic")) for i in range(rows)]


def slider(page, row: int):
    return page.locator(f"#id_entities-{row}-traffic_slider")


@pytest.mark.django_db(transaction=True)
def test_the_slider_keeps_the_split_at_100_from_the_keyboard_and_typed_numbers(
    live_server, page, user, registered_models
):
    login(page, live_server.url, "alice", "pw-alice-123")
    page.goto(f"{live_server.url}/endpoints/new")
    choose(page, 0, "1")
    assert shares(page, 1) == [100]
    page.click("text=Add served entity")
    choose(page, 1, "2")
    assert shares(page, 2) == [100, 0]
    assert page.inner_text("#id_entities-1-traffic_label") == "iris-2"  # the label follows the version

    # Arrow keys move a handle; the other share absorbs the difference.
    slider(page, 1).focus()
    for _ in range(25):
        page.keyboard.press("ArrowRight")
    assert shares(page, 2) == [75, 25]
    assert slider(page, 1).get_attribute("aria-valuetext") == "25% of queries to iris-2"
    assert slider(page, 0).input_value() == "75"
    page.keyboard.press("PageUp")  # a bigger step
    assert sum(shares(page, 2)) == 100 and shares(page, 2)[1] > 25

    # Typing a number moves its slider and the others.
    page.fill("#id_entities-0-traffic", "40")
    assert shares(page, 2) == [40, 60] and slider(page, 1).input_value() == "60"
    assert page.inner_text("[data-split-total]") == "Total: 100%"
    widths = page.eval_on_selector_all("[data-split-bar] .seg", "segs => segs.map(s => s.style.width)")
    assert widths == ["40%", "60%"]

    # A third entity starts at 0; taking everything leaves the others at 0; removing it gives its share back.
    page.click("text=Add served entity")
    choose(page, 2, "1")
    page.fill("#id_entities-2-name", "iris-1-copy")
    slider(page, 2).focus()
    page.keyboard.press("End")
    assert shares(page, 3) == [0, 0, 100]
    page.locator("[data-entity='entities-2'] [data-remove-entity]").click()
    assert page.is_hidden("[data-entity='entities-2']") and page.is_hidden("[data-split-row='entities-2']")
    assert shares(page, 2) == [100, 0] or shares(page, 2) == [0, 100]
    assert page.inner_text("[data-split-total]") == "Total: 100%"
    screenshot(page, "endpoint-create-slider")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    screenshot(page, "endpoint-create-phone")


@pytest.mark.django_db(transaction=True)
def test_the_editor_works_without_javascript(live_server, browser, user, registered_models):
    context = browser.new_context(java_script_enabled=False, viewport={"width": 1366, "height": 900})
    page = context.new_page()
    try:
        login(page, live_server.url, "alice", "pw-alice-123")
        page.goto(f"{live_server.url}/endpoints/new")
        assert page.locator("input[type=range]").count() == 0  # numbers only
        page.fill("#id_name", "no-js")
        page.select_option("#id_entities-0-entity", f"{IRIS}/1")
        page.click("text=Add served entity")  # a round trip: the server adds the row
        page.select_option("#id_entities-1-entity", f"{IRIS}/2")
        page.fill("#id_entities-0-traffic", "60")
        page.fill("#id_entities-1-traffic", "30")
        page.click("button.primary")
        assert "must sum to 100, got 90" in page.inner_text("#split_error")  # the server checks the sum
        screenshot(page, "endpoint-create-no-js-error")
        page.fill("#id_entities-1-traffic", "40")
        page.click("button.primary")
        page.wait_for_url(f"{live_server.url}/endpoints/no-js/")
    finally:
        context.close()
    routes = Endpoint.objects.get(name="no-js").pending_config.traffic_config["routes"]
    assert [r["traffic_percentage"] for r in routes] == [60, 40]


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_an_editors_split_change_is_proposed_approved_and_applied(stack, e2e_token, page, user, django_user_model):
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {e2e_token}"
    endpoint_url = f"{stack.url}/api/2.0/serving-endpoints/e2e-split"
    paula = make_user(django_user_model, "paula", Role.APPROVER)
    for someone, password in ((user, "pw-alice-123"), (paula, "pw-paula-123")):
        stack_password(someone, password)
    stack_password(django_user_model.objects.get(username="e2e-admin"), "e2e-password-1")

    # 1. The editor creates an endpoint with two served entities through the form.
    login(page, stack.url, "alice", "pw-alice-123")
    page.goto(f"{stack.url}/endpoints/new")
    page.fill("#id_name", "e2e-split")
    choose(page, 0, "1")
    page.click("text=Add served entity")
    choose(page, 1, "2")
    page.fill("#id_entities-1-traffic", "50")
    assert shares(page, 2) == [50, 50]
    screenshot(page, "endpoint-create-form")
    page.click("button.primary")
    page.wait_for_url(f"{stack.url}/endpoints/e2e-split/")
    wait_until_deployed(api, endpoint_url, [50, 50])

    # 2. An admin puts the endpoint under an approval policy.
    policy = api.post(
        f"{stack.url}/api/2.0/modelfleet/approval-policies", json={"endpoint_name": "e2e-split"}, timeout=10
    )
    assert policy.status_code == 200, policy.text

    # 3. The editor moves the slider (keyboard, then a typed number) and saves: a change request.
    page.goto(f"{stack.url}/endpoints/e2e-split/edit")
    assert "saving creates a change request" in page.inner_text("main")
    slider(page, 0).focus()
    for _ in range(10):
        page.keyboard.press("ArrowRight")
    assert shares(page, 2) == [60, 40]
    page.fill("#id_entities-1-traffic", "30")
    assert shares(page, 2) == [70, 30]
    screenshot(page, "endpoint-edit-slider")
    page.click("text=Propose change")
    page.wait_for_url(f"{stack.url}/change-requests/*/")
    change = ChangeRequest.objects.get(endpoint_name="e2e-split")
    assert change.status == "PENDING"
    assert "now waits for an approver" in page.inner_text(".messages")
    assert "Approve and apply" not in page.content()  # the author cannot approve
    page.click("text=Sign out")
    page.wait_for_url("**/accounts/login/**")

    # 4. The approver finds it pending in the list, reads the diff and approves it.
    login(page, stack.url, "paula", "pw-paula-123")
    page.goto(f"{stack.url}/change-requests/")
    assert page.locator("tr.pending", has_text="e2e-split").count() == 1
    screenshot(page, "change-request-list")
    page.click(f"a[href='/change-requests/{change.pk}/'] >> nth=0")
    assert page.locator(".diff-add", has_text='"traffic_percentage": 70').count() == 1
    screenshot(page, "change-request-detail")
    page.fill("#id_comment", "70/30 looks right")
    page.click("text=Approve and apply")
    page.wait_for_selector(".outcome-applied")
    screenshot(page, "change-request-applied")

    # 5. The running product applies the split.
    body = wait_until_deployed(api, endpoint_url, [70, 30])
    assert body["config"]["config_version"] == 2

    # 6. The admin reads the story in the audit log.
    page.click("text=Sign out")
    page.wait_for_url("**/accounts/login/**")
    login(page, stack.url, "e2e-admin", "e2e-password-1")
    page.goto(f"{stack.url}/audit/?object_name=e2e-split")
    text = page.inner_text("table.audit")
    for action in ("endpoint.create", "change_request.propose", "change_request.approve", "endpoint.update_config"):
        assert action in text
    page.locator("table.audit details").first.click()
    screenshot(page, "audit-log")



def wait_until_deployed(api: requests.Session, url: str, split: list[int], timeout: float = 180) -> dict:
    """The endpoint once it serves `split` with no update in progress (the API's view of it)."""
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        body = api.get(url, timeout=10).json()
        routes = ((body.get("config") or {}).get("traffic_config") or {}).get("routes") or []
        if (
            body.get("state", {}).get("config_update") == "NOT_UPDATING"
            and [r["traffic_percentage"] for r in routes] == split
        ):
            assert body["state"]["ready"] == "READY", body
            return body
        if body.get("state", {}).get("config_update") == "UPDATE_FAILED":
            pytest.fail(f"the update failed: {body}")
        time.sleep(0.5)
    pytest.fail(f"the endpoint did not serve {split} within {timeout}s: {body}")
