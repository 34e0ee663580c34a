"""Personal access tokens: created once (shown once), stored as a SHA-256 digest, revocable, with
an optional expiry (``lifetime_seconds``, within the maximum an admin sets per user); and reading
every token a caller may send (OAuth tokens exchanged for a personal access token or for a service
principal's secret: ``signed_tokens``).

Expiry is checked on every read, here: ``Credential.expires_at`` is the earliest moment the token
stops (its own expiry, or that of the token or secret it was exchanged for), and the gateway
caches a credential no longer than that, so an expired token is refused at once everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from endpoints_app import access_generation, audit
from endpoints_app.errors import InvalidParameterValue
from endpoints_app.models import AccessToken, ServicePrincipalSecret, UserProfile
from endpoints_app.models.tokens import SECRET_PREFIX, generate_token, hash_token
from endpoints_app.services import signed_tokens

# A hundred years: the longest lifetime or maximum accepted (a date every database can store).
MAX_LIFETIME_SECONDS = 100 * 365 * 24 * 3600


def parse_lifetime(value: object, field: str = "lifetime_seconds") -> int | None:
    """A token lifetime from a request: a whole number of seconds above zero, or None (absent,
    null or -1, as Databricks' token API reads "no expiry")."""
    if value is None or (type(value) is int and value == -1):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_LIFETIME_SECONDS:
        raise InvalidParameterValue(
            f"{field} must be a whole number of seconds from 1 to {MAX_LIFETIME_SECONDS} (or -1: no expiry)"
        )
    return value


def max_lifetime(user: User) -> int | None:
    """The longest lifetime ``user``'s new tokens may have (None: no limit)."""
    return UserProfile.objects.filter(user=user).values_list("max_token_lifetime_seconds", flat=True).first()


def set_max_lifetime(*, actor: User, user: User, seconds: int | None) -> None:
    """An admin's per-user maximum for new tokens (tokens already issued keep their expiry)."""
    with transaction.atomic():
        profile, _ = UserProfile.objects.get_or_create(user=user)
        before = profile.max_token_lifetime_seconds
        profile.max_token_lifetime_seconds = seconds
        profile.save(update_fields=["max_token_lifetime_seconds"])
        audit.record(
            actor=actor,
            action="user.max_token_lifetime",
            object_type="user",
            object_id=str(user.pk),
            object_name=user.get_username(),
            before={"max_token_lifetime_seconds": before},
            after={"max_token_lifetime_seconds": seconds},
        )


def create_token(
    *,
    user: User,
    comment: str = "",
    raw: str | None = None,
    actor: User | None = None,
    lifetime_seconds: int | None = None,
) -> tuple[AccessToken, str]:
    """A new token for ``user``, expiring after ``lifetime_seconds`` (None: never); returns the row
    and the raw token (the only time it exists). A lifetime beyond the user's maximum (or none,
    when there is a maximum) is refused."""
    limit = max_lifetime(user)
    if limit is not None and (lifetime_seconds is None or lifetime_seconds > limit):
        raise InvalidParameterValue(
            f"Tokens of {user.get_username()} may live at most {limit} seconds: set lifetime_seconds to {limit} or less"
        )
    raw = raw or generate_token()
    expires_at = timezone.now() + timedelta(seconds=lifetime_seconds) if lifetime_seconds is not None else None
    with transaction.atomic():
        token = AccessToken.objects.create(
            user=user, digest=hash_token(raw), hint=raw[:8], comment=comment, expires_at=expires_at
        )
        # The hint only: a token never appears in the audit log.
        audit.record(
            actor=actor or user,
            action="token.create",
            object_type="token",
            object_id=str(token.pk),
            object_name=user.get_username(),
            after={
                "hint": token.hint,
                "comment": comment,
                **({"lifetime_seconds": lifetime_seconds} if lifetime_seconds is not None else {}),
            },
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
    OAuth token exchanged for one or for a service principal's secret)."""

    user: User
    token: AccessToken | None  # the personal access token it is, or the one it was exchanged for
    endpoint_id: str | None = None
    expires_at: int | None = None  # Unix seconds: when it stops working (None: never)
    secret: ServicePrincipalSecret | None = None  # the principal's secret it was exchanged for

    @property
    def origin(self) -> tuple[int, int | None]:
        """(personal access token id, secret id) of the chain's start, for the claims of a token
        exchanged for this one: exactly one of them names a row (a token id 0 names none)."""
        return (self.token.pk if self.token is not None else 0, self.secret.pk if self.secret is not None else None)


def _unix(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def _earliest(*moments: int | None) -> int | None:
    known = [m for m in moments if m is not None]
    return min(known) if known else None


def authenticate_token(raw: str) -> User | None:
    """The active user a token acts for on the API: a personal access token or a workspace OAuth
    token; never a data-plane token (it only queries its endpoint, at the gateway)."""
    credential = authenticate_credential(raw)
    return credential.user if credential is not None and credential.endpoint_id is None else None


def _live() -> Q:
    """A personal access token that still works: not revoked, not expired, its user active."""
    return Q(revoked_at__isnull=True, user__is_active=True) & (
        Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now())
    )


def authenticate_personal_token(raw: str) -> AccessToken | None:
    """A live personal access token of an active user (the secret an OAuth client sends)."""
    if signed_tokens.kind_of(raw) is not None or raw.startswith(SECRET_PREFIX):
        return None
    token = AccessToken.objects.select_related("user").filter(_live(), digest=hash_token(raw)).first()
    if token is not None:
        _touch(token)
    return token


def authenticate_secret(raw: str) -> ServicePrincipalSecret | None:
    """A service principal's OAuth secret, while it and its principal exist (never a bearer token:
    only the token endpoint reads secrets)."""
    if not raw.startswith(SECRET_PREFIX):
        return None
    secret = (
        ServicePrincipalSecret.objects.select_related("principal__user")
        .filter(digest=hash_token(raw), principal__user__is_active=True)
        .first()
    )
    if secret is not None:
        _touch(secret)
    return secret


def authenticate_credential(raw: str) -> Credential | None:
    """Any token this server issued: a personal access token, or an OAuth token (signed_tokens)
    whose personal access token (or service principal's secret) is still live and whose user is
    still active."""
    if signed_tokens.kind_of(raw) is None:
        token = authenticate_personal_token(raw)
        if token is None:
            return None
        return Credential(user=token.user, token=token, expires_at=_unix(token.expires_at))
    claims = signed_tokens.read(raw)
    if claims is None:
        return None
    if claims.secret_id is not None:
        secret = (
            ServicePrincipalSecret.objects.select_related("principal__user")
            .filter(pk=claims.secret_id, principal__user_id=claims.user_id, principal__user__is_active=True)
            .first()
        )
        if secret is None:
            return None
        _touch(secret)
        return Credential(
            user=secret.principal.user,
            token=None,
            secret=secret,
            endpoint_id=claims.endpoint_id,
            expires_at=claims.expires_at,
        )
    token = (
        AccessToken.objects.select_related("user").filter(_live(), pk=claims.token_id, user_id=claims.user_id).first()
    )
    if token is None:
        return None
    _touch(token)
    return Credential(
        user=token.user,
        token=token,
        endpoint_id=claims.endpoint_id,
        expires_at=_earliest(claims.expires_at, _unix(token.expires_at)),
    )


def _touch(row: AccessToken | ServicePrincipalSecret) -> None:
    """Touch last_used_at at most once a minute: no write on every request."""
    now = timezone.now()
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
        type(row).objects.filter(pk=row.pk).update(last_used_at=now)
