"""Strict parsing of the single sign-on settings (``MODELFLEET_OIDC_*``), like ``dashboard.env``."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlparse

from dashboard.env import EnvError, env_str

ROLES = ("viewer", "editor", "approver", "admin")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def env_issuer(name: str) -> str | None:
    """The provider's issuer URL: https, or plain http to a loopback address (a provider on the
    same machine, as the tests run one); None when unset. The issuer is set by whoever deploys
    Modelfleet, so it is trusted like the database URL, and not held to the egress policy that
    guards the URLs users give endpoints; but tokens and the client secret never cross plain
    HTTP to another machine."""
    value = env_str(name)
    if value is None:
        return None
    parsed = urlparse(value.strip())
    secure = parsed.scheme == "https" or (parsed.scheme == "http" and _is_loopback(parsed.hostname or ""))
    if not parsed.hostname or not secure or parsed.query or parsed.fragment:
        raise EnvError(
            f"{name}={value!r} must be the provider's https:// issuer URL (plain http only to a loopback address), "
            "without query or fragment"
        )
    return value.strip().rstrip("/")


def env_group_roles(name: str) -> dict[str, str]:
    """``GROUP=ROLE,GROUP=ROLE`` (e.g. ``ml-admins=admin,ml-eng=editor``); {} when unset."""
    value = env_str(name)
    if value is None:
        return {}
    result: dict[str, str] = {}
    for item in value.split(","):
        group, sep, role = item.strip().rpartition("=")
        if not sep or not group.strip() or role.strip() not in ROLES:
            raise EnvError(
                f"{name}={value!r} must look like GROUP=ROLE,GROUP=ROLE with ROLE one of: {', '.join(ROLES)}"
            )
        result[group.strip()] = role.strip()
    return result
