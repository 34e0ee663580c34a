"""Single sign-on in a real browser (Playwright driving Debian's Chromium) through a real OpenID
provider (django-oauth-toolkit, ``tests.oidc_provider``, on loopback): the sign-in page's button,
the provider's own sign-in page, back on the fleet list with the role the user's group maps to,
then sign-out."""

from __future__ import annotations

import pytest

from endpoints_app.models import AuditEvent, Role, SsoIdentity
from tests.browser import screenshot
from tests.oidc_provider.process import start_provider


@pytest.fixture(scope="module")
def provider(live_server, tmp_path_factory):
    running = start_provider(
        tmp_path_factory.mktemp("oidc-provider"),
        redirect_uri=f"{live_server.url}/accounts/sso/callback",
        users=["carol:pw-carol-123:ml-eng,data", "dave:pw-dave-123:ml-viewers"],
    )
    yield running
    running.stop()


def sign_in_through_the_provider(page, base_url: str, username: str, password: str) -> None:
    page.goto(f"{base_url}/accounts/login/")
    page.click("#sso-sign-in")
    page.wait_for_url(lambda url: "/accounts/login/" in url and not url.startswith(base_url))  # the provider's page
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("#provider-sign-in")
    page.wait_for_url(f"{base_url}/")


@pytest.mark.django_db(transaction=True)
def test_a_user_signs_in_through_the_provider_with_the_role_their_group_maps_to_and_signs_out(
    live_server, provider, page, settings
):
    settings.OIDC_ISSUER = provider.issuer
    settings.OIDC_CLIENT_ID = provider.client_id
    settings.OIDC_CLIENT_SECRET = provider.client_secret
    settings.OIDC_PROVIDER_NAME = "Test IdP"
    settings.OIDC_GROUP_ROLES = {"ml-eng": "editor", "ml-viewers": "viewer"}
    settings.LOCAL_LOGIN = False

    page.goto(f"{live_server.url}/accounts/login/")
    assert page.inner_text("#sso-sign-in") == "Sign in with Test IdP"
    assert not page.is_visible("#id_password")  # behind the break-glass disclosure
    screenshot(page, "sso-sign-in")

    # carol is in ml-eng: an editor, who may create endpoints.
    sign_in_through_the_provider(page, live_server.url, "carol", "pw-carol-123")
    assert page.inner_text("h1") == "Serving endpoints"
    assert page.inner_text(".who-name") == "carol"
    assert page.is_visible("text=Create endpoint")
    carol = SsoIdentity.objects.select_related("user__profile").get(user__username="carol").user
    assert carol.profile.role == Role.EDITOR
    screenshot(page, "sso-fleet-list-editor")

    page.click("text=Sign out")
    page.wait_for_url(f"{live_server.url}/accounts/login/")
    page.goto(f"{live_server.url}/")
    assert "/accounts/login/" in page.url  # signed out

    # dave is in ml-viewers: sees the fleet, may not create.
    page.context.clear_cookies()  # a different person at the provider too
    sign_in_through_the_provider(page, live_server.url, "dave", "pw-dave-123")
    assert page.inner_text(".who-name") == "dave"
    assert page.inner_text("h1") == "Serving endpoints" and not page.is_visible("text=Create endpoint")
    assert SsoIdentity.objects.get(user__username="dave").user.profile.role == Role.VIEWER

    logins = AuditEvent.objects.filter(action="auth.login").order_by("id")
    assert [(e.object_name, e.after["role"], e.after["issuer"]) for e in logins] == [
        ("carol", "editor", provider.issuer),
        ("dave", "viewer", provider.issuer),
    ]
