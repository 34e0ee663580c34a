"""Encryption at rest for secret values: Fernet (AES-128-CBC with HMAC-SHA256) from ``cryptography``.

The key is ``MODELFLEET_SECRETS_KEY`` when set (parsed strictly at start-up). Otherwise it is
generated on first use into ``DATA_DIR / "secrets_key"`` with owner-only permissions, so a
single-host install needs no setup. Every process that reads secrets (web, worker, gateway) must
see the same key: with separate data dirs, set ``MODELFLEET_SECRETS_KEY``.

Fernet tokens are authenticated, so a wrong key is detected (``SecretsKeyError``), never
decrypted into garbage.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings

from endpoints_app.errors import DomainError

KEY_FILE_NAME = "secrets_key"


class SecretsKeyError(DomainError):
    """The secrets key is unusable, or is not the key the stored secrets were encrypted with."""

    error_code = "INTERNAL_ERROR"
    status = 500


def key_file() -> Path:
    return Path(settings.DATA_DIR) / KEY_FILE_NAME


def load_or_create_key_file(path: Path) -> str:
    """The key in ``path``, generating it first if the file does not exist.

    1. Write a new key to a private temporary file (O_EXCL, mode 0600).
    2. Hard-link it to ``path``: that publishes the complete file atomically and fails if another
       process got there first, in which case its key is the one to use.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(Fernet.generate_key().decode("ascii"))
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process won the race: use its key
        finally:
            tmp.unlink(missing_ok=True)
    value = path.read_text().strip()
    try:
        Fernet(value.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise SecretsKeyError(
            f"The secrets key file {path} does not hold a valid key (32 bytes in URL-safe base64)"
        ) from None
    return value


_lock = threading.Lock()
_cached: tuple[tuple[str | None, str], Fernet] | None = None


def _fernet() -> Fernet:
    """The Fernet for the configured key; rebuilt when the settings change (tests override them)."""
    global _cached
    source = (settings.SECRETS_KEY, str(settings.DATA_DIR))
    with _lock:
        if _cached is None or _cached[0] != source:
            key = settings.SECRETS_KEY or load_or_create_key_file(key_file())
            _cached = (source, Fernet(key.encode("ascii")))
        return _cached[1]


def where_the_key_is() -> str:
    return "MODELFLEET_SECRETS_KEY" if settings.SECRETS_KEY else str(key_file())


def encrypt(plaintext: bytes) -> bytes:
    return _fernet().encrypt(plaintext)


def decrypt(token: bytes | memoryview, *, what: str) -> bytes:
    """The plaintext of ``token``; ``what`` names the secret in the error (never its value)."""
    try:
        return _fernet().decrypt(bytes(token))
    except InvalidToken:
        raise SecretsKeyError(
            f"Secret {what} cannot be decrypted with the secrets key in {where_the_key_is()}: "
            "it was stored under a different key. Restore the original key, or put the secret again."
        ) from None
