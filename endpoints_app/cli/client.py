"""A small HTTP client for the Modelfleet (Databricks-compatible) REST API.

Every request carries ``Authorization: Bearer <token>`` and a 60 s timeout. Redirects are followed
only within the same scheme, host and port: the token must never travel to another server.
Non-2xx answers become :class:`ApiError` with the server's ``message`` (reference §5.5).
"""

from __future__ import annotations

import json
import platform
import re
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urljoin, urlsplit

from endpoints_app.cli.errors import CliError
from endpoints_app.cli.version import cli_version

if TYPE_CHECKING:
    import requests

REQUEST_TIMEOUT_S = 60.0
MAX_REDIRECTS = 5
_DEBUG_BODY_LIMIT = 2000


def _user_agent() -> str:
    return f"modelfleet-cli/{cli_version()} python/{platform.python_version()} os/{platform.system().lower()}"


class ApiError(CliError):
    """The server answered with a non-2xx status."""

    def __init__(self, message: str, *, status: int, error_code: str = "") -> None:
        detail = f"error_code: {error_code or '-'}, HTTP status: {status}"
        super().__init__(message, detail=detail)
        self.status = status
        self.error_code = error_code


class ApiClient:
    def __init__(
        self,
        host: str,
        token: str,
        *,
        debug: bool = False,
        stderr: TextIO | None = None,
        timeout: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self.host = host.rstrip("/")
        self.token = token
        self.debug = debug
        self.stderr = stderr
        self.timeout = timeout
        # Imported on the first request, not with the module: --help and usage errors start
        # without it (requests and its dependencies take longer to import than the whole CLI).
        import requests

        self.session = requests.Session()
        self.session.headers["User-Agent"] = _user_agent()

    # -- high-level helpers -------------------------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        data: bytes | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """A request answered with JSON; returns the parsed answer (``{}`` for an empty body).

        ``body`` is sent as JSON; ``data`` (with its ``content_type``) is sent as is.
        """
        if body is not None:
            data = json.dumps(body).encode("utf-8")
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        response = self.request(method, path, data=data, headers=headers, params=params)
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError as exc:
            raise CliError(f"the server sent a response that is not JSON: {response.text[:200]!r}") from exc

    def text(self, method: str, path: str, *, params: dict[str, str] | None = None) -> str:
        """A request whose answer is raw text (metrics, OpenAPI, JSON-lines exports)."""
        return self.request(method, path, headers={"Accept": "text/plain"}, params=params).text

    # -- transport ----------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> requests.Response:
        import requests  # already loaded by __init__; see there

        url = self.host + path
        headers = {**(headers or {}), "Authorization": f"Bearer {self.token}"}
        origin = _origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            self._debug_request(method, url, params, headers, data)
            try:
                response = self.session.request(
                    method,
                    url,
                    data=data,
                    headers=headers,
                    params=params,
                    timeout=self.timeout,
                    allow_redirects=False,
                )
            except requests.exceptions.ConnectionError as exc:
                if isinstance(exc, requests.exceptions.ConnectTimeout):
                    raise CliError(f"cannot reach {self.host}: timed out after {self.timeout:g}s") from exc
                if self.debug:
                    self._log(f"< connection failed: {exc}")
                raise CliError(f"cannot reach {self.host}: is Modelfleet running? (make run)") from exc
            except requests.exceptions.Timeout as exc:
                raise CliError(f"request to {self.host} timed out after {self.timeout:g}s") from exc
            except requests.exceptions.RequestException as exc:
                raise CliError(f"request to {self.host} failed: {exc}") from exc
            self._debug_response(response)

            if not response.is_redirect:
                break
            location = urljoin(url, response.headers["Location"])
            if _origin(location) != origin:
                raise CliError(f"refusing to follow a redirect from {self.host} to another host: {location}")
            url, params = location, None  # the Location already carries its query string
            if response.status_code in (301, 302, 303) and method != "HEAD":
                method, data = "GET", None
                headers.pop("Content-Type", None)
        else:
            raise CliError(f"too many redirects from {self.host}")

        if not 200 <= response.status_code < 300:
            raise _api_error(response)
        return response

    def _log(self, line: str) -> None:
        if self.stderr is not None:
            self.stderr.write(line + "\n")

    def _debug_request(
        self, method: str, url: str, params: dict[str, str] | None, headers: dict[str, str], data: bytes | None
    ) -> None:
        if not self.debug:
            return
        query = "?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else ""
        self._log(f"> {method} {url}{query}")
        for key, value in headers.items():
            self._log(f"> {key}: {'Bearer ***' if key == 'Authorization' else value}")
        if data:
            self._log(f"> {_preview(_redacted(data), headers.get('Content-Type', ''))}")

    def _debug_response(self, response: requests.Response) -> None:
        if not self.debug:
            return
        self._log(f"< {response.status_code} {response.reason}")
        for key in ("Content-Type", "Location", "served-model-name"):
            if key in response.headers:
                self._log(f"< {key}: {response.headers[key]}")
        if response.content:
            self._log(f"< {_preview(response.content, response.headers.get('Content-Type', ''))}")


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


# Request fields whose values --debug never prints (a workspace's token, a secret's value, passwords).
_REDACTED_FIELDS = frozenset(("token", "string_value", "bytes_value", "password", "secret", "client_secret"))


def _redacted(data: bytes) -> bytes:
    """A JSON request body with the values of ``_REDACTED_FIELDS`` replaced by ``***``; other bodies as they are."""
    try:
        body = json.loads(data)
    except ValueError:
        return data
    if not isinstance(body, dict) or not _REDACTED_FIELDS & body.keys():
        return data
    return json.dumps({k: "***" if k in _REDACTED_FIELDS else v for k, v in body.items()}).encode("utf-8")


def _preview(data: bytes, content_type: str) -> str:
    if "json" not in content_type and "text" not in content_type:
        return f"({len(data)} bytes of {content_type or 'data'})"
    text = data.decode("utf-8", errors="replace")
    if len(text) > _DEBUG_BODY_LIMIT:
        text = text[:_DEBUG_BODY_LIMIT] + f"... ({len(data)} bytes in all)"
    return text


def _api_error(response: requests.Response) -> ApiError:
    """Read a Databricks-style error body; fall back the way the SDK does (reference §5.5)."""
    status = response.status_code
    text = response.text.strip()
    error_code, message = "", ""
    try:
        body = response.json() if text else None
    except ValueError:
        body = None
    if isinstance(body, dict):
        error_code = str(body.get("error_code") or "")
        message = str(body.get("message") or body.get("error") or body.get("detail") or "")
    elif text and "<html" not in text[:200].lower():
        match = re.match(r"([A-Z_]+): (.*)", text, re.DOTALL)
        error_code, message = (match.group(1), match.group(2)) if match else ("", text)
    if not message:
        message = f"HTTP {status} {response.reason or ''}".strip()
    return ApiError(message, status=status, error_code=error_code)
