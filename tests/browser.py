"""Playwright driving Debian's Chromium, for the dashboard's browser tests.

Chromium runs headless with no background networking or component updates: nothing leaves
loopback. Screenshots go to $MODELFLEET_TEST_ARTIFACTS (default var/test-artifacts/).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("MODELFLEET_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--disable-background-networking", "--disable-component-update", "--no-sandbox"]
ARTIFACTS = Path(os.environ.get("MODELFLEET_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "var" / "test-artifacts"))


# One browser per test module, not per session: while Playwright's sync API runs, an event loop
# is running on the test thread, and later modules' asyncio.run() would fail.
@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (`make test` does)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop on the test thread; Django's ORM calls in the test
    # itself are still synchronous, so let them through (Playwright's documented Django recipe).
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    yield tab
    context.close()


def login(page, base_url: str, username: str, password: str) -> None:
    page.goto(f"{base_url}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/accounts/login/" not in url)


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def stack_password(user, password: str) -> None:  # type: ignore[no-untyped-def]
    """Hash the password so the stack can check it: the test settings hash with MD5 (fast), which the
    real settings the stack runs with do not accept. Few PBKDF2 rounds keep sign-in quick; the stack
    reads the rounds from the hash."""
    from django.contrib.auth.hashers import PBKDF2PasswordHasher

    hasher = PBKDF2PasswordHasher()
    user.password = hasher.encode(password, hasher.salt(), iterations=1000)
    user.save(update_fields=["password"])
