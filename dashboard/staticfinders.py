"""A staticfiles finder for the front-end packages' built files in a checkout's node_modules/.

Only the files ``dashboard.assets.VENDOR_FILES`` names are found, each as ``vendor/<package>/<name>``
(node_modules holds megabytes of sources, type declarations and other builds the pages never load).
An installed wheel carries these files in its own static folder, so there it finds nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.contrib.staticfiles.finders import BaseFinder
from django.core.checks import CheckMessage
from django.core.checks import Warning as CheckWarning
from django.core.files.storage import FileSystemStorage

from dashboard import assets


class VendorFinder(BaseFinder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.files: dict[str, Path] = {}
        if not assets.PACKAGED:
            self.files = {static_path: source for source, static_path in assets.vendor_sources() if source.is_file()}

    def check(self, **kwargs: Any) -> list[CheckMessage]:
        if assets.PACKAGED or self.files:
            return []
        return [
            CheckWarning(
                f"{assets.NODE_MODULES_DIR} has none of the dashboard's front-end files: run `npm ci`",
                id="modelfleet.W001",
            )
        ]

    def find(self, path: str, find_all: bool = False, **kwargs: Any) -> Any:
        source = self.files.get(path)
        if source is None:
            return [] if find_all or kwargs.get("all") else None
        return [str(source)] if find_all or kwargs.get("all") else str(source)

    def list(self, ignore_patterns: Any) -> Iterator[tuple[str, FileSystemStorage]]:
        for static_path, source in self.files.items():
            storage = FileSystemStorage(location=str(source.parent))
            storage.prefix = static_path.rsplit("/", 1)[0]  # type: ignore[attr-defined]  # read by collectstatic
            yield source.name, storage
