"""The REST API's authentication (DRF): the token in ``Authorization`` (read by ``auth_header``),
refused outright from an address over the failure limit (``auth_throttle``)."""

from __future__ import annotations

from django.contrib.auth.models import User
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from endpoints_app import audit, auth_throttle
from endpoints_app.auth_header import token_from_header
from endpoints_app.services.tokens import authenticate_token


class BearerTokenAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[User, None] | None:
        header = request.META.get("HTTP_AUTHORIZATION")
        if not header:
            return None
        raw = token_from_header(header)
        if raw is None:
            raise exceptions.AuthenticationFailed("Malformed Authorization header: use 'Bearer <token>'")
        address = audit.client_address(request._request)
        throttle = auth_throttle.check(address)
        if throttle is not None:  # refused before the token is even looked up: guessing stops here
            raise exceptions.Throttled(
                wait=throttle.retry_after, detail=f"Too many failed sign-ins or bad tokens from {address}."
            )
        user = authenticate_token(raw)
        if user is None:
            # Counted per address; audited once per window with the token's first characters only.
            auth_throttle.record_failure(address, kind="token", tried=raw[:6] + "…")
            raise exceptions.AuthenticationFailed("Invalid access token")
        return (user, None)

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="modelfleet"'
