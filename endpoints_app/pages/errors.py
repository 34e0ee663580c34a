"""Errors answer in the caller's language: HTML pages for the dashboard, JSON for the APIs.

A browser opening ``/endpoints/x/edit`` must get a page with a way back, not a JSON document; an SDK
calling ``/api/…`` or ``/serving-endpoints/…`` must get ``{"error_code", "message"}``. The choice is
made here, in one place, from the path alone:

- Django's ``handler400/403/404/500`` (set in dashboard/urls.py) are the ``*_handler`` functions below;
- :class:`PageErrorMiddleware` turns a :class:`~endpoints_app.errors.DomainError` that escapes a page
  view into the page for its status (cannot see → 404, cannot act → 403), and gives the bare
  ``405 Method Not Allowed`` of ``require_POST`` & co. a page too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string

from endpoints_app.api import errors as api_errors
from endpoints_app.errors import DomainError

log = logging.getLogger(__name__)

# Paths whose callers are programs: they get JSON errors. Everything else is a page.
API_PREFIXES = ("/api/", "/serving-endpoints/", "/.well-known/")

TITLES = {
    400: "Bad request",
    401: "Not signed in",
    403: "Not allowed",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    412: "Changed meanwhile",
    429: "Too many requests",
    500: "Server error",
}


def is_api_path(path: str) -> bool:
    """Whether errors on this path are answered as JSON (programs) rather than as pages (people)."""
    return path.startswith(API_PREFIXES)


def error_page(request: HttpRequest, status: int, message: str) -> HttpResponse:
    """The dashboard's error page: the status, a message a person can act on, and a link back."""
    context = {"status": status, "title": TITLES.get(status, "Error"), "message": message}
    try:
        body: str = render_to_string("dashboard/error.html", context, request=request)
    except Exception:  # the page itself failed (e.g. while answering a 500): still answer HTML
        log.exception("rendering the error page failed")
        body = (
            f"<!doctype html><title>{status} {context['title']}</title><h1>{context['title']}</h1>"
            '<p><a href="/">Back to the endpoints</a></p>'
        )
    return HttpResponse(body, status=status, content_type="text/html; charset=utf-8")


def bad_request_handler(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_api_path(request.path):
        return api_errors.json_400(request, exception)
    return error_page(request, 400, "The request could not be understood.")


def forbidden_handler(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_api_path(request.path):
        return api_errors.json_403(request, exception)
    return error_page(request, 403, str(exception or "") or "You are not allowed to do this.")


def not_found_handler(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_api_path(request.path):
        return api_errors.json_404(request, exception)
    # Http404 raised by a view carries its message; a path no route matches gets a generic one (Django's
    # resolver message lists the URL patterns, which a visitor has no use for).
    message = ""
    if exception is not None and exception.args and isinstance(exception.args[0], str):
        message = exception.args[0]
    return error_page(request, 404, message or f"There is no page at {request.path}.")


def server_error_handler(request: HttpRequest) -> HttpResponse:
    if is_api_path(request.path):
        return api_errors.json_500(request)
    return error_page(request, 500, "Something went wrong on the server; the error is in the server log.")


class PageErrorMiddleware:
    """Domain errors escaping a page view become pages; a bare 405 on a page path becomes a page.

    Without it a page view that lets ``ResourceDoesNotExist``/``PermissionDenied`` through would reach
    Django's 500 handler, and ``require_POST``'s 405 would be an empty body.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        bare = not getattr(response, "streaming", False) and not response.content
        if response.status_code == 405 and bare and not is_api_path(request.path):
            page = error_page(request, 405, f"This page does not accept {request.method} requests.")
            if response.has_header("Allow"):
                page["Allow"] = response["Allow"]
            return page
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, DomainError):
            return None  # Http404, PermissionDenied and the rest go to the handlers above
        if is_api_path(request.path):
            return JsonResponse(exception.as_dict(), status=exception.status)
        return error_page(request, exception.status, exception.message)
