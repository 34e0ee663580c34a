"""Single sign-on with OpenID Connect: the authorization code flow with PKCE, through Authlib.

Why Authlib: it is maintained, implements the relying party's whole side of the protocol (RFC
6749/7636, OpenID Connect Core and Discovery) and has a Django integration, so nothing here
parses or checks a JWT by hand. What it does for us, per sign-in:

1. discovery: ``ISSUER/.well-known/openid-configuration`` (fetched once per process; we also
   require its ``issuer`` to be exactly ``MODELFLEET_OIDC_ISSUER``, OpenID Discovery §4.3);
2. ``/accounts/sso/login``: a random state, nonce and PKCE verifier (S256), kept in this browser's
   session, and a redirect to the provider;
3. ``/accounts/sso/callback``: the state must match the session's (else no code is exchanged),
   the code is exchanged with the client secret and the verifier, and the ID token's signature is
   checked against the provider's JWKS (fetched again once when a key id is unknown), then its
   issuer, audience, expiry, issue time and nonce.

Then ``services.sso.sign_in`` turns the verified claims into a user, groups and a role, and
Django's ``login`` starts a new session (a new session key: no fixation). A failure shows the
sign-in page with what failed, is counted against the client's address like a wrong password,
and is audited. Tokens and codes are never logged or stored; the ID token is kept nowhere.

Sign-out is Django's (``/accounts/logout/``): it ends the Modelfleet session; the provider's own
session is the provider's.
"""

from __future__ import annotations

import logging
from typing import Any

import requests
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.django_client import DjangoOAuth2App, OAuth
from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.models import User
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import path, reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET
from joserfc.errors import JoseError

from endpoints_app import audit, auth_throttle
from endpoints_app.services import sso as sso_services

log = logging.getLogger(__name__)

SSO_BACKEND = "endpoints_app.pages.sso.SsoBackend"
_NEXT_KEY = "modelfleet_sso_next"
_clients: dict[tuple[str, ...], DjangoOAuth2App] = {}


class SsoError(Exception):
    """The provider's answer failed a check; the message says which, for the user and the audit."""


def provider() -> DjangoOAuth2App | None:
    """The Authlib client for the configured provider (one per process and configuration: it
    caches the discovery document and the JWKS); None when single sign-on is off."""
    if not settings.OIDC_ISSUER:
        return None
    key = (settings.OIDC_ISSUER, settings.OIDC_CLIENT_ID, settings.OIDC_CLIENT_SECRET, settings.OIDC_SCOPES)
    client = _clients.get(key)
    if client is None:
        client = OAuth().register(
            name="oidc",
            client_id=settings.OIDC_CLIENT_ID,
            client_secret=settings.OIDC_CLIENT_SECRET,
            server_metadata_url=f"{settings.OIDC_ISSUER}/.well-known/openid-configuration",
            client_kwargs={"scope": settings.OIDC_SCOPES, "code_challenge_method": "S256", "default_timeout": 10},
        )
        _clients[key] = client
    return client


def _metadata(client: DjangoOAuth2App) -> dict[str, Any]:
    metadata: dict[str, Any] = client.load_server_metadata()
    if metadata.get("issuer") != settings.OIDC_ISSUER:
        raise SsoError(
            f"the provider's discovery document names issuer {metadata.get('issuer')!r}, not the one configured"
        )
    return metadata


def _failed(request: HttpRequest, reason: str, *, status: int = 400) -> HttpResponse:
    address = audit.client_address(request)
    sso_services.record_failure(address, reason=f"sso: {reason}"[:255])
    log.warning("single sign-on failed from %s: %s", address or "?", reason)
    return render(
        request,
        "registration/login.html",
        {"form": AuthenticationForm(request), "sso_error": f"Single sign-on failed: {reason}."},
        status=status,
    )


def _throttled(request: HttpRequest) -> HttpResponse | None:
    """An address over the failed sign-in limit gets the sign-in page with the reason (429)."""
    throttle = auth_throttle.check(audit.client_address(request))
    if throttle is None:
        return None
    context = {"form": AuthenticationForm(request), "sso_error": throttle.message}
    response = render(request, "registration/login.html", context, status=429)
    response["Retry-After"] = str(throttle.retry_after)
    return response


@require_GET
def sso_login(request: HttpRequest) -> HttpResponse:
    client = provider()
    if client is None:
        raise Http404("Single sign-on is not configured")
    throttled = _throttled(request)
    if throttled is not None:
        return throttled
    wanted = request.GET.get("next", "")
    safe = url_has_allowed_host_and_scheme(
        wanted, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    request.session[_NEXT_KEY] = wanted if wanted and safe else settings.LOGIN_REDIRECT_URL
    try:
        _metadata(client)
        response: HttpResponse = client.authorize_redirect(request, request.build_absolute_uri(reverse("sso_callback")))
    except (SsoError, requests.RequestException, ValueError) as exc:
        return _failed(request, f"the provider could not be reached or described itself wrongly ({exc})", status=502)
    return response


@require_GET
def sso_callback(request: HttpRequest) -> HttpResponse:
    client = provider()
    issuer = settings.OIDC_ISSUER
    if client is None or issuer is None:
        raise Http404("Single sign-on is not configured")
    throttled = _throttled(request)
    if throttled is not None:
        return throttled
    try:
        _metadata(client)
        token = client.authorize_access_token(request)
        claims = token.get("userinfo")
        if not claims:
            raise SsoError("the provider sent no ID token")
        claims = dict(claims)
        if settings.OIDC_GROUPS_CLAIM not in claims and client.load_server_metadata().get("userinfo_endpoint"):
            # Some providers put groups in the userinfo answer only; it must be about the same subject.
            extra = dict(client.userinfo(token=token))
            if extra.get("sub") != claims.get("sub"):
                raise SsoError("the userinfo answer is about another subject")
            claims = {**extra, **claims}
        user = sso_services.sign_in(issuer=issuer, claims=claims)
    except AuthlibBaseError as exc:  # state mismatch, provider errors (error=access_denied…)
        return _failed(request, exc.description or exc.error or type(exc).__name__)
    except JoseError as exc:  # signature, issuer, audience, expiry, nonce
        return _failed(request, f"the ID token was refused ({exc.error}: {exc.description or ''})".replace(": )", ")"))
    except requests.RequestException as exc:
        return _failed(request, f"the provider could not be reached ({type(exc).__name__})", status=502)
    except (SsoError, sso_services.SignInRefused) as exc:
        return _failed(request, str(exc), status=403)
    wanted = request.session.pop(_NEXT_KEY, settings.LOGIN_REDIRECT_URL)
    login(request, user, backend=SSO_BACKEND)
    return HttpResponseRedirect(wanted)


class SsoBackend(ModelBackend):
    """Keeps a single sign-on session's user (``get_user``); it authenticates no credentials."""

    def authenticate(self, request: HttpRequest | None, *args: Any, **kwargs: Any) -> User | None:
        return None


class LocalLoginBackend(auth_throttle.ThrottledModelBackend):
    """Password sign-in (the dashboard and /admin/), throttled; with ``MODELFLEET_LOCAL_LOGIN=false``
    refused for everyone but the break-glass admin, before any password is checked."""

    def authenticate(
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kw: Any
    ) -> User | None:
        if not sso_services.local_login_allowed(username):
            return None  # Django then fires user_login_failed: counted and audited as a failure
        return super().authenticate(request, username=username, password=password, **kw)


def sign_in_options(request: HttpRequest) -> dict[str, Any]:
    """For the sign-in page: whether to show the provider's button and the password form."""
    return {
        "sso_enabled": bool(settings.OIDC_ISSUER),
        "sso_provider_name": settings.OIDC_PROVIDER_NAME,
        "local_login": settings.LOCAL_LOGIN,
    }


urlpatterns = [
    path("accounts/sso/login", sso_login, name="sso_login"),
    path("accounts/sso/callback", sso_callback, name="sso_callback"),
]
