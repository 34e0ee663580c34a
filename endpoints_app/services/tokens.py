"""Personal access tokens: created once (shown once), stored as a SHA-256 digest, revocable; and
reading every token a caller may send (OAuth tokens exchanged for one: ``signed_tokens``)."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from endpoints_app import access_generation, audit
from endpoints_app.models import AccessToken
from endpoints_app.models.tokens import generate_token, hash_token
from endpoints_app.services import signed_tokens


def create_token(
    *, user: User, comment: str = "", raw: str | None = None, actor: User | None = None
) -> tuple[AccessToken, str]:
    """A new token for ``user``; returns the row and the raw token (the only time it exists)."""
    raw = raw or generate_token()
    with transaction.atomic():
        token = AccessToken.objects.create(user=user, digest=hash_token(raw), hint=raw[:8], comment=comment)
        # The hint only: a token never appears in the audit log.
        audit.record(
            actor=actor or user,
            action="token.create",
            object_type="token",
            object_id=str(token.pk),
            object_name=user.get_username(),
            after={"hint": token.hint, "comment": comment},
        )
    return token, raw


def revoke_token(*, token: AccessToken, actor: User | None = None) -> None:
    """The token stops working everywhere within a second (the gateways' caches follow access_generation)."""
    with transaction.atomic():
        if AccessToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now()):
            audit.record(
                actor=actor,
                action="token.revoke",
                object_type="token",
                object_id=str(token.pk),
                object_name=token.user.get_username(),
                before={"hint": token.hint},
            )
            access_generation.bump()  # every gateway process forgets the token on commit


@dataclass(frozen=True)
class Credential:
    """Who a token acts for, and where: ``endpoint_id`` limits a data-plane token to querying that
    one endpoint; None is the user's own rights everywhere (a personal access token, or a workspace
    OAuth token exchanged for one)."""

    user: User
    token: AccessToken  # the personal access token it is, or the one it was exchanged for
    endpoint_id: str | None = None
    expires_at: int | None = None  # Unix seconds, for OAuth tokens


def authenticate_token(raw: str) -> User | None:
    """The active user a token acts for on the API: a personal access token or a workspace OAuth
    token; never a data-plane token (it only queries its endpoint, at the gateway)."""
    credential = authenticate_credential(raw)
    return credential.user if credential is not None and credential.endpoint_id is None else None


def authenticate_personal_token(raw: str) -> AccessToken | None:
    """A live personal access token of an active user (the secret an OAuth client sends)."""
    if signed_tokens.kind_of(raw) is not None:
        return None
    token = (
        AccessToken.objects.select_related("user")
        .filter(digest=hash_token(raw), revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if token is not None:
        _touch(token)
    return token


def authenticate_credential(raw: str) -> Credential | None:
    """Any token this server issued: a personal access token, or an OAuth token (signed_tokens)
    whose personal access token is still live and whose user is still active."""
    if signed_tokens.kind_of(raw) is None:
        token = authenticate_personal_token(raw)
        return Credential(user=token.user, token=token) if token is not None else None
    claims = signed_tokens.read(raw)
    if claims is None:
        return None
    token = (
        AccessToken.objects.select_related("user")
        .filter(pk=claims.token_id, user_id=claims.user_id, revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if token is None:
        return None
    _touch(token)
    return Credential(user=token.user, token=token, endpoint_id=claims.endpoint_id, expires_at=claims.expires_at)


def _touch(token: AccessToken) -> None:
    """Touch last_used_at at most once a minute: no write on every request."""
    now = timezone.now()
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        AccessToken.objects.filter(pk=token.pk).update(last_used_at=now)
