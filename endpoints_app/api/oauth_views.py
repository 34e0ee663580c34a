"""OAuth for Databricks clients (``services.oauth`` says what is exchanged for what):

- ``GET /oidc/.well-known/oauth-authorization-server``: the discovery document the SDK reads
  (``/.well-known/databricks-config`` names ``<host>/oidc`` as its ``oidc_endpoint``);
- ``POST /oidc/v1/token``: the token endpoint (a form body, RFC 6749).

Neither takes a bearer token: the token endpoint authenticates the client itself, so it is
throttled like every sign-in (``auth_throttle``: a caller over the failure limit is refused before
any credential is looked up, and each refused credential counts). Answers carry
``Cache-Control: no-store`` (RFC 6749 §5.1), and errors both OAuth's ``error`` /
``error_description`` and the API's ``error_code`` / ``message``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from django.http import JsonResponse
from django.urls import URLPattern, path
from rest_framework.exceptions import APIException
from rest_framework.parsers import FormParser
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.views import APIView

from endpoints_app import audit, auth_throttle
from endpoints_app.api.views import base_url
from endpoints_app.errors import DomainError
from endpoints_app.services import oauth

FORM = "application/x-www-form-urlencoded"
_OAUTH_ERRORS = {401: "invalid_client", 403: "access_denied", 404: "invalid_request", 429: "slow_down"}


class OAuthView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]


class AuthorizationServerMetadataView(OAuthView):
    def get(self, request: Request) -> JsonResponse:
        oidc = f"{base_url(request)}/oidc"
        return JsonResponse(
            {
                "issuer": oidc,
                "token_endpoint": f"{oidc}/v1/token",
                "grant_types_supported": [oauth.CLIENT_CREDENTIALS, oauth.JWT_BEARER],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                "scopes_supported": sorted(oauth.KNOWN_SCOPES),
                "response_types_supported": [],
            }
        )


class TokenView(OAuthView):
    parser_classes = [FormParser]

    def post(self, request: Request) -> JsonResponse:
        address = audit.client_address(request._request)
        throttle = auth_throttle.check(address)
        if throttle is not None:
            return _error(
                429, "slow_down", "REQUEST_LIMIT_EXCEEDED", throttle.message, retry_after=throttle.retry_after
            )
        try:
            data = request.data
        except APIException as exc:  # not a form (415) or unreadable
            return _error(400, "invalid_request", "MALFORMED_REQUEST", f"Send a form body ({FORM}): {exc}")
        form = {str(k): str(v) for k, v in data.items()} if isinstance(data, Mapping) else {}
        basic = None
        try:
            basic = _basic_credentials(request.headers.get("Authorization"))
            answer = oauth.exchange(form, basic=basic)
        except DomainError as err:
            if err.status == 401:
                # The client id or the token's first characters, never a secret.
                tried = form.get("client_id") or (basic[0] if basic else "") or form.get("assertion", "")[:6] + "…"
                auth_throttle.record_failure(address, kind="token", tried=tried[:64])
            code = getattr(err, "oauth_error", None) or _OAUTH_ERRORS.get(err.status, "invalid_request")
            return _error(err.status, code, err.error_code, err.message)
        response = JsonResponse(answer)
        response["Cache-Control"] = "no-store"
        return response


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    """HTTP Basic client credentials (client_secret_basic: each part form-encoded, RFC 6749 §2.3.1)."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    malformed = oauth.OAuthError(
        "invalid_client", "Malformed HTTP Basic client credentials", status=401, error_code="UNAUTHENTICATED"
    )
    if scheme.lower() != "basic":
        raise malformed
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise malformed from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise malformed
    # Not form-decoded (RFC 6749 §2.3.1 asks clients to encode them; requests, which the SDK uses,
    # does not, and a user name may hold a '+').
    return client_id, secret


def _error(
    status: int, oauth_error: str, error_code: str, message: str, *, retry_after: int | None = None
) -> JsonResponse:
    response = JsonResponse(
        {"error": oauth_error, "error_description": message, "error_code": error_code, "message": message},
        status=status,
    )
    response["Cache-Control"] = "no-store"
    if retry_after is not None:
        response["Retry-After"] = str(retry_after)
    if status == 401:
        response["WWW-Authenticate"] = 'Basic realm="modelfleet"'
    return response


urlpatterns: list[URLPattern] = [
    path("oidc/.well-known/oauth-authorization-server", AuthorizationServerMetadataView.as_view()),
    path("oidc/v1/token", TokenView.as_view()),
]
