"""Signing in and out of the dashboard in a real browser."""

from __future__ import annotations

import pytest

from tests.browser import login, screenshot

pytestmark = pytest.mark.django_db(transaction=True)


def test_pages_need_a_signed_in_user(client):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_sign_in_shows_the_fleet_and_sign_out_ends_the_session(live_server, page, user):
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", "wrong-password")
    page.click("button[type=submit]")
    assert "Please enter a correct username and password" in page.inner_text("[role=alert]")
    login(page, live_server.url, "alice", "pw-alice-123")
    assert page.locator("nav[aria-label=Main]").is_visible()
    screenshot(page, "fleet-list")
    page.click("text=Sign out")
    page.wait_for_url("**/accounts/login/")
    page.goto(f"{live_server.url}/")
    assert "/accounts/login/" in page.url
