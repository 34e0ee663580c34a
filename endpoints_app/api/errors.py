"""Every API error as ``{"error_code": ..., "message": ...}`` with the Databricks status pairing."""

from __future__ import annotations

import logging
import math
from typing import Any

from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions
from rest_framework.response import Response

from endpoints_app.errors import DomainError

log = logging.getLogger(__name__)

_DRF_CODES: list[tuple[type[exceptions.APIException], str]] = [
    (exceptions.ParseError, "MALFORMED_REQUEST"),
    (exceptions.NotAuthenticated, "UNAUTHENTICATED"),
    (exceptions.AuthenticationFailed, "UNAUTHENTICATED"),
    (exceptions.PermissionDenied, "PERMISSION_DENIED"),
    (exceptions.NotFound, "RESOURCE_DOES_NOT_EXIST"),
    (exceptions.MethodNotAllowed, "METHOD_NOT_ALLOWED"),
    (exceptions.UnsupportedMediaType, "INVALID_PARAMETER_VALUE"),
    (exceptions.NotAcceptable, "INVALID_PARAMETER_VALUE"),
    (exceptions.Throttled, "REQUEST_LIMIT_EXCEEDED"),
    (exceptions.ValidationError, "INVALID_PARAMETER_VALUE"),
]


def _message(detail: Any) -> str:
    if isinstance(detail, dict):
        return "; ".join(f"{k}: {_message(v)}" for k, v in detail.items())
    if isinstance(detail, list):
        return "; ".join(_message(v) for v in detail)
    return str(detail)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DomainError):
        return Response(exc.as_dict(), status=exc.status)
    if isinstance(exc, Http404):
        return Response({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": str(exc) or "Not found"}, status=404)
    if isinstance(exc, exceptions.APIException):
        code = next((c for cls, c in _DRF_CODES if isinstance(exc, cls)), "BAD_REQUEST")
        message = _message(exc.detail)
        if isinstance(exc, exceptions.ParseError):
            message = f"Malformed request body: {message}"
        response = Response({"error_code": code, "message": message}, status=exc.status_code)
        if isinstance(exc, exceptions.Throttled):
            wait: float | None = exc.wait  # type: ignore[attr-defined]  # set by Throttled.__init__; DRF's stubs omit it
            if wait is not None:
                response["Retry-After"] = str(max(1, math.ceil(wait)))
        if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
            response.status_code = 401
            response["WWW-Authenticate"] = 'Bearer realm="modelfleet"'
        return response
    return None  # Django's handler500 answers (JSON for /api/ paths)


def json_404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(
        {"error_code": "ENDPOINT_NOT_FOUND", "message": f"No API found for '{request.method} {request.path}'"},
        status=404,
    )


def json_500(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {"error_code": "INTERNAL_ERROR", "message": "The server failed to process the request; see the server log"},
        status=500,
    )


def json_400(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(
        {"error_code": "BAD_REQUEST", "message": f"Bad request: {exception}" if exception else "Bad request"},
        status=400,
    )


def json_403(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(
        {"error_code": "PERMISSION_DENIED", "message": str(exception) or "Permission denied"}, status=403
    )
