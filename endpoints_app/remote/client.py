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

import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import requests
from databricks.sdk import WorkspaceClient
from databricks.sdk.config import Config
from databricks.sdk.errors import DatabricksError, PermissionDenied, Unauthenticated

from endpoints_app import egress
from endpoints_app.remote.transport import EgressAdapter, HostUnresolved, RedirectRefused, ResponseTooLarge

# Seconds one HTTP request to a remote may take, and the SDK's budget for retrying one call
# (429 and 503 answers, resets): together they bound how long a check of a dead remote takes.
HTTP_TIMEOUT_SECONDS = 10
RETRY_TIMEOUT_SECONDS = 5
MAX_MESSAGE = 600  # characters of a status message (a remote's own error message is part of it)

_adapter = EgressAdapter()  # shared by every client: its pools are thread-safe


def workspace_client(*, host: str, token: str) -> WorkspaceClient:
    """A client for the remote at ``host`` (a URL ``services.workspaces`` has normalised and checked).
    Building it asks the host for ``/.well-known/databricks-config`` (the SDK's discovery), through
    the same adapter."""
    config = Config(
        host=host,
        token=token,
        auth_type="pat",
        http_adapter=_adapter,
        http_timeout_seconds=HTTP_TIMEOUT_SECONDS,
        retry_timeout_seconds=RETRY_TIMEOUT_SECONDS,  # read per client, so that tests can shorten it
        product="modelfleet",
        product_version=_version(),
    )
    return WorkspaceClient(config=config)


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    message: str  # "3 serving endpoints", or what went wrong


def check(*, host: str, token: str) -> CheckResult:
    """Ask the remote for its serving endpoints with this token; never raises."""
    try:
        endpoints = workspace_client(host=host, token=token).serving_endpoints.list()
        count = sum(1 for _ in endpoints)
    except egress.EgressRefused as exc:
        return _failed(token, f"{host} is refused by the egress policy: {exc}")
    except HostUnresolved as exc:
        return _failed(token, f"Cannot reach {host}: {exc}")
    except ResponseTooLarge as exc:
        return _failed(token, f"{host} {exc}, more than a serving-endpoints list can be")
    except RedirectRefused as exc:
        return _failed(
            token,
            f"{host} {exc}: the token goes only to the registered host (register the address it redirects to)",
        )
    except (Unauthenticated, PermissionDenied) as exc:
        return _failed(token, f"{host} refused the token ({exc.error_code or 'unauthenticated'}: {exc})")
    except DatabricksError as exc:
        return _failed(
            token, f"{host} answered with an error instead of its serving endpoints ({exc.error_code}: {exc})"
        )
    except requests.Timeout:
        return _failed(token, f"{host} did not answer within {HTTP_TIMEOUT_SECONDS} seconds")
    except requests.ConnectionError as exc:
        return _failed(token, f"Cannot reach {host}: {_reason(exc)}")
    except TimeoutError as exc:  # the SDK's retries ran out; the last failure is the cause
        if isinstance(exc.__cause__, requests.ConnectionError):
            return _failed(token, f"Cannot reach {host}: {_reason(exc.__cause__)}")
        return _failed(token, f"{host} did not answer within {RETRY_TIMEOUT_SECONDS} seconds of retries")
    except Exception as exc:  # noqa: BLE001 - a status for the admin, never a 500
        return _failed(token, f"{host} did not answer as the serving-endpoints API does ({type(exc).__name__})")
    return CheckResult(True, f"{count} serving endpoint{'' if count == 1 else 's'}")


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


def _failed(token: str, message: str) -> CheckResult:
    if token:
        message = message.replace(token, "[token]")  # a remote echoing it back never puts it in a status
    return CheckResult(False, message[:MAX_MESSAGE])
