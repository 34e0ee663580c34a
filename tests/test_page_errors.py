"""Pages answer pages: every dashboard route answers an outsider with HTML, the APIs keep JSON.

The URL conf is walked like tests/test_access_matrix.py does, so a new page route is covered without
a new row. An anonymous visitor is sent to sign in; a signed-in user with no role and no grants gets
HTML 4xx pages for names that do not exist and for an endpoint they cannot see (404, as the API
answers: they must not learn that it exists). An unexpected exception in a page view is an HTML 500
page, in an API view a JSON 500.
"""

from __future__ import annotations

import json
import re

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import get_resolver, path
from django.views.decorators.http import require_POST

from dashboard import urls as dashboard_urls
from endpoints_app.errors import PermissionDenied
from endpoints_app.models import Endpoint, Role, UserProfile

pytestmark = pytest.mark.django_db

# oidc/: the OAuth token and discovery routes answer OAuth clients in JSON, as the API does.
SKIP_PREFIXES = ("api/", "admin/", "static/", "serving-endpoints/", ".well-known/", "oidc/")
PARAM = re.compile(r"<(?:(?P<conv>\w+):)?(?P<name>\w+)>")
HIDDEN = "hidden-endpoint"


def page_routes() -> list[str]:
    """Every page route of the URL conf, as its pattern (``endpoints/<str:name>/edit``)."""

    def walk(patterns, prefix=""):  # type: ignore[no-untyped-def]
        for p in patterns:
            if hasattr(p, "url_patterns"):
                yield from walk(p.url_patterns, prefix + str(p.pattern))
            else:
                yield prefix + str(p.pattern)

    routes = [r for r in walk(get_resolver().url_patterns) if not r.startswith(SKIP_PREFIXES)]
    assert "endpoints/<str:name>/edit" in routes  # the walk found the pages
    return sorted(set(routes))


def fill(route: str, name: str) -> str:
    """The route with its parameters filled: ints with an id nobody has, strings with `name`."""

    def value(match: re.Match[str]) -> str:
        return "987654" if match.group("conv") == "int" else name

    return "/" + PARAM.sub(value, route)


ROUTES = page_routes()
PARAMETERISED = [r for r in ROUTES if PARAM.search(r)]


def assert_html(response: HttpResponse, where: str) -> None:
    content_type = response.get("Content-Type", "")
    assert content_type.startswith("text/html"), (where, response.status_code, content_type)
    body = response.content.decode(errors="replace").strip()
    if body:
        with pytest.raises(ValueError):
            json.loads(body)  # not a JSON document
    assert "error_code" not in body, where


@pytest.fixture
def hidden(django_user_model) -> Endpoint:
    """An endpoint the outsider may not see: created by an admin, no grant to anyone else."""
    admin = django_user_model.objects.create_user("root", "root@example.com", "pw-root-123456")
    UserProfile.objects.create(user=admin, role=Role.ADMIN)
    return Endpoint.objects.create(name=HIDDEN, creator=admin)


@pytest.fixture
def outsider(django_user_model) -> Client:
    """Signed in, no global role, no grants."""
    user = django_user_model.objects.create_user("outsider", "o@example.com", "pw-outsider-123")
    UserProfile.objects.create(user=user, role=Role.NONE)
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("route", ROUTES)
def test_anonymous_visitors_are_sent_to_sign_in_never_json(route, client):
    url = fill(route, "no-such-thing")
    response = client.get(url)
    if response.status_code in (301, 302):
        assert response["Location"].startswith("/accounts/login/"), (url, response["Location"])
    else:
        assert_html(response, url)
        # Only the sign-in page itself answers, signing out refuses GET (405, as a page), and the
        # single sign-on routes are a 404 page while no provider is configured.
        assert (route, response.status_code) in {
            ("accounts/login/", 200),
            ("accounts/logout/", 405),
            ("accounts/sso/login", 404),
            ("accounts/sso/callback", 404),
        }, url


@pytest.mark.parametrize("name", ["no-such-thing", HIDDEN])
@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize("route", PARAMETERISED)
def test_outsiders_get_html_4xx_for_what_does_not_exist_or_they_cannot_see(route, method, name, outsider, hidden):
    url = fill(route, name)
    response = getattr(outsider, method)(url)
    assert 400 <= response.status_code < 500, (method, url, response.status_code)
    assert_html(response, f"{method} {url}")
    if route.startswith("endpoints/") and response.status_code != 405:
        # An endpoint they cannot see does not exist for them, exactly as the API says.
        assert response.status_code == 404, (method, url, response.status_code)
    if response.status_code != 405:
        assert 'href="/"' in response.content.decode()  # the way back


@pytest.mark.parametrize("route", [r for r in ROUTES if not PARAM.search(r)])
def test_outsiders_opening_the_global_pages_get_html(route, outsider):
    response = outsider.get(fill(route, "x"))
    assert response.status_code < 500, route
    assert_html(response, route)


def test_the_api_still_answers_json_for_the_hidden_endpoint_and_unknown_paths(outsider, hidden):
    hidden_api = outsider.get(f"/api/2.0/serving-endpoints/{HIDDEN}")
    assert hidden_api.status_code in (401, 404)  # the API signs in with tokens, not sessions
    assert set(hidden_api.json()) == {"error_code", "message"}
    unknown_api = outsider.get("/api/2.0/no-such-route")
    assert unknown_api.status_code == 404
    assert unknown_api.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    unknown_page = outsider.get("/no-such-page/")
    assert unknown_page.status_code == 404
    assert_html(unknown_page, "/no-such-page/")


# --- a page view that fails unexpectedly ----------------------------------------------------------------


def _boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("unexpected failure inside a view")


def _domain_denied(request: HttpRequest) -> HttpResponse:
    raise PermissionDenied("Only the owner may look at this")


@require_POST
def _post_only(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


urlpatterns = [
    path("test-only/boom", _boom),
    path("test-only/denied", _domain_denied),
    path("test-only/post-only", _post_only),
    path("api/2.0/test-only/boom", _boom),
    path("api/2.0/test-only/denied", _domain_denied),
    *dashboard_urls.urlpatterns,
]
handler400, handler403 = dashboard_urls.handler400, dashboard_urls.handler403
handler404, handler500 = dashboard_urls.handler404, dashboard_urls.handler500


@override_settings(ROOT_URLCONF=__name__)
def test_an_unexpected_exception_is_an_html_500_page_but_json_under_api(outsider):
    outsider.raise_request_exception = False
    page = outsider.get("/test-only/boom")
    assert page.status_code == 500
    assert_html(page, "/test-only/boom")
    assert "unexpected failure" not in page.content.decode()  # no internals in the page
    api = outsider.get("/api/2.0/test-only/boom")
    assert api.status_code == 500
    assert api.json()["error_code"] == "INTERNAL_ERROR"


@override_settings(ROOT_URLCONF=__name__)
def test_a_domain_error_escaping_a_page_view_is_its_page_and_json_under_api(outsider):
    page = outsider.get("/test-only/denied")
    assert page.status_code == 403
    assert_html(page, "/test-only/denied")
    assert "Only the owner may look at this" in page.content.decode()
    api = outsider.get("/api/2.0/test-only/denied")
    assert api.status_code == 403
    assert api.json() == {"error_code": "PERMISSION_DENIED", "message": "Only the owner may look at this"}


@override_settings(ROOT_URLCONF=__name__)
def test_a_wrong_method_on_a_page_is_an_html_405_page_keeping_allow(outsider):
    response = outsider.get("/test-only/post-only")
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert_html(response, "/test-only/post-only")
    assert "Method not allowed" in response.content.decode()
