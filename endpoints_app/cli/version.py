"""The CLI's own version, read from the installed package's metadata."""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version

PACKAGE = "modelfleet"
UNKNOWN_VERSION = "0+unknown"


def cli_version() -> str:
    """The installed package's version; ``0+unknown`` when running from a checkout never installed."""
    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return UNKNOWN_VERSION


def version_line() -> str:
    """What ``--version`` and ``version`` print, shaped like ``Databricks CLI v0.250.0``."""
    return f"Modelfleet CLI v{cli_version()}"


def version_info() -> dict[str, object]:
    """``version -o json``: the fields of the Databricks CLI's build info that a package can know."""
    text = cli_version()
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?(.*)", text)
    major, minor, patch, rest = match.groups() if match else ("0", "0", "0", text)
    return {
        "ProjectName": PACKAGE,
        "Version": text,
        "Major": int(major),
        "Minor": int(minor),
        "Patch": int(patch or 0),
        "Prerelease": rest.lstrip(".-+"),
    }
