"""Where external-model calls may go: the egress policy, checked at config time and at connect time.

An editor writes the URL an external model is reached at (``custom_provider_url``,
``openai_api_base``, ``databricks_workspace_url``, a region that becomes a host name, a key file's
``token_uri``). Left unchecked, that makes the gateway a proxy into the control plane's own network:
a replica's port on 127.0.0.1 (past ``CAN_QUERY``), Redis, a cloud metadata service at
169.254.169.254, a service on the private network. So every destination must be a public
address, and an admin opens exceptions with ``MODELFLEET_EGRESS_ALLOW``: comma-separated
``host[:port]`` (a name or an address) or CIDR entries, parsed strictly at start-up.

Refused, with the rule named in the message: loopback, link-local (169.254/16, fe80::/10),
private (10/8, 172.16/12, 192.168/16, fc00::/7), shared (CGNAT 100.64/10), multicast,
unspecified, reserved and other special-purpose addresses; the same inside IPv4-mapped,
6to4 and NAT64 IPv6 addresses; names that are loopback by definition (``localhost``,
``*.localhost``) and cloud metadata names and addresses. A metadata address is opened only by an
entry naming exactly it, never by a wider CIDR (``169.254.0.0/16`` does not open the credentials
of the machine's cloud role by accident). A name entry trusts that name: whatever it resolves to
is allowed (it is the admin's own DNS).

Two checks, because a name can change its answer between them (DNS rebinding):

1. **Config time** (``check_url``): the scheme is http or https, the URL has no user info, and the
   host, as a literal address in any of the forms the C resolver takes (``127.1``,
   ``2130706433``, ``0x7f.1``) or as a name and every address it resolves to now, is allowed. A
   name that does not resolve now is accepted: it reaches nothing, and step 2 decides.
2. **Connect time** (``EgressTransport``): the one ``httpx`` client of the gateway opens every TCP
   connection through ``PinnedBackend``, which resolves the name once, checks every address, and
   connects to a checked address itself, so nothing resolves the name again after the check. The
   URL keeps its name, so ``Host`` and TLS's SNI and certificate check are the name's. The client
   follows no redirects and ignores ``HTTP(S)_PROXY`` (a proxy would connect for us, unchecked);
   an egress proxy is configured with ``MODELFLEET_PROVIDER_BASE_URLS`` and allowed here.

``resolve_name`` is the system resolver, called through this module's attribute so that tests can
put a resolver of their own in its place (a name that answers loopback, or one answer at config
time and another at connect time) without sending DNS queries beyond loopback.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import httpcore
import httpx
from django.conf import settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SETTING = "MODELFLEET_EGRESS_ALLOW"
SCHEMES = {"http": 80, "https": 443}

# Cloud metadata services (AWS, GCP, Azure, OCI, DigitalOcean: 169.254.169.254; AWS ECS task
# credentials, AWS time sync, AWS's IPv6 IMDS; Alibaba Cloud), and the names they answer on.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "169.254.169.123", "fd00:ec2::254", "fd00:ec2::23", "100.100.100.200")
)
METADATA_NAMES = frozenset(
    ("metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal")
)

# Each rule, in the order an address is tested against them; the first that matches names it.
_RULES: tuple[tuple[str, tuple[IPNetwork, ...]], ...] = tuple(
    (rule, tuple(ipaddress.ip_network(n) for n in networks))
    for rule, networks in (
        ("an unspecified address", ("0.0.0.0/8", "::/128")),
        ("a loopback address", ("127.0.0.0/8", "::1/128")),
        ("a link-local address", ("169.254.0.0/16", "fe80::/10")),
        ("a private address", ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")),
        ("a shared (carrier-grade NAT) address", ("100.64.0.0/10",)),
        ("a multicast address", ("224.0.0.0/4", "ff00::/8")),
        ("a reserved address", ("240.0.0.0/4",)),  # and 255.255.255.255, the broadcast address
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# A host name as DNS spells it: dot-separated labels of letters, digits and hyphens.
_HOST_NAME = re.compile(
    r"(?=.{1,253}\Z)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
)
# Only the forms inet_aton takes: 1 to 4 parts of decimal, octal (0…) or hex (0x…) digits.
_INET_ATON = re.compile(r"(0[xX][0-9A-Fa-f]*|[0-9]+)(\.(0[xX][0-9A-Fa-f]*|[0-9]+)){0,3}")

log = logging.getLogger(__name__)


class EgressRefused(Exception):
    """A destination the policy refuses; the message names the host, the address and the rule."""

    def __init__(self, message: str, *, rule: str) -> None:
        super().__init__(message)
        self.rule = rule


@dataclass(frozen=True)
class AllowEntry:
    """One ``MODELFLEET_EGRESS_ALLOW`` entry: a host name (with an optional port), or an address
    or CIDR block (``network``; a single address may carry a port)."""

    host: str | None = None
    network: IPNetwork | None = None
    port: int | None = None

    def allows_name(self, name: str, port: int) -> bool:
        return self.host is not None and self.host == name and self.port in (None, port)

    def allows_address(self, address: IPAddress, port: int) -> bool:
        if self.network is None or self.port not in (None, port) or address not in self.network:
            return False
        # A metadata address only by an entry naming exactly it (see the module docstring).
        return address not in METADATA_ADDRESSES or self.network.num_addresses == 1


def parse_allow_list(value: str) -> tuple[AllowEntry, ...]:
    """``MODELFLEET_EGRESS_ALLOW`` parsed; a ``ValueError`` naming the entry for anything malformed
    (start-up fails, rather than a typo silently opening nothing or too much)."""
    if not value.strip():
        return ()
    return tuple(_parse_entry(raw.strip()) for raw in value.split(","))


def _parse_entry(entry: str) -> AllowEntry:
    def bad(why: str) -> ValueError:
        return ValueError(f"{SETTING} entry {entry!r} {why}; write host[:port] or a CIDR block like 10.0.0.0/8")

    if not entry:
        raise bad("is empty")
    if "/" in entry:
        try:
            return AllowEntry(network=ipaddress.ip_network(entry, strict=True))
        except ValueError as exc:
            raise bad(f"is not a CIDR block ({exc})") from None
    host, port = entry, None
    if entry.startswith("["):  # [v6] or [v6]:port
        close = entry.find("]")
        host, rest = entry[1:close], entry[close + 1 :]
        if close < 0 or (rest and not rest.startswith(":")):
            raise bad("is not [IPv6 address]:port")
        port = rest[1:] if rest else None
    elif entry.count(":") == 1:
        host, port = entry.split(":")
    elif ":" in entry:  # a bare IPv6 address
        host = entry
    number = None
    if port is not None:
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise bad("has a port that is not a number from 1 to 65535")
        number = int(port)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not _HOST_NAME.fullmatch(host) or _INET_ATON.fullmatch(host):
            raise bad("is neither a host name nor an address") from None
        return AllowEntry(host=host.lower().rstrip("."), port=number)
    return AllowEntry(network=ipaddress.ip_network(address), port=number)


def allow_list() -> Sequence[AllowEntry]:
    """The admin's exceptions (``settings.EGRESS_ALLOW``, parsed at start-up)."""
    return getattr(settings, "EGRESS_ALLOW", ())


def resolve_name(host: str) -> list[str]:
    """Every address the system resolver gives ``host`` (``socket.gaierror`` when none). Tests
    replace this attribute: it is the system's DNS, not a rule of ours."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)]


def literal_address(host: str) -> IPAddress | None:
    """``host`` as an IP address when it is one in any form the system resolver would read as one
    (``127.1``, ``2130706433``, ``0177.0.0.1``, ``[::1]``, ``fe80::1%eth0``), else ``None``."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        pass
    if _INET_ATON.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def refusal(address: IPAddress) -> str | None:
    """The rule that refuses ``address`` ("a loopback address", …), or ``None`` for a public one.
    An IPv6 address that carries an IPv4 one (mapped, 6to4, NAT64) is judged by what it carries."""
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped or address.sixtofour
        if inner is None and address in _NAT64:
            inner = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if inner is not None:
            rule = refusal(inner)
            return f"{rule} (inside the IPv6 address {address})" if rule else None
    for rule, networks in _RULES:
        if any(address in network for network in networks):
            return rule
    if not address.is_global:
        return "a reserved or special-purpose address"
    return None


def _name_refusal(name: str) -> str | None:
    if name == "localhost" or name.endswith(".localhost"):
        return "a loopback name"
    if name in METADATA_NAMES:
        return "a cloud metadata name"
    return None


def _advice(host: str, port: int) -> str:
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    return f"an admin can allow it with {SETTING} (e.g. {shown}:{port})"


def addresses_for(host: str, port: int, allow: Iterable[AllowEntry], *, must_resolve: bool) -> list[str]:
    """The addresses to connect to for ``host``:``port``, each allowed by the policy (raises
    ``EgressRefused`` naming the first one that is not: every address is checked, since a client
    may use any of them). A name the resolver does not know raises ``socket.gaierror`` when
    ``must_resolve``, else gives ``[]`` (config time: nothing reachable, connect time decides)."""
    allow = tuple(allow)
    literal = literal_address(host.rstrip("."))  # "127.0.0.1." is the same address
    if literal is not None:
        rule = refusal(literal)
        if rule and not any(e.allows_address(literal, port) for e in allow):
            shown = host if host.strip("[]") == str(literal) else f"{host} ({literal})"
            raise EgressRefused(f"{shown} is {rule}; {_advice(host, port)}", rule=rule)
        return [str(literal)]
    name = host.lower().rstrip(".")
    if any(e.allows_name(name, port) for e in allow):
        named_allowed = True
    else:
        named_allowed = False
        rule = _name_refusal(name)
        if rule:
            raise EgressRefused(f"{host} is {rule}; {_advice(host, port)}", rule=rule)
    try:
        found = resolve_name(name)
    except (OSError, UnicodeError):
        if must_resolve:
            raise
        return []
    addresses = []
    for text in dict.fromkeys(found):  # in the resolver's order, once each
        address = ipaddress.ip_address(text.split("%")[0])
        rule = refusal(address)
        if rule and not named_allowed and not any(e.allows_address(address, port) for e in allow):
            # The address itself stays in the server's log: in the message it would let an editor
            # map internal DNS names through config errors.
            log.info("egress refused: %s resolves to %s (%s)", host, address, rule)
            raise EgressRefused(f"{host} resolves to {rule}; {_advice(host, port)}", rule=rule)
        addresses.append(text)
    if not addresses and must_resolve:
        raise socket.gaierror(f"{host} has no address")
    return addresses


def check_url(url: str) -> None:
    """Config time: ``url`` is an http(s) URL without user info whose host the policy allows now
    (``EgressRefused`` says why not). Parsed as ``httpx`` will parse it when it sends the request."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise EgressRefused("is not a valid URL", rule="url") from None
    if parsed.scheme not in SCHEMES:
        raise EgressRefused("must be an http:// or https:// URL", rule="scheme")
    if parsed.userinfo:
        raise EgressRefused(
            "must not carry a user name or password (credentials go in their own fields)", rule="userinfo"
        )
    host = parsed.raw_host.decode("ascii")
    if not host:
        raise EgressRefused("has no host", rule="url")
    addresses_for(host, parsed.port or SCHEMES[parsed.scheme], allow_list(), must_resolve=False)


# --- connect time --------------------------------------------------------------------------------


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """``httpcore``'s network backend with the policy in front of every TCP connection: the name is
    resolved once, every address checked, and the connection made to a checked address (``httpcore``
    still gives the TLS layer the name, for SNI and the certificate check)."""

    def __init__(self, allow: Sequence[AllowEntry] | None = None) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._allow = allow  # None: the settings' list, read at each connection

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        allow = allow_list() if self._allow is None else self._allow
        try:
            with anyio.fail_after(timeout):
                addresses = await anyio.to_thread.run_sync(
                    lambda: addresses_for(host, port, allow, must_resolve=True), abandon_on_cancel=True
                )
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} took too long") from None
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise EgressRefused("a Unix socket is not an allowed destination", rule="unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class EgressTransport(httpx.AsyncHTTPTransport):
    """``httpx``'s transport with its connection pool opening connections through ``PinnedBackend``.

    ``httpx`` has no parameter for a network backend, so the pool it builds is replaced by one of
    the same settings plus the backend; ``tests/test_egress.py`` fails if this stops taking effect."""

    def __init__(self, *, limits: httpx.Limits, allow: Sequence[AllowEntry] | None = None) -> None:
        super().__init__(limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=PinnedBackend(allow),
        )


def client(*, limits: httpx.Limits, allow: Sequence[AllowEntry] | None = None) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` that reaches only what the policy allows: pinned connections, no
    redirects, and no proxy from the environment (``trust_env=False``: a proxy would connect for us)."""
    return httpx.AsyncClient(
        transport=EgressTransport(limits=limits, allow=allow), follow_redirects=False, trust_env=False
    )
