"""Connection profiles for the CLI, kept in an INI file like ``~/.databrickscfg``.

The file (``~/.modelfleetcfg``, or ``$MODELFLEET_CONFIG_FILE``) has one section per profile, each
with ``host`` and ``token``::

    [DEFAULT]
    host = http://127.0.0.1:8000
    token = mf-...

Unlike ``configparser``'s usual behaviour, ``[DEFAULT]`` is an ordinary profile here: other
profiles do not inherit its keys, so a half-filled profile can never send one server's token to
another server's host.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from endpoints_app.cli.errors import CliError

DEFAULT_PROFILE = "DEFAULT"
DEFAULT_CONFIG_FILE = "~/.modelfleetcfg"

ENV_CONFIG_FILE = "MODELFLEET_CONFIG_FILE"
ENV_PROFILE = "MODELFLEET_CONFIG_PROFILE"
ENV_HOST = "MODELFLEET_HOST"
ENV_TOKEN = "MODELFLEET_TOKEN"

_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


@dataclass(frozen=True)
class Profile:
    """Where to connect and how to authenticate; ``source`` says where it came from (for --debug)."""

    host: str
    token: str
    source: str


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get(ENV_CONFIG_FILE) or DEFAULT_CONFIG_FILE).expanduser()


def normalize_host(host: str) -> str:
    """Strip whitespace and trailing slashes; add a scheme if missing.

    Loopback hosts get ``http://`` (that is how ``make run`` serves), anything else ``https://``,
    as the Databricks SDK does.
    """
    host = host.strip().rstrip("/")
    if host and "://" not in host:
        scheme = "http" if host.split(":")[0] in _LOOPBACK_HOSTS or host.startswith("[::1]") else "https"
        host = f"{scheme}://{host}"
    return host


def _read_profiles(path: Path) -> configparser.ConfigParser:
    # A section name nobody uses as default_section makes [DEFAULT] a plain section (no inheritance);
    # interpolation is off because tokens may contain '%'.
    parser = configparser.ConfigParser(default_section="\0no-default\0", interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error as exc:
        raise CliError(f"cannot parse {path}: {exc}") from exc
    return parser


def resolve_profile(profile: str | None = None, environ: Mapping[str, str] | None = None) -> Profile:
    """Pick host and token, in this order:

    1. ``profile`` (from ``--profile``): that section; an error if it does not exist.
    2. ``$MODELFLEET_HOST`` and ``$MODELFLEET_TOKEN``, when both are set.
    3. The section named by ``$MODELFLEET_CONFIG_PROFILE`` (an error if missing), else ``[DEFAULT]``.
       A lone ``$MODELFLEET_HOST`` or ``$MODELFLEET_TOKEN`` overrides that field of the profile.
    """
    env = os.environ if environ is None else environ
    path = config_path(env)

    if profile:
        section = _profile_section(path, profile, required=True)
        return _complete(section.get("host", ""), section.get("token", ""), f"profile {profile!r} in {path}")

    env_host, env_token = env.get(ENV_HOST, ""), env.get(ENV_TOKEN, "")
    if env_host and env_token:
        return _complete(env_host, env_token, f"${ENV_HOST}/${ENV_TOKEN}")

    name = env.get(ENV_PROFILE) or DEFAULT_PROFILE
    section = _profile_section(path, name, required=bool(env.get(ENV_PROFILE)))
    host = env_host or section.get("host", "")
    token = env_token or section.get("token", "")
    return _complete(host, token, f"profile {name!r} in {path}")


def _profile_section(path: Path, name: str, *, required: bool) -> dict[str, str]:
    parser = _read_profiles(path) if path.exists() else None
    if parser is None or not parser.has_section(name):
        if required:
            raise CliError(f"profile '{name}' not found in {path}")
        return {}
    return dict(parser.items(name))


def _complete(host: str, token: str, source: str) -> Profile:
    missing = [field for field, value in (("host", host), ("token", token)) if not value.strip()]
    if missing:
        raise CliError(
            f"no Modelfleet {' and '.join(missing)} configured (looked at {source}). "
            f"Run `make run` (it writes the DEFAULT profile to {DEFAULT_CONFIG_FILE}) "
            f"or set {ENV_HOST} and {ENV_TOKEN}."
        )
    return Profile(host=normalize_host(host), token=token.strip(), source=source)


def write_default_profile(path: str | os.PathLike[str], host: str, token: str) -> bool:
    """Add a ``[DEFAULT]`` profile to the config file unless it already has one.

    Returns whether it wrote. Other profiles and comments are kept (the section is appended), and
    the file is made readable by its owner only, since it holds tokens.
    """
    path = Path(path).expanduser()
    if path.exists() and _read_profiles(path).has_section(DEFAULT_PROFILE):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    separator = "\n" if existing and not existing.endswith("\n") else ""
    if existing.strip():
        separator += "\n"
    block = f"{separator}[{DEFAULT_PROFILE}]\nhost = {host}\ntoken = {token}\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, block.encode("utf-8"))
    finally:
        os.close(fd)
    return True
