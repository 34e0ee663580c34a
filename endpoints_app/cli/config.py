"""Connection profiles for the CLI: Modelfleet's own first, the Databricks CLI's as a fallback.

Modelfleet's file (``~/.modelfleetcfg``, or ``$MODELFLEET_CONFIG_FILE``) is an INI file like
``~/.databrickscfg``, one section per profile, each with ``host`` and ``token``::

    [DEFAULT]
    host = http://127.0.0.1:8000
    token = mf-...

Where Modelfleet has nothing configured, the Databricks CLI's settings are read the way it reads
them: ``$DATABRICKS_CONFIG_PROFILE``, ``$DATABRICKS_HOST``/``$DATABRICKS_TOKEN`` and
``~/.databrickscfg`` (``$DATABRICKS_CONFIG_FILE``), whose default profile may be named by
``[__settings__] default_profile``. Only personal access tokens are understood there: a profile
that signs in another way (OAuth, a service principal's secret) is refused with a message.

Unlike ``configparser``'s usual behaviour, ``[DEFAULT]`` is an ordinary profile in both files:
other profiles do not inherit its keys, so a half-filled profile can never send one server's token
to another server's host. For the same reason a host from one family of settings (``MODELFLEET_*``
or ``DATABRICKS_*``) is never paired with a token from the other.
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

DATABRICKS_CONFIG_FILE = "~/.databrickscfg"
DATABRICKS_ENV_CONFIG_FILE = "DATABRICKS_CONFIG_FILE"
DATABRICKS_ENV_PROFILE = "DATABRICKS_CONFIG_PROFILE"
DATABRICKS_ENV_HOST = "DATABRICKS_HOST"
DATABRICKS_ENV_TOKEN = "DATABRICKS_TOKEN"
# The section where the Databricks CLI keeps its own settings (``default_profile``); not a profile.
DATABRICKS_SETTINGS_SECTION = "__settings__"

_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


@dataclass(frozen=True)
class Profile:
    """Where to connect and how to authenticate; ``source`` says where it came from (for --debug)."""

    host: str
    token: str
    source: str


@dataclass(frozen=True)
class _Family:
    """One family of settings: its config file and environment variables."""

    label: str
    env_file: str
    default_file: str
    env_profile: str
    env_host: str
    env_token: str

    def path(self, env: Mapping[str, str]) -> Path:
        return Path(env.get(self.env_file) or self.default_file).expanduser()


MODELFLEET = _Family("Modelfleet", ENV_CONFIG_FILE, DEFAULT_CONFIG_FILE, ENV_PROFILE, ENV_HOST, ENV_TOKEN)
DATABRICKS = _Family(
    "Databricks",
    DATABRICKS_ENV_CONFIG_FILE,
    DATABRICKS_CONFIG_FILE,
    DATABRICKS_ENV_PROFILE,
    DATABRICKS_ENV_HOST,
    DATABRICKS_ENV_TOKEN,
)


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    return MODELFLEET.path(os.environ if environ is None else environ)


def normalize_host(host: str) -> str:
    """Strip whitespace, trailing slashes and an https ``:443``; add a scheme if missing.

    Loopback hosts get ``http://`` (that is how ``make run`` serves), anything else ``https://``,
    as the Databricks SDK does.
    """
    host = host.strip().rstrip("/")
    if host and "://" not in host:
        scheme = "http" if host.split(":")[0] in _LOOPBACK_HOSTS or host.startswith("[::1]") else "https"
        host = f"{scheme}://{host}"
    if host.startswith("https://") and host.endswith(":443"):
        host = host[: -len(":443")]
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


def _sections(path: Path) -> configparser.ConfigParser | None:
    return _read_profiles(path) if path.is_file() else None


def _section(parser: configparser.ConfigParser | None, name: str) -> dict[str, str] | None:
    if parser is None or name == DATABRICKS_SETTINGS_SECTION or not parser.has_section(name):
        return None
    return dict(parser.items(name))


def resolve_profile(profile: str | None = None, environ: Mapping[str, str] | None = None) -> Profile:
    """Pick host and token, in this order:

    1. ``profile`` (from ``--profile``): that section of ``~/.modelfleetcfg``, else of
       ``~/.databrickscfg``; an error if neither has it.
    2. ``$MODELFLEET_HOST`` and ``$MODELFLEET_TOKEN``, when both are set.
    3. The section named by ``$MODELFLEET_CONFIG_PROFILE`` (looked up like ``--profile``), else
       ``[DEFAULT]`` of ``~/.modelfleetcfg``. A lone ``$MODELFLEET_HOST`` or ``$MODELFLEET_TOKEN``
       overrides that field of a Modelfleet profile (and alone, without one, is an error).
    4. Only when none of the above is configured, the Databricks CLI's settings, in its order: the
       section named by ``$DATABRICKS_CONFIG_PROFILE``; ``$DATABRICKS_HOST`` and
       ``$DATABRICKS_TOKEN``; the profile named by ``[__settings__] default_profile``, else
       ``[DEFAULT]``. A lone ``$DATABRICKS_HOST`` or ``$DATABRICKS_TOKEN`` overrides that field.
    """
    env = os.environ if environ is None else environ

    if profile:
        return _named_profile(profile, env, how="")

    own_host, own_token = env.get(ENV_HOST, ""), env.get(ENV_TOKEN, "")
    if own_host and own_token:
        return _complete(own_host, own_token, f"${ENV_HOST}/${ENV_TOKEN}")
    own = {key: value for key, value in (("host", own_host), ("token", own_token)) if value}
    if env.get(ENV_PROFILE):
        return _named_profile(env[ENV_PROFILE], env, how=f" (named by ${ENV_PROFILE})", overrides=own)

    path = MODELFLEET.path(env)
    default = _section(_sections(path), DEFAULT_PROFILE)
    if default is not None or own_host or own_token:
        default = default or {}
        host = own_host or default.get("host", "")
        token = own_token or default.get("token", "")
        return _complete(host, token, f"profile {DEFAULT_PROFILE!r} in {path}")

    found = _databricks_profile(env)
    if found is not None:
        return found
    raise CliError(
        f"no Modelfleet host and token configured (looked at ${ENV_HOST}/${ENV_TOKEN}, {path}, "
        f"${DATABRICKS_ENV_HOST}/${DATABRICKS_ENV_TOKEN} and {DATABRICKS.path(env)}). "
        f"Run `make run` (it writes the DEFAULT profile to {DEFAULT_CONFIG_FILE}) "
        f"or set {ENV_HOST} and {ENV_TOKEN}."
    )


def _named_profile(
    name: str, env: Mapping[str, str], *, how: str, overrides: Mapping[str, str] | None = None
) -> Profile:
    """A profile someone named: Modelfleet's file first, then the Databricks CLI's.

    ``overrides`` (a lone ``$MODELFLEET_HOST`` or ``$MODELFLEET_TOKEN``) apply to a Modelfleet
    profile only: they are never paired with a Databricks profile's other half.
    """
    own_path, theirs_path = MODELFLEET.path(env), DATABRICKS.path(env)
    section = _section(_sections(own_path), name)
    if section is not None:
        section = {**section, **(overrides or {})}
        return _complete(section.get("host", ""), section.get("token", ""), f"profile {name!r} in {own_path}")
    section = _section(_sections(theirs_path), name)
    if section is not None:
        return _complete_databricks(section, {}, f"profile {name!r} in {theirs_path}")
    raise CliError(f"profile '{name}' not found in {own_path} or {theirs_path}{how}")


def _databricks_profile(env: Mapping[str, str]) -> Profile | None:
    """The Databricks CLI's configuration, or None if it has none."""
    path = DATABRICKS.path(env)
    parser = _sections(path)
    overrides = {
        key: env[var] for key, var in (("host", DATABRICKS_ENV_HOST), ("token", DATABRICKS_ENV_TOKEN)) if env.get(var)
    }
    if env.get(DATABRICKS_ENV_PROFILE):
        name = env[DATABRICKS_ENV_PROFILE]
        section = _section(parser, name)
        if section is None:
            raise CliError(f"profile '{name}' not found in {path} (named by ${DATABRICKS_ENV_PROFILE})")
        return _complete_databricks(section, overrides, f"profile {name!r} in {path}")
    if len(overrides) == 2:
        return _complete(overrides["host"], overrides["token"], f"${DATABRICKS_ENV_HOST}/${DATABRICKS_ENV_TOKEN}")
    name = DEFAULT_PROFILE
    if parser is not None and parser.has_option(DATABRICKS_SETTINGS_SECTION, "default_profile"):
        name = parser.get(DATABRICKS_SETTINGS_SECTION, "default_profile").strip() or DEFAULT_PROFILE
    section = _section(parser, name)
    if section is None and name != DEFAULT_PROFILE:
        raise CliError(
            f"profile '{name}' not found in {path} (named by default_profile in [{DATABRICKS_SETTINGS_SECTION}])"
        )
    if section is None and not overrides:
        return None
    return _complete_databricks(section or {}, overrides, f"profile {name!r} in {path}")


def _complete_databricks(section: Mapping[str, str], overrides: Mapping[str, str], source: str) -> Profile:
    """A Databricks profile with a personal access token; other sign-in methods are refused by name."""
    host = overrides.get("host") or section.get("host", "")
    token = overrides.get("token") or section.get("token", "")
    if host.strip() and not token.strip():
        how = section.get("auth_type") or next(
            (key for key in ("client_id", "username", "azure_client_id", "google_service_account") if key in section),
            "",
        )
        if how:
            raise CliError(
                f"{source} signs in with {how!r}: Modelfleet accepts personal access tokens only "
                f"(set token = ... in that profile, or ${DATABRICKS_ENV_TOKEN})"
            )
    return _complete(host, token, source)


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
