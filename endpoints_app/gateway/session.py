"""Queries from the dashboard: the Django session cookie, checked with Django's own CSRF rules.

The endpoint page's query playground posts to ``/serving-endpoints/<name>/invocations`` from
the browser. The browser sends the session cookie by itself, on requests from any site, so the
cookie alone never authorizes a query: the call must also carry the ``X-CSRFToken`` header, and
Django's ``CsrfViewMiddleware`` checks it against the ``csrftoken`` cookie (and the ``Origin``
header against the host) exactly as it checks every form and API call of the site. There is no
CSRF exemption anywhere for cookie authentication.

Why the gateway accepts the cookie rather than a Django view forwarding to the gateway: the
gateway trusts bearer tokens only, so a forwarding view would have to mint or keep a token per
user, and it would add a second HTTP hop and a second place deciding who may query. Accepted
here, a query from the page takes the path of a query from the SDK: the same CAN_QUERY check
(``access.endpoint_level``), routing and traffic split, metrics and payload logging, and the
latency the page shows is the gateway's real latency.
"""

from __future__ import annotations

import io
from importlib import import_module

from django.conf import settings
from django.contrib.auth import get_user
from django.core.exceptions import DisallowedHost
from django.core.handlers.asgi import ASGIRequest
from django.db import close_old_connections
from django.http import HttpRequest, HttpResponse, HttpResponseBase, parse_cookie
from django.middleware.csrf import CsrfViewMiddleware

from endpoints_app.errors import PermissionDenied, Unauthenticated

CSRF_MISSING = (
    "A query with the dashboard's session cookie needs the X-CSRFToken header (the csrftoken cookie's "
    "value, or the page's token); scripts and the SDK send 'Authorization: Bearer <token>' instead"
)


def has_session_cookie(headers: dict[str, str]) -> bool:
    """Whether the request carries a dashboard session cookie (``headers`` lower-cased)."""
    return settings.SESSION_COOKIE_NAME in parse_cookie(headers.get("cookie", ""))


def _request(scope: dict) -> ASGIRequest:
    """The query as a Django request, for the CSRF and session checks; the body is not needed
    (the token must come in the header), so the body's headers are left out and it is never parsed."""
    headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() not in (b"content-type", b"content-length")]
    return ASGIRequest({**scope, "headers": headers}, io.BytesIO(b""))


def _csrf_view(request: HttpRequest) -> HttpResponse:  # never called: process_view only needs a view
    return HttpResponse()


def session_user(scope: dict) -> int:
    """The signed-in user's id for a browser query, after Django's CSRF check; else a domain error.

    1. Refuse at once without the X-CSRFToken header (no cookie-only request gets further).
    2. Django's CSRF check: Origin (and Referer over HTTPS) against the host, header against cookie.
    3. The session, as Django's auth reads it (session hash checked: a changed password ends it).
    """
    close_old_connections()
    try:
        request = _request(scope)
        if settings.CSRF_HEADER_NAME not in request.META:
            raise PermissionDenied(CSRF_MISSING)
        request.session = import_module(settings.SESSION_ENGINE).SessionStore(
            request.COOKIES.get(settings.SESSION_COOKIE_NAME)
        )
        refusal: HttpResponseBase | None
        try:
            refusal = CsrfViewMiddleware(_csrf_view).process_view(request, _csrf_view, (), {})
        except DisallowedHost:
            refusal = HttpResponse(status=403)
        if refusal is not None:
            raise PermissionDenied(
                "CSRF verification failed: send the page's CSRF token in X-CSRFToken, from a page of this site"
            )
        user = get_user(request)
        if not user.is_authenticated or not user.is_active:
            raise Unauthenticated("Your dashboard session has ended: sign in again")
        return int(user.pk)
    finally:
        close_old_connections()
