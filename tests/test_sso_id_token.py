"""Single sign-on refuses forged and misdirected ID tokens.

A hostile OpenID provider on loopback (a plain HTTP server in this process: discovery, a JWKS with
its real public key, a token endpoint) answers the code exchange with an ID token that is wrong in
one way each time: signed by another key, signed with no algorithm at all (``alg: none``), for
another client, from another issuer, expired, with another sign-in's nonce, or none. Each must be
refused (no user, no session, an ``auth.failed`` audit row naming the check), and the same
provider's well-formed token must sign in, so the refusals are the checks' doing, not a broken
flow.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from authlib.jose import JsonWebKey, jwt
from django.test import Client

from endpoints_app.models import AuditEvent, SsoIdentity

CLIENT_ID = "modelfleet-test"
SIGNING_KEY = JsonWebKey.generate_key("RSA", 2048, is_private=True, options={"kid": "real"})
FORGER_KEY = JsonWebKey.generate_key("RSA", 2048, is_private=True, options={"kid": "real"})  # same kid


class HostileProvider:
    """Discovery, JWKS and a token endpoint whose ID token ``mint`` makes from the sign-in's nonce."""

    def __init__(self) -> None:
        self.mint: Callable[[str, str], str] = lambda issuer, nonce: ""
        self.nonce = ""
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path == "/.well-known/openid-configuration":
                    self._json(
                        {
                            "issuer": provider.issuer,
                            "authorization_endpoint": f"{provider.issuer}/authorize",
                            "token_endpoint": f"{provider.issuer}/token",
                            "jwks_uri": f"{provider.issuer}/jwks",
                            "response_types_supported": ["code"],
                            "subject_types_supported": ["public"],
                            "id_token_signing_alg_values_supported": ["RS256"],
                        }
                    )
                elif self.path == "/jwks":
                    self._json({"keys": [SIGNING_KEY.as_dict(is_private=False, kid="real", use="sig", alg="RS256")]})
                else:
                    self.send_error(404)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                if self.path != "/token":
                    self.send_error(404)
                    return
                id_token = provider.mint(provider.issuer, provider.nonce)
                self._json({"access_token": "opaque", "token_type": "Bearer", "expires_in": 300, "id_token": id_token})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileProvider]:
    running = HostileProvider()
    yield running
    running.stop()


@pytest.fixture
def sso(settings, hostile) -> HostileProvider:
    settings.OIDC_ISSUER = hostile.issuer
    settings.OIDC_CLIENT_ID = CLIENT_ID
    settings.OIDC_CLIENT_SECRET = "client-secret-for-tests"
    return hostile


def claims(issuer: str, nonce: str, changes: dict[str, Any] | None = None) -> dict[str, Any]:
    now = int(time.time())
    body = {
        "iss": issuer,
        "sub": "mallory-subject",
        "aud": CLIENT_ID,
        "iat": now,
        "exp": now + 300,
        "nonce": nonce,
        "preferred_username": "mallory",
        "groups": ["ml-admins"],
    }
    body.update(changes or {})
    return {k: v for k, v in body.items() if v is not None}


def signed(body: dict[str, Any], key: Any = SIGNING_KEY) -> str:
    token: bytes = jwt.encode({"alg": "RS256", "kid": "real"}, body, key)
    return token.decode()


def unsigned(body: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'kid': 'real'})}.{part(body)}."


def sign_in(client: Client, provider: HostileProvider) -> Any:
    """Start at Modelfleet, then come back from the 'provider' with a code and the right state."""
    start = client.get("/accounts/sso/login")
    assert start.status_code == 302, start.content
    query = parse_qs(urlsplit(start["Location"]).query)
    provider.nonce = query["nonce"][0]
    return client.get(f"/accounts/sso/callback?code=any-code&state={query['state'][0]}")


FORGED = {
    "signed by another key with the real key's id": lambda iss, nonce: signed(claims(iss, nonce), FORGER_KEY),
    "alg none": lambda iss, nonce: unsigned(claims(iss, nonce)),
    "for another client": lambda iss, nonce: signed(claims(iss, nonce, {"aud": "someone-else"})),
    "from another issuer": lambda iss, nonce: signed(claims(iss, nonce, {"iss": "https://evil.example"})),
    "expired": lambda iss, nonce: signed(
        claims(iss, nonce, {"iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600})
    ),
    "another sign-in's nonce": lambda iss, nonce: signed(claims(iss, "a-nonce-from-elsewhere")),
    "no nonce": lambda iss, nonce: signed(claims(iss, nonce, {"nonce": None})),
}


# What the audit row names, per case (Authlib's own words): each refusal is the check it is meant to be.
REASONS = {
    "signed by another key with the real key's id": "bad_signature",
    "alg none": "Algorithm of 'none' is not allowed",
    # aud names another client only: the token is not for us (Authlib asks for azp, which would
    # have to name us, when aud is not exactly this client).
    "for another client": "'azp'",
    "from another issuer": "Invalid claim: 'iss'",
    "expired": "expired_token",
    "another sign-in's nonce": "Invalid claim: 'nonce'",
    "no nonce": "Missing claim: 'nonce'",
}


@pytest.mark.django_db
@pytest.mark.parametrize("case", sorted(FORGED))
def test_a_forged_or_misdirected_id_token_is_refused(sso, case):
    sso.mint = FORGED[case]
    client = Client()
    response = sign_in(client, sso)
    assert response.status_code in (400, 403), (case, response.status_code)
    assert "Single sign-on failed" in response.content.decode(), case
    assert client.get("/").status_code == 302, case  # not signed in
    assert not SsoIdentity.objects.exists(), case
    failed = AuditEvent.objects.get(action="auth.failed", object_type="sso")
    assert REASONS[case] in failed.object_name, (case, failed.object_name)  # refused by the right check


@pytest.mark.django_db
def test_the_same_providers_well_formed_token_signs_in(sso):
    sso.mint = lambda iss, nonce: signed(claims(iss, nonce))
    client = Client()
    response = sign_in(client, sso)
    assert response.status_code == 302, response.content
    assert client.get("/").status_code == 200
    assert SsoIdentity.objects.get().user.get_username() == "mallory"
