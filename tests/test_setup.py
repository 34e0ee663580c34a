"""`modelfleet setup`: the bootstrap admin, its token, the demo model and the CLI profile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.contrib.auth import authenticate

from endpoints_app import registry, setup
from endpoints_app.models import AccessToken
from endpoints_app.services.tokens import authenticate_token

pytestmark = pytest.mark.django_db


def test_the_bootstrap_token_from_the_environment_becomes_the_admins_token(settings):
    settings.BOOTSTRAP_TOKEN = "mf-automation-token-123"
    first = setup.bootstrap_admin()
    assert first.token == "mf-automation-token-123" and first.token_from_environment
    assert authenticate_token("mf-automation-token-123").username == "admin"
    again = setup.bootstrap_admin()  # idempotent: same token, still one admin, no new password
    assert again.token == first.token and again.password is None
    assert AccessToken.objects.filter(user__username="admin").count() == 1
    assert "mf-automation-token-123" not in setup.first_run_notice(first)  # the operator's own: not echoed


def test_the_password_and_a_generated_token_are_shown_once_and_never_stored(settings):
    settings.BOOTSTRAP_TOKEN = None
    first = setup.bootstrap_admin()
    assert first.password and first.token and first.token.startswith("mf-")
    notice = setup.first_run_notice(first)
    assert first.password in notice and first.token in notice
    assert authenticate_token(first.token) is not None
    assert authenticate(username="admin", password=first.password) is not None

    again = setup.bootstrap_admin()
    assert (again.password, again.token) == (None, None)  # nothing to show: only hashes exist
    assert setup.first_run_notice(again) == ""
    assert authenticate_token(first.token) is not None  # the first token still works
    stored = [p.read_bytes() for p in Path(settings.DATA_DIR).rglob("*") if p.is_file()]
    assert not any(first.password.encode() in data or first.token.encode() in data for data in stored)


def test_a_plaintext_credentials_file_from_an_earlier_version_is_removed(settings):
    legacy = Path(settings.DATA_DIR) / "admin-credentials.json"
    legacy.write_text(json.dumps({"username": "admin", "password": "old-plaintext", "token": "mf-old"}))
    setup.bootstrap_admin()
    assert not legacy.exists()


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
