"""Content-Security-Policy on every HTML answer (Django 5.2 has no CSP of its own).

The policy (``settings.CONTENT_SECURITY_POLICY``) allows scripts, styles, images and fonts from
this site only: the pages load htmx, Chart.js and one small script each as static files, carry no
inline script, style attribute or event handler, and are never framed. Django's SecurityMiddleware
and XFrameOptionsMiddleware add nosniff, Referrer-Policy, COOP, HSTS and X-Frame-Options.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse


class SecurityHeadersMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        # Only documents run a policy; a JSON answer or a static file gains nothing from it.
        if response.get("Content-Type", "").startswith("text/html"):
            response.headers.setdefault("Content-Security-Policy", settings.CONTENT_SECURITY_POLICY)
        return response
