"""The OAuth token endpoint (``POST /oidc/v1/token``): the two exchanges Databricks clients make.

1. **client credentials** (``grant_type=client_credentials``; the SDK's ``auth_type="oauth-m2m"``,
   with HTTP Basic or form credentials). The client is either
   - a **service principal** (``services.service_principals``): ``client_id`` its application id,
     ``client_secret`` one of its OAuth secrets (``mfsp-…``); or
   - a **user**: ``client_id`` the user name (or email address) and ``client_secret`` one of that
     user's personal access tokens.
   The answer is a workspace token (``signed_tokens``) valid for an hour (never past the personal
   access token's own expiry), with the client's own rights, that dies with the secret or personal
   access token it came from. Each one is an audit event (``oauth.token``).
2. **data-plane token** (``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``; the SDK's
   ``serving_endpoints_data_plane``): ``assertion`` is a workspace token (or a personal access
   token) and ``authorization_details`` the string a route-optimized endpoint's
   ``data_plane_info.query_info`` carries. The caller must have CAN_QUERY on that endpoint now;
   the answer queries that endpoint only, for at most 15 minutes (never past the assertion's own
   expiry), and the gateway still checks CAN_QUERY on every query.

Errors follow RFC 6749 §5.2 (``error``, ``error_description``), which is what OAuth clients read;
``OAuthError`` carries the code, and the view adds the API's ``error_code``/``message`` beside it.
Nothing else is written but the secret's or personal access token's ``last_used_at``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from django.contrib.auth.models import User

from endpoints_app import access, audit
from endpoints_app.errors import DomainError
from endpoints_app.models import Endpoint, PermissionLevel
from endpoints_app.models.tokens import SECRET_PREFIX
from endpoints_app.services import signed_tokens, tokens

CLIENT_CREDENTIALS = "client_credentials"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
WORKSPACE_TOKEN_SECONDS = 3600
DATA_PLANE_TOKEN_SECONDS = 900
SCOPE = "all-apis"
# Scopes a client may ask for: every workspace token has its user's full rights, so "all-apis"
# is the only one it can honestly be granted (the SDK's default, and offline_access beside it).
KNOWN_SCOPES = frozenset({"all-apis", "offline_access"})
QUERY_ACTION = "query_inference_endpoint"
MAX_FIELD_CHARS = 4096


class OAuthError(DomainError):
    """A refused exchange: ``oauth_error`` is the RFC 6749 code, ``status`` the HTTP status."""

    def __init__(self, oauth_error: str, message: str, *, status: int = 400, error_code: str = "BAD_REQUEST"):
        super().__init__(message, error_code=error_code, status=status)
        self.oauth_error = oauth_error


def _no_endpoint() -> OAuthError:
    return OAuthError(
        "invalid_authorization_details",
        "authorization_details names no endpoint you can see",
        status=404,
        error_code="RESOURCE_DOES_NOT_EXIST",
    )


def authorization_details(endpoint: Endpoint) -> str:
    """The ``authorization_details`` of a route-optimized endpoint's data plane (a JSON string,
    as Databricks gives it): querying this endpoint, the one right a data-plane token carries."""
    detail = {
        "type": "workspace_permission",
        "object_type": "serving-endpoints",
        "object_path": f"/serving-endpoints/{endpoint.id}",
        "actions": [QUERY_ACTION],
    }
    return json.dumps([detail], separators=(",", ":"))


def exchange(form: Mapping[str, str], *, basic: tuple[str, str] | None = None) -> dict[str, Any]:
    """The token response for one ``/oidc/v1/token`` request (its form fields; ``basic``: the
    HTTP Basic client credentials, if sent), or OAuthError / DomainError."""
    for key, value in form.items():
        if len(value) > MAX_FIELD_CHARS or "\x00" in value:
            raise OAuthError("invalid_request", f"{key[:100]} is longer than {MAX_FIELD_CHARS} characters or holds NUL")
    grant = form.get("grant_type", "")
    if grant == CLIENT_CREDENTIALS:
        client_id, client_secret = basic or (form.get("client_id", ""), form.get("client_secret", ""))
        return _client_credentials(client_id, client_secret, form.get("scope", ""))
    if grant == JWT_BEARER:
        return _data_plane_token(form.get("assertion", ""), form.get("authorization_details", ""))
    raise OAuthError(
        "unsupported_grant_type",
        f"grant_type must be '{CLIENT_CREDENTIALS}' (client_id: a service principal's application id, "
        "client_secret: one of its secrets; or a user name and one of that user's personal access tokens) "
        f"or '{JWT_BEARER}' (a data-plane token for a route-optimized endpoint)",
    )


def _client_credentials(client_id: str, client_secret: str, scope: str) -> dict[str, Any]:
    requested = set(scope.split())
    if requested - KNOWN_SCOPES:
        raise OAuthError(
            "invalid_scope",
            f"unknown scope {', '.join(sorted(requested - KNOWN_SCOPES))}: a token has its user's rights, "
            f"scope '{SCOPE}'",
        )
    refused = OAuthError(
        "invalid_client",
        "Invalid client credentials: client_id is a service principal's application id and client_secret one of "
        "its OAuth secrets, or your user name (or email address) and one of your personal access tokens",
        status=401,
        error_code="UNAUTHENTICATED",
    )
    now = int(time.time())
    if client_secret.startswith(SECRET_PREFIX):
        secret = tokens.authenticate_secret(client_secret)
        if secret is None or client_id.strip().lower() != str(secret.principal.application_id):
            raise refused
        user = secret.principal.user
        claims = signed_tokens.Claims(
            kind="workspace", user_id=user.pk, token_id=0, secret_id=secret.pk, expires_at=now + WORKSPACE_TOKEN_SECONDS
        )
        _record(user, "service_principal", str(secret.principal.application_id), secret.hint, WORKSPACE_TOKEN_SECONDS)
        return _answer(signed_tokens.mint(claims), WORKSPACE_TOKEN_SECONDS, scope=SCOPE)
    token = tokens.authenticate_personal_token(client_secret) if client_secret else None
    if token is None or not _names(token.user, client_id):
        raise refused
    lifetime = WORKSPACE_TOKEN_SECONDS
    if token.expires_at is not None:  # never outlives the personal access token it stands for
        lifetime = max(1, min(lifetime, int(token.expires_at.timestamp()) - now))
    claims = signed_tokens.Claims(kind="workspace", user_id=token.user.pk, token_id=token.pk, expires_at=now + lifetime)
    _record(token.user, "user", token.user.get_username(), token.hint, lifetime)
    return _answer(signed_tokens.mint(claims), lifetime, scope=SCOPE)


def _record(user: User, kind: str, client_id: str, hint: str, lifetime: int) -> None:
    """An audit event for an issued workspace token: who, through which secret (its hint), for how long."""
    audit.record(
        actor=user,
        action="oauth.token",
        object_type=kind,
        object_id=str(user.pk),
        object_name=client_id,
        after={"grant_type": CLIENT_CREDENTIALS, "secret_hint": hint, "expires_in": lifetime},
    )


def _names(user: User, client_id: str) -> bool:
    """Whether ``client_id`` names ``user``: their user name, or their email address (how the API
    shows people, e.g. as an endpoint's creator)."""
    if not client_id:
        return False
    return client_id == user.get_username() or bool(user.email) and client_id.lower() == user.email.lower()


def _data_plane_token(assertion: str, details: str) -> dict[str, Any]:
    credential = tokens.authenticate_credential(assertion) if assertion else None
    if credential is None or credential.endpoint_id is not None:
        raise OAuthError(
            "invalid_grant",
            "The assertion must be a valid workspace token: an OAuth token from this server, or a personal access token",
            status=401,
            error_code="UNAUTHENTICATED",
        )
    endpoint = _endpoint_of(details)
    level = access.endpoint_level(credential.user, endpoint)
    if level is None:  # the same answer as an id no endpoint has: an id says nothing of an unseen endpoint
        raise _no_endpoint()
    access.require(credential.user, endpoint, PermissionLevel.CAN_QUERY)  # 403 without CAN_QUERY
    if not endpoint.route_optimized:
        raise OAuthError(
            "invalid_request",
            f"Endpoint '{endpoint.name}' is not route-optimized, so it has no data plane: query it at "
            f"/serving-endpoints/{endpoint.name}/invocations with your token",
        )
    lifetime = DATA_PLANE_TOKEN_SECONDS
    if credential.expires_at is not None:
        lifetime = min(lifetime, credential.expires_at - int(time.time()))
    token_id, secret_id = credential.origin
    claims = signed_tokens.Claims(
        kind="data-plane",
        user_id=credential.user.pk,
        token_id=token_id,
        secret_id=secret_id,
        expires_at=int(time.time()) + lifetime,
        endpoint_id=endpoint.id,
    )
    return _answer(signed_tokens.mint(claims), lifetime)


def _endpoint_of(details: str) -> Endpoint:
    """The endpoint an ``authorization_details`` string names, if it asks for exactly the query
    right on one serving endpoint (what ``authorization_details`` gives)."""
    try:
        parsed = json.loads(details)
    except ValueError:
        parsed = None
    detail = parsed[0] if isinstance(parsed, list) and len(parsed) == 1 else None
    path = detail.get("object_path") if isinstance(detail, dict) else None
    if (
        not isinstance(detail, dict)
        or detail.get("type") != "workspace_permission"
        or detail.get("object_type") != "serving-endpoints"
        or detail.get("actions") != [QUERY_ACTION]
        or not isinstance(path, str)
        or not path.startswith("/serving-endpoints/")
    ):
        raise OAuthError(
            "invalid_authorization_details",
            "authorization_details must be the string in the endpoint's data_plane_info.query_info: "
            f"one workspace_permission on serving-endpoints with the action {QUERY_ACTION}",
        )
    endpoint = Endpoint.objects.filter(id=path.removeprefix("/serving-endpoints/")).first()
    if endpoint is None:
        raise _no_endpoint()
    return endpoint


def _answer(raw: str, lifetime: int, *, scope: str | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"access_token": raw, "token_type": "Bearer", "expires_in": lifetime}
    if scope:
        answer["scope"] = scope
    return answer
