"""The databricks-sdk client for a remote workspace, and the check that says whether it answers.

Every remote call goes through ``workspace_client``: the official ``WorkspaceClient`` with a
personal access token (``auth_type="pat"``, so no other credential from the environment or
``~/.databrickscfg`` is tried), the egress policy at every connection (``remote.transport``), and
short timeouts, so that a remote that is down costs seconds, not the SDK's default five minutes
of retries.

``check`` asks the remote for its serving endpoints, the call polling will make, and turns
whatever happens into one line a person can act on: refused the token, cannot be reached,
refused by the egress policy, or not the serving-endpoints API. The token never appears in it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import requests
from databricks.sdk import WorkspaceClient
from databricks.sdk.config import Config
from databricks.sdk.errors import DatabricksError, PermissionDenied, Unauthenticated

from endpoints_app import egress
from endpoints_app.remote.transport import (
    EgressAdapter,
    HostUnresolved,
    RateLimited,
    RedirectRefused,
    ResponseTooLarge,
)

# Seconds one HTTP request to a remote may take, and the SDK's budget for retrying one call
# (429 and 503 answers, resets): together they bound how long a check of a dead remote takes.
HTTP_TIMEOUT_SECONDS = 10
RETRY_TIMEOUT_SECONDS = 5
MAX_MESSAGE = 600  # characters of a status message (a remote's own error message is part of it)

_adapter = EgressAdapter()  # shared by every client: its pools are thread-safe
# The poller's: a 429 raises RateLimited at once (the poller backs off between sweeps).
_poll_adapter = EgressAdapter(raise_rate_limited=True)
# The poller's SDK retry budget: one quick retry of a dropped connection at most; the next sweep
# is the retry.
POLL_RETRY_TIMEOUT_SECONDS = 1


def workspace_client(*, host: str, token: str, for_poll: bool = False) -> WorkspaceClient:
    """A client for the remote at ``host`` (a URL ``services.workspaces`` has normalised and checked).
    Building it asks the host for ``/.well-known/databricks-config`` (the SDK's discovery), through
    the same adapter. ``for_poll``: the poller's (429 raises ``RateLimited``, a short retry budget)."""
    config = Config(
        host=host,
        token=token,
        auth_type="pat",
        http_adapter=_poll_adapter if for_poll else _adapter,
        http_timeout_seconds=HTTP_TIMEOUT_SECONDS,
        # read per client, so that tests can shorten it
        retry_timeout_seconds=POLL_RETRY_TIMEOUT_SECONDS if for_poll else RETRY_TIMEOUT_SECONDS,
        product="modelfleet",
        product_version=_version(),
    )
    client = WorkspaceClient(config=config)
    _skip_environment_lookups(client)
    return client


def _skip_environment_lookups(client: WorkspaceClient) -> None:
    """Spare every call ``requests``' look through the environment for proxies and a CA bundle
    (a third of a poll call's CPU: it walks ``os.environ`` twice per request). The adapter ignores
    proxies anyway (``remote.transport``); the CA bundle that ``REQUESTS_CA_BUNDLE`` or
    ``CURL_CA_BUNDLE`` names is read once here instead, as ``requests`` would use it. The session is
    the SDK's own (``ApiClient._api_client._session``): a later SDK without it keeps the lookups."""
    session = getattr(getattr(client.api_client, "_api_client", None), "_session", None)
    if not isinstance(session, requests.Session):
        return
    session.trust_env = False
    session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    message: str  # "3 serving endpoints", or what went wrong


def check(*, host: str, token: str) -> CheckResult:
    """Ask the remote for its serving endpoints with this token; never raises."""
    try:
        endpoints = workspace_client(host=host, token=token).serving_endpoints.list()
        count = sum(1 for _ in endpoints)
    except Exception as exc:  # noqa: BLE001 - a status for the admin, never a 500
        return _failed(token, describe_failure(host, exc))
    return CheckResult(True, f"{count} serving endpoint{'' if count == 1 else 's'}")


def describe_failure(host: str, exc: BaseException) -> str:
    """What went wrong with a call to the remote, in one line a person can act on (the caller
    masks the token: ``masked``)."""
    if isinstance(exc, egress.EgressRefused):
        return f"{host} is refused by the egress policy: {exc}"
    if isinstance(exc, HostUnresolved):
        return f"Cannot reach {host}: {exc}"
    if isinstance(exc, ResponseTooLarge):
        return f"{host} {exc}, more than a serving-endpoints list can be"
    if isinstance(exc, RedirectRefused):
        return f"{host} {exc}: the token goes only to the registered host (register the address it redirects to)"
    if isinstance(exc, RateLimited):
        return f"{host} is rate limiting: it {exc}"
    if isinstance(exc, (Unauthenticated, PermissionDenied)):
        return f"{host} refused the token ({exc.error_code or 'unauthenticated'}: {exc})"
    if isinstance(exc, DatabricksError):
        return f"{host} answered with an error instead of its serving endpoints ({exc.error_code}: {exc})"
    if isinstance(exc, requests.Timeout):
        return f"{host} did not answer within {HTTP_TIMEOUT_SECONDS} seconds"
    if isinstance(exc, requests.ConnectionError):
        return f"Cannot reach {host}: {_reason(exc)}"
    if isinstance(exc, TimeoutError):  # the SDK's retries ran out; the last failure is the cause
        if isinstance(exc.__cause__, requests.ConnectionError):
            return f"Cannot reach {host}: {_reason(exc.__cause__)}"
        return f"{host} did not answer within its retry budget"
    return f"{host} did not answer as the serving-endpoints API does ({type(exc).__name__})"


def _reason(exc: requests.ConnectionError) -> str:
    """The innermost cause of a connection failure in words ("Connection refused"), without
    urllib3's object names and addresses: requests wraps urllib3's MaxRetryError, whose ``reason``
    is the NewConnectionError, whose message ends with the system's words."""
    cause: BaseException = exc
    for _ in range(5):
        inner = getattr(cause, "reason", None) or (cause.args[0] if cause.args else None)
        if not isinstance(inner, BaseException):
            break
        cause = inner
    text = str(cause)
    if "]" in text:  # "[Errno 111] Connection refused"
        text = text.rsplit("]", 1)[1]
    return text.rsplit(": ", 1)[-1].strip() or type(cause).__name__


def _version() -> str:
    """This package's version for the SDK's User-Agent, which takes only semantic versions."""
    try:
        text = version("modelfleet")
    except PackageNotFoundError:
        return "0.0.0"
    return text if re.fullmatch(r"\d+\.\d+\.\d+", text) else "0.0.0"


def masked(token: str, message: str) -> str:
    """The message without the token (a remote echoing it back never puts it in a status), cut after."""
    if token:
        message = message.replace(token, "[token]")
    return message[:MAX_MESSAGE]


def _failed(token: str, message: str) -> CheckResult:
    return CheckResult(False, masked(token, message))
