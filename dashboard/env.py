"""Strict parsing of the environment: every setting Modelfleet reads, in one place.

A malformed value stops start-up with a message that names the variable (cookiecutter-django's
habit): a typo in production must fail loudly, never silently fall back to a default.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import overload
from urllib.parse import urlparse

from django.core.exceptions import ImproperlyConfigured


class EnvError(ImproperlyConfigured):
    """A setting in the environment could not be parsed."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@overload
def env_str(name: str, default: str) -> str: ...
@overload
def env_str(name: str, default: None = None) -> str | None: ...
def env_str(name: str, default: str | None = None) -> str | None:
    """The variable's value; ``default`` when it is unset or empty (so never None given a default)."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value


def env_bool(name: str, default: bool) -> bool:
    value = env_str(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise EnvError(f"{name}={value!r} is not a boolean (use true/false, 1/0, yes/no, on/off)")


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    value = env_str(name)
    if value is None:
        return default
    try:
        parsed = float(value)
    except ValueError:
        raise EnvError(f"{name}={value!r} is not a number") from None
    if parsed < minimum:
        raise EnvError(f"{name}={value!r} must be at least {minimum}")
    return parsed


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    value = env_str(name)
    if value is None:
        return default
    try:
        parsed = int(value)
    except ValueError:
        raise EnvError(f"{name}={value!r} is not a whole number") from None
    if parsed < minimum:
        raise EnvError(f"{name}={value!r} must be at least {minimum}")
    return parsed


@dataclass(frozen=True)
class Bind:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


_BIND_RE = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):(?P<port>\d{1,5})$")


def env_bind(name: str, default: str) -> Bind:
    value = env_str(name, default)
    assert value is not None
    match = _BIND_RE.match(value.strip())
    if not match or not 0 < int(match["port"]) < 65536:
        raise EnvError(f"{name}={value!r} must look like HOST:PORT, e.g. 127.0.0.1:8000")
    return Bind(host=match["host"].strip("[]"), port=int(match["port"]))


def env_dir(name: str, default: str) -> Path:
    value = env_str(name, default)
    assert value is not None
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise EnvError(f"{name}={value!r} exists and is not a directory")
    return path.resolve()


def env_fernet_key(name: str) -> str | None:
    """A Fernet key (URL-safe base64 of 32 bytes, as ``Fernet.generate_key()`` prints); None when unset.

    The message never repeats the value: it is a secret.
    """
    value = env_str(name)
    if value is None:
        return None
    value = value.strip()
    try:
        raw = base64.urlsafe_b64decode(value.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raw = b""
    if len(raw) != 32 or base64.urlsafe_b64encode(raw).decode("ascii") != value:
        raise EnvError(
            f"{name} is not a valid key: it must be 32 bytes in URL-safe base64 (44 characters), "
            'e.g. the output of python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
        )
    return value


def env_url(name: str, schemes: tuple[str, ...]) -> str | None:
    """A URL whose scheme is one of ``schemes``; None when unset."""
    value = env_str(name)
    if value is None:
        return None
    parsed = urlparse(value)
    if parsed.scheme not in schemes:
        raise EnvError(f"{name}={value!r} must be a URL starting with one of: " + ", ".join(f"{s}://" for s in schemes))
    return value


def env_url_map(name: str, keys: tuple[str, ...]) -> dict[str, str]:
    """``KEY=URL,KEY=URL`` with each key one of ``keys`` and each URL http(s); {} when unset."""
    value = env_str(name)
    if value is None:
        return {}
    result: dict[str, str] = {}
    for item in value.split(","):
        key, sep, url = item.strip().partition("=")
        if not sep or key.strip() not in keys or urlparse(url.strip()).scheme not in ("http", "https"):
            raise EnvError(
                f"{name}={value!r} must look like KEY=https://host/...,KEY=... with KEY one of: {', '.join(keys)}"
            )
        result[key.strip()] = url.strip()
    return result
