"""Settings come only from the environment, and a malformed value names its variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dashboard.env import EnvError, env_bind, env_bool, env_float


def start_settings(**env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "DJANGO_SETTINGS_MODULE": "dashboard.settings", **env}
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); from django.conf import settings; print(settings.BIND)"],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MODELFLEET_BIND", "localhost"),
        ("MODELFLEET_BIND", "127.0.0.1:99999"),
        ("DATABASE_URL", "nosuchdb://x/y"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("MLFLOW_TRACKING_URI", "ftp://registry"),
        ("MODELFLEET_DEBUG", "maybe"),
        ("MODELFLEET_ROLLOUT_TIMEOUT_SECONDS", "soon"),
    ],
)
def test_a_malformed_value_stops_start_up_naming_the_variable(variable, value, tmp_path):
    result = start_settings(MODELFLEET_DATA_DIR=str(tmp_path), **{variable: value})
    assert result.returncode != 0
    assert variable in result.stderr


def test_good_values_are_used(tmp_path):
    result = start_settings(MODELFLEET_DATA_DIR=str(tmp_path), MODELFLEET_BIND="127.0.0.1:8123")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "127.0.0.1:8123"


def test_the_parsers_are_strict(monkeypatch):
    monkeypatch.setenv("X_BOOL", "TRUE")
    assert env_bool("X_BOOL", False) is True
    monkeypatch.setenv("X_BOOL", "nope")
    with pytest.raises(EnvError, match="X_BOOL"):
        env_bool("X_BOOL", False)
    monkeypatch.setenv("X_NUM", "-1")
    with pytest.raises(EnvError, match="at least"):
        env_float("X_NUM", 1.0, minimum=0.0)
    monkeypatch.setenv("X_BIND", "[::1]:8000")
    assert (env_bind("X_BIND", "127.0.0.1:1").host, env_bind("X_BIND", "127.0.0.1:1").port) == ("::1", 8000)
