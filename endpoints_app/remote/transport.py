"""The egress policy at connect time for the databricks-sdk: a ``requests`` adapter.

A remote workspace's host is an admin-supplied URL, so it is checked twice, as external models'
URLs are (``endpoints_app.egress``): at config time (``services.workspaces`` calls
``egress.check_url``), and here, at every TCP connection the SDK opens. Checking only at config
time would let a name that answered a public address then answer 127.0.0.1 or 169.254.169.254 at
the next poll (DNS rebinding), and the SDK would carry the workspace's token there.

``EgressAdapter`` is what the SDK's ``Config(http_adapter=...)`` takes. Its connection pools open
every connection through ``_PinnedConnection._new_conn``: the name is resolved once by
``egress.addresses_for``, every address is checked against the policy, and the socket connects to a
checked address; the connection keeps the name for ``Host``, SNI and the certificate check. A
refused address raises ``egress.EgressRefused`` and a name with no address ``HostUnresolved``,
neither of which the SDK retries. It also:

- ignores proxies from the environment (``HTTPS_PROXY``): a proxy would connect for us, unchecked;
- follows no redirects: ``requests`` re-applies the SDK's ``Authorization`` header to wherever a
  redirect points, so a remote (or anything on the path) could have the token sent to another
  host. A 3xx answer raises ``RedirectRefused`` instead (dropping only the ``Location`` would not
  do: the SDK would read the redirect's body as the answer).
- reads at most ``MAX_RESPONSE_BYTES`` of an answer (decompressed), so that a remote cannot fill
  the control plane's memory; a longer one raises ``ResponseTooLarge``. (Answers the SDK streams
  are not read here: in the serving-endpoints API that is the metrics export, which
  ``monitoring.remote.export_text`` reads up to its own bound.)
"""

from __future__ import annotations

import socket
from typing import Any

from requests import PreparedRequest, Response
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from endpoints_app import egress

# The longest answer read from a remote: the serving-endpoints list of a workspace with some
# 10,000 endpoints is about 20 MB.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class HostUnresolved(Exception):
    """The host's name has no address now. Raised past urllib3 and requests on purpose: as a
    connection error the SDK would retry it for its whole retry budget, and a name that does not
    resolve now will not in a second (the next poll asks again)."""


class RedirectRefused(Exception):
    """A remote answered with a redirect, which is not followed (see the module docstring)."""

    def __init__(self, status: int, location: str) -> None:
        super().__init__(f"answered HTTP {status}, a redirect to {location[:200]!r}, which is not followed")
        self.status = status
        self.location = location


class ResponseTooLarge(Exception):
    """A remote's answer is longer than ``MAX_RESPONSE_BYTES``."""


# The longest a remote may ask us to wait (Retry-After) before the poller asks again, and the wait
# taken when a 429 says nothing usable.
MAX_RETRY_AFTER_SECONDS = 3600
DEFAULT_RETRY_AFTER_SECONDS = 30


class RateLimited(Exception):
    """A remote answered 429 (the poller's adapter only): raised instead of the SDK's error so that
    the SDK does not sleep the remote's Retry-After inside a worker (it would, however long); the
    poller waits it out between sweeps instead (``monitoring.remote``)."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"answered 429 Too Many Requests (Retry-After {retry_after:g} s)")
        self.retry_after = retry_after


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float:
    """Retry-After in seconds (delta-seconds or an HTTP date), bounded; the default when unusable."""
    import time
    from email.utils import parsedate_to_datetime

    text = (value or "").strip()
    seconds: float | None = None
    if text.isdigit():
        seconds = float(text)
    elif text:
        try:
            seconds = parsedate_to_datetime(text).timestamp() - (now if now is not None else time.time())
        except (TypeError, ValueError, IndexError, OverflowError):
            seconds = None
    if seconds is None:
        return float(DEFAULT_RETRY_AFTER_SECONDS)
    return float(min(max(seconds, 1.0), MAX_RETRY_AFTER_SECONDS))


class _PinnedMixin:
    """``_new_conn`` that connects only to addresses the egress policy allows for the host."""

    _dns_host: str
    port: int
    host: str

    def _new_conn(self) -> socket.socket:
        name = self._dns_host
        try:
            addresses = egress.addresses_for(name, self.port, egress.allow_list(), must_resolve=True)
        except (OSError, UnicodeError):
            raise HostUnresolved(f"{self.host} does not resolve to any address") from None
        failure: Exception | None = None
        for address in addresses:
            # urllib3 connects to ``_dns_host``; TLS below still uses ``host`` (restored) for SNI.
            self._dns_host = address
            try:
                return super()._new_conn()  # type: ignore[misc]
            except (NewConnectionError, ConnectTimeoutError) as exc:
                failure = exc
            finally:
                self._dns_host = name
        assert failure is not None  # addresses_for gives at least one address when it must resolve
        raise failure


class _PinnedHTTPConnection(_PinnedMixin, HTTPConnection):
    pass


class _PinnedHTTPSConnection(_PinnedMixin, HTTPSConnection):
    pass


class _PinnedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _PinnedHTTPConnection


class _PinnedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _PinnedHTTPSConnection


class EgressAdapter(HTTPAdapter):
    """A ``requests`` adapter whose connections pass the egress policy (see the module docstring).
    With ``raise_rate_limited`` a 429 answer raises ``RateLimited`` (the poller's)."""

    def __init__(self, *args: Any, raise_rate_limited: bool = False, **kwargs: Any) -> None:
        self.raise_rate_limited = raise_rate_limited
        super().__init__(*args, **kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _PinnedHTTPConnectionPool,
            "https": _PinnedHTTPSConnectionPool,
        }

    def send(
        self,
        request: PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> Response:
        response = super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=None)
        if response.is_redirect:
            location = response.headers.get("location", "")
            response.close()
            raise RedirectRefused(response.status_code, location)
        if self.raise_rate_limited and response.status_code == 429:
            wait = retry_after_seconds(response.headers.get("retry-after"))
            response.close()
            raise RateLimited(wait)
        if not stream:
            # Read it here, bounded, instead of letting requests read all of it: decoded, so a
            # compressed answer cannot expand past the bound either.
            limit = MAX_RESPONSE_BYTES
            body = response.raw.read(limit + 1, decode_content=True)
            if len(body) > limit:
                response.close()
                raise ResponseTooLarge(f"answered more than {limit} bytes")
            response._content = body
            response.close()
        return response
