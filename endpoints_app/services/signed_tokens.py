"""Short-lived OAuth access tokens: signed, never stored.

``/oidc/v1/token`` (``services.oauth``) mints two kinds:

- **workspace tokens** (``mfo-``): what an OAuth client (the Databricks SDK with
  ``auth_type="oauth-m2m"``) sends instead of a personal access token. They act as their user on
  every API and query route, like the personal access token they were exchanged for.
- **data-plane tokens** (``mfdp-``): query one route-optimized endpoint and nothing else (the
  SDK's ``serving_endpoints_data_plane.query``). The REST API refuses them.

Why signed rather than stored: a client exchanges again about every hour (the SDK refreshes ahead
of expiry), and a row per exchange would grow a table nobody reads. A token is its claims signed
with HMAC-SHA256 under ``SECRET_KEY`` (Django's ``Signer``, one salt per kind, so one kind can never
be read as the other; ``SECRET_KEY_FALLBACKS`` rotate as for sessions). Reading one checks the
signature and the expiry only; ``services.tokens`` then checks the personal access token it came
from (``t``), or the service principal's secret (``s``), so a token stops working when that token
is revoked or expires, that secret or principal is deleted, or its user deactivated (the gateways
forget cached tokens on revocation: ``access_generation``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from django.core import signing

Kind = Literal["workspace", "data-plane"]
PREFIXES: dict[Kind, str] = {"workspace": "mfo-", "data-plane": "mfdp-"}
_SALTS: dict[Kind, str] = {"workspace": "modelfleet.oauth.workspace", "data-plane": "modelfleet.oauth.data-plane"}
# Signed claims are about 150 characters; anything much longer is not one of ours.
MAX_LENGTH = 512


@dataclass(frozen=True)
class Claims:
    kind: Kind
    user_id: int
    token_id: int  # the personal access token the chain of exchanges started from (0: a secret did)
    expires_at: int  # Unix seconds
    endpoint_id: str | None = None  # data-plane tokens: the one endpoint they query
    secret_id: int | None = None  # the service principal's secret the chain started from


def kind_of(raw: str) -> Kind | None:
    """Which kind of signed token ``raw`` looks like (by its prefix), or None: not one."""
    return next((kind for kind, prefix in PREFIXES.items() if raw.startswith(prefix)), None)


def mint(claims: Claims) -> str:
    payload: dict[str, object] = {"u": claims.user_id, "t": claims.token_id, "x": claims.expires_at}
    if claims.endpoint_id is not None:
        payload["e"] = claims.endpoint_id
    if claims.secret_id is not None:
        payload["s"] = claims.secret_id
    return PREFIXES[claims.kind] + signing.Signer(salt=_SALTS[claims.kind]).sign_object(payload)


def read(raw: str) -> Claims | None:
    """The claims of a token this server signed and that has not expired, else None."""
    kind = kind_of(raw)
    if kind is None or len(raw) > MAX_LENGTH:
        return None
    try:
        payload = signing.Signer(salt=_SALTS[kind]).unsign_object(raw.removeprefix(PREFIXES[kind]))
    except (signing.BadSignature, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(payload, dict):
        return None
    user_id, token_id, expires_at, endpoint_id = payload.get("u"), payload.get("t"), payload.get("x"), payload.get("e")
    if not (isinstance(user_id, int) and isinstance(token_id, int) and isinstance(expires_at, int)):
        return None
    if expires_at <= time.time():
        return None
    if (kind == "data-plane") != isinstance(endpoint_id, str):
        return None
    secret_id = payload.get("s")
    if secret_id is not None and not isinstance(secret_id, int):
        return None
    return Claims(
        kind=kind,
        user_id=user_id,
        token_id=token_id,
        expires_at=expires_at,
        endpoint_id=endpoint_id,
        secret_id=secret_id,
    )
