"""`modelfleet setup`: the bootstrap admin, its token, the demo model and the CLI profile."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from endpoints_app import registry, setup
from endpoints_app.services.tokens import authenticate_token

pytestmark = pytest.mark.django_db


def test_the_bootstrap_token_from_the_environment_becomes_the_admins_token(settings):
    settings.BOOTSTRAP_TOKEN = "mf-automation-token-123"
    saved = setup.bootstrap_admin()
    assert saved["token"] == "mf-automation-token-123"
    assert authenticate_token("mf-automation-token-123").username == "admin"
    again = setup.bootstrap_admin()  # idempotent: same token, still one admin
    assert again["token"] == saved["token"] and again["password"] == saved["password"]
    credentials = Path(settings.DATA_DIR) / "admin-credentials.json"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert json.loads(credentials.read_text())["username"] == "admin"


def test_without_a_bootstrap_token_one_is_generated_once(settings):
    settings.BOOTSTRAP_TOKEN = None
    first = setup.bootstrap_admin()
    assert first["token"].startswith("mf-")
    assert setup.bootstrap_admin()["token"] == first["token"]
    assert authenticate_token(first["token"]) is not None


def test_the_demo_model_is_registered_with_two_versions():
    versions = setup.ensure_demo_model()
    assert versions[:2] == ["1", "2"]
    assert setup.ensure_demo_model() == versions  # idempotent
    info = registry.get_model_version(setup.DEMO_MODEL, "2")
    assert (Path(info.source) / "MLmodel").is_file()


def test_the_cli_profile_is_written_once(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELFLEET_CONFIG_FILE", str(tmp_path / "cfg"))
    path, wrote = setup.write_cli_profile("http://127.0.0.1:8000", "mf-one")
    assert wrote and "mf-one" in path.read_text()
    _, wrote_again = setup.write_cli_profile("http://127.0.0.1:8000", "mf-two")
    assert not wrote_again and "mf-two" not in path.read_text()
