"""``modelfleet setup``: migrate, bootstrap the admin and the demo model, write the CLI profile.

Idempotent: run on every ``make run``. The admin's password and token are generated once and kept
in ``<data dir>/admin-credentials.json`` (mode 0600) so each start can print them; the database
stores only the token's hash.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

DEMO_MODEL = "main.default.demo_classifier"
ADMIN_USERNAME = "admin"


def _django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    import django

    django.setup()


def _credentials_file() -> Path:
    from django.conf import settings

    return Path(settings.DATA_DIR) / "admin-credentials.json"


def bootstrap_admin() -> dict[str, str]:
    """The admin user and a token (MODELFLEET_BOOTSTRAP_TOKEN when given); returns the credentials."""
    import secrets

    from django.conf import settings
    from django.contrib.auth import get_user_model

    from endpoints_app.models import AccessToken
    from endpoints_app.models.tokens import hash_token
    from endpoints_app.services.tokens import create_token

    path = _credentials_file()
    saved: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    User = get_user_model()
    user = User.objects.filter(username=ADMIN_USERNAME).first()
    if user is None:
        password = saved.get("password") or secrets.token_urlsafe(12)
        user = User.objects.create_superuser(ADMIN_USERNAME, "admin@localhost", password)
        saved["password"] = password
    token = settings.BOOTSTRAP_TOKEN or saved.get("token")
    if (
        not token
        or not AccessToken.objects.filter(digest=hash_token(token), user=user, revoked_at__isnull=True).exists()
    ):
        if token and AccessToken.objects.filter(digest=hash_token(token)).exists():
            token = None  # that token belongs to someone else or was revoked: make a new one
        _, token = create_token(user=user, comment="bootstrap token (make run)", raw=token)
    saved.update({"username": ADMIN_USERNAME, "token": token})
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(saved, fh)
    return saved


def ensure_demo_model() -> list[str]:
    """Register the demo classifier (two versions, trained on scikit-learn's bundled iris data)."""
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from endpoints_app import registry

    existing = registry.list_registered_models(DEMO_MODEL)
    versions = [v["version"] for m in existing for v in m["versions"]]
    if len(versions) >= 2:
        return versions
    X, y = load_iris(return_X_y=True, as_frame=True)
    X.columns = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    # Version 2 is regularised harder: a different model of the same signature, for A/B tests.
    candidates = [LogisticRegression(max_iter=500), LogisticRegression(C=0.05, max_iter=500)]
    for model in candidates[len(versions) :]:
        model.fit(X, y)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model"
            mlflow.sklearn.save_model(
                model, str(path), signature=infer_signature(X, model.predict(X)), input_example=X.head(2)
            )
            info = registry.register_model_dir(path, DEMO_MODEL, description="Iris classifier (demo, made by setup)")
            versions.append(info.version)
    return versions


def write_cli_profile(host: str, token: str) -> tuple[Path, bool]:
    from endpoints_app.cli.config import config_path, write_default_profile

    path = config_path()
    return path, write_default_profile(path, host, token)


def banner() -> None:
    from django.conf import settings

    saved = json.loads(_credentials_file().read_text()) if _credentials_file().exists() else {}
    url = settings.PUBLIC_URL
    lines = [
        "",
        "Modelfleet is running.",
        f"  URL:       {url}",
        f"  Admin:     {saved.get('username', ADMIN_USERNAME)} / {saved.get('password', '(set earlier)')}  ({url}/admin/)",
        f"  Token:     {saved.get('token', '(unknown)')}",
        "  CLI:       modelfleet serving-endpoints list   (profile DEFAULT in ~/.modelfleetcfg)",
        f"  Demo:      registered model {DEMO_MODEL}, versions 1 and 2",
        "  Stop:      Ctrl-C",
        "",
    ]
    print("\n".join(lines), flush=True)


def main(args: argparse.Namespace | None = None) -> int:
    quiet = bool(getattr(args, "quiet", False))
    _django()
    from django.conf import settings
    from django.core.management import call_command

    Path(settings.DATA_DIR).mkdir(parents=True, exist_ok=True)
    if getattr(args, "banner", False):
        banner()
        return 0
    call_command("migrate", interactive=False, verbosity=0 if quiet else 1)
    saved = bootstrap_admin()
    versions = ensure_demo_model()
    path, wrote = write_cli_profile(settings.PUBLIC_URL, saved["token"])
    print(
        f"setup: database migrated; admin '{saved['username']}' ready; demo model {DEMO_MODEL} versions {', '.join(versions)}"
    )
    print(f"setup: CLI profile DEFAULT {'written to' if wrote else 'already in'} {path}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m endpoints_app.setup")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--banner", action="store_true")
    sys.exit(main(parser.parse_args()))
