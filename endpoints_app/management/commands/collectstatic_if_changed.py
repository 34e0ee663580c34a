"""``collectstatic`` only when the static sources changed since it last ran.

``modelfleet up`` runs this before it starts the web process, and the image runs it at build time:
the first run hashes and compresses every file into STATIC_ROOT (seconds), later runs compare a
fingerprint of the sources (each found file's path, size and modification time) with the one
stored beside the manifest and return at once when they match, so a read-only STATIC_ROOT that the
image filled is never written again. With MODELFLEET_DEBUG the pages are served from the sources
and nothing is collected.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.core.management.base import BaseCommand

FINGERPRINT_FILE = ".modelfleet-sources"


def sources_fingerprint() -> str:
    digest = hashlib.sha256()
    entries = []
    for finder in finders.get_finders():
        for path, storage in finder.list(["CVS", ".*", "*~"]):  # collectstatic's default ignore patterns
            prefix = getattr(storage, "prefix", None) or ""
            stat = Path(storage.path(path)).stat()
            entries.append(f"{prefix}/{path}\0{stat.st_size}\0{stat.st_mtime_ns}")
    for entry in sorted(entries):
        digest.update(entry.encode() + b"\n")
    return digest.hexdigest()


class Command(BaseCommand):
    help = "Run collectstatic when the static sources changed since the last run."

    def handle(self, *args: Any, **options: Any) -> None:
        if settings.DEBUG:
            return
        root = Path(settings.STATIC_ROOT)
        fingerprint = sources_fingerprint()
        stored = root / FINGERPRINT_FILE
        if (root / "staticfiles.json").is_file() and stored.is_file() and stored.read_text() == fingerprint:
            return
        call_command("collectstatic", interactive=False, verbosity=0, clear=True)
        stored.write_text(fingerprint)
