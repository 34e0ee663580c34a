"""Where the dashboard's templates and static files are, in a checkout and in an installed wheel.

A checkout keeps them at the repository root (``templates/``, ``static/``) and takes the front-end
packages' built files from ``node_modules/`` (``npm ci``). A wheel has no repository root, so its
build (``setup.py``) copies all three into the ``dashboard`` package: ``dashboard/templates/``,
``dashboard/static/`` and ``dashboard/static/vendor/<package>/``. Either way the pages name the same
static paths, and ``collectstatic`` hashes and compresses them into ``STATIC_ROOT``.

This module imports nothing from Django: ``setup.py`` reads it while building a wheel.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT_DIR = PACKAGE_DIR.parent

# The npm packages' files the pages load (``vendor/<package>/<file name>``), with what they need
# beside them: the source map a minified file names (collectstatic's manifest follows the
# reference and fails without it) and the licence every copy must carry. Nothing else from
# node_modules is served or packaged.
VENDOR_FILES: dict[str, tuple[str, ...]] = {
    "chart.js": ("dist/chart.umd.min.js", "dist/chart.umd.min.js.map", "LICENSE.md"),
    "htmx.org": ("dist/htmx.min.js", "LICENSE"),
}

# An installed wheel carries its templates inside the package; a checkout never has this folder
# (setup.py writes it only into the build directory, and .gitignore keeps it out).
PACKAGED = (PACKAGE_DIR / "templates").is_dir()

TEMPLATES_DIR = PACKAGE_DIR / "templates" if PACKAGED else CHECKOUT_DIR / "templates"
STATIC_DIR = PACKAGE_DIR / "static" if PACKAGED else CHECKOUT_DIR / "static"
NODE_MODULES_DIR = CHECKOUT_DIR / "node_modules"


def vendor_sources(node_modules: Path = NODE_MODULES_DIR) -> list[tuple[Path, str]]:
    """Each vendored file as (its path under node_modules, its static path ``vendor/<pkg>/<name>``)."""
    return [
        (node_modules / package / relative, f"vendor/{package}/{Path(relative).name}")
        for package, files in VENDOR_FILES.items()
        for relative in files
    ]
