"""The wheel's one build step beyond setuptools' own: the dashboard's assets go into the package.

pyproject.toml holds all the metadata. A checkout keeps the templates and static files at the
repository root and the front-end packages in node_modules/ (see dashboard/assets.py); a wheel is
installed into site-packages, where there is no repository root, so the build copies them into
``dashboard/templates/``, ``dashboard/static/`` and ``dashboard/static/vendor/``. A build without
node_modules (``npm ci`` not run) fails here rather than making a wheel whose pages lack their scripts.
An editable install (``pip install -e .``) reads them from the checkout and copies nothing.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _assets():  # dashboard/assets.py, read without importing the dashboard package (it needs Django)
    spec = importlib.util.spec_from_file_location("_modelfleet_assets", ROOT / "dashboard" / "assets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithAssets(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "dashboard"
        for name in ("templates", "static"):
            shutil.rmtree(target / name, ignore_errors=True)  # no file a previous build copied survives
            shutil.copytree(ROOT / name, target / name)
        missing = []
        for source, static_path in _assets().vendor_sources(ROOT / "node_modules"):
            if not source.is_file():
                missing.append(str(source.relative_to(ROOT)))
                continue
            destination = target / "static" / static_path
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)
        if missing:
            raise SystemExit(f"modelfleet: run `npm ci` before building a wheel; missing: {', '.join(missing)}")


setup(cmdclass={"build_py": BuildPyWithAssets})
