"""Personal access tokens: created once (shown once), stored as a SHA-256 digest, revocable."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from endpoints_app import access_generation, audit
from endpoints_app.models import AccessToken
from endpoints_app.models.tokens import generate_token, hash_token


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


def authenticate_token(raw: str) -> User | None:
    """The active user owning this token, or None."""
    token = (
        AccessToken.objects.select_related("user")
        .filter(digest=hash_token(raw), revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if token is None:
        return None
    now = timezone.now()
    # Touch last_used_at at most once a minute: no write on every request.
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        AccessToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user
