"""Pieces every command module shares: the per-run context, ``--json`` and ``--timeout``.

The HTTP client is built on first use (and imports ``requests`` only then), so that ``--help``,
usage errors and the server-side commands start quickly.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from endpoints_app.cli.client import ApiClient
from endpoints_app.cli.config import resolve_profile
from endpoints_app.cli.errors import UsageError

Handler = Callable[["Context"], int]


@dataclass
class Context:
    """What a command handler needs: its parsed arguments, output settings and a lazy API client."""

    args: argparse.Namespace
    output: str = "text"
    debug: bool = False
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    # The whole command tree, for commands that describe it (completion).
    root_parser: argparse.ArgumentParser | None = None
    _client: ApiClient | None = None

    @property
    def json_output(self) -> bool:
        """``-o json``. Modelfleet's own commands print tables otherwise (``text`` and ``table`` alike)."""
        return self.output == "json"

    @property
    def table_output(self) -> bool:
        """``-o table``: Modelfleet's tables and summaries even where the Databricks CLI's text is JSON.

        Verbs that the Databricks CLI has print what it prints under ``text`` (JSON, for most),
        so that scripts written for ``databricks`` work unchanged; ``table`` is for people.
        """
        return self.output == "table"

    @property
    def api(self) -> ApiClient:
        if self._client is None:
            profile = resolve_profile(getattr(self.args, "profile", None))
            if self.debug:
                self.stderr.write(f"[debug] using {profile.host} ({profile.source})\n")
            self._client = ApiClient(profile.host, profile.token, debug=self.debug, stderr=self.stderr)
        return self._client

    def out(self, text: str = "") -> None:
        self.stdout.write(text if text.endswith("\n") else text + "\n")

    def note(self, text: str) -> None:
        """A progress message: stderr, so stdout stays parseable."""
        self.stderr.write(text + "\n")
        self.stderr.flush()


def simple_verb(
    verbs: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    name: str,
    handler: Handler,
    text: str,
) -> argparse.ArgumentParser:
    """A verb whose arguments the caller adds to the returned parser (plain argparse positionals)."""
    parser = verbs.add_parser(name, parents=[common], help=text, description=text, allow_abbrev=False)
    parser.set_defaults(handler=handler, leaf_parser=parser)
    return parser


def path_param(value: str) -> str:
    """URL-encode one path segment (names may hold anything the user typed)."""
    return quote(value, safe="")


def endpoint_path(name: str, *rest: str, workspace: str | None = None) -> str:
    """``/api/2.0/serving-endpoints/{name}/{rest…}``; ``rest`` segments must already be encoded.
    With ``workspace`` (``--workspace``), the endpoint of that remote workspace, changed through
    this installation's approval gate: ``/api/2.0/modelfleet/workspaces/{workspace}/serving-endpoints/…``."""
    return "/".join([endpoints_base(workspace), path_param(name), *rest])


def endpoints_base(workspace: str | None = None) -> str:
    if not workspace:
        return "/api/2.0/serving-endpoints"
    return f"/api/2.0/modelfleet/workspaces/{path_param(workspace)}/serving-endpoints"


def parse_json_arg(value: str) -> Any:
    """``--json`` takes inline JSON or ``@path/to/file.json``, like the Databricks CLI."""
    if value.startswith("@"):
        path = Path(value[1:]).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read --json file {path}: {exc.strerror or exc}") from exc
    else:
        text = value
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"invalid JSON in --json: {exc}") from exc


def parse_json_object(value: str) -> dict[str, Any]:
    data = parse_json_arg(value)
    if not isinstance(data, dict):
        raise UsageError(f"invalid JSON in --json: expected an object, got {type(data).__name__}")
    return data


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(value: str) -> float:
    """Seconds in a Go duration (``20m0s``, ``1h30m``, ``90s``, ``1.5h``) or a plain number of seconds."""
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pos, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
            pos = match.end()
        if pos != len(text) or not text:
            raise argparse.ArgumentTypeError(
                f"invalid duration {value!r} (use e.g. 20m0s, 90s, 1h, or a number of seconds)"
            ) from None
    if seconds <= 0 or seconds != seconds or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"invalid duration {value!r}: must be a positive length of time")
    return seconds


def format_duration(seconds: float) -> str:
    """Go's ``time.Duration.String()`` for whole-ish seconds: ``20m0s``, ``1h0m0s``, ``1.5s``."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    secs_text = f"{secs:.3f}".rstrip("0").rstrip(".") if secs != int(secs) else str(int(secs))
    if hours:
        return f"{int(hours)}h{int(minutes)}m{secs_text}s"
    if minutes:
        return f"{int(minutes)}m{secs_text}s"
    return f"{secs_text}s"
