"""``modelfleet setup``: migrate, bootstrap the admin and the demo model, write the CLI profile.

Idempotent: run on every ``make run``. The admin's password and API token are generated on the
first run and printed once; nothing keeps them in plaintext (the database holds the password's and
the token's hashes; the token also goes into the CLI profile in the user's own ~/.modelfleetcfg,
mode 0600). ``python manage.py changepassword admin`` sets a new password later.

A process main: the CLI imports this module to dispatch ``modelfleet setup`` before Django is set
up, so what needs the models (the admin, the registry) is imported inside the functions that
``main`` runs once ``_django()`` has set it up.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from endpoints_app.cli.config import config_path, write_default_profile

DEMO_MODEL = "main.default.demo_classifier"
ADMIN_USERNAME = "admin"
BOOTSTRAP_TOKEN_COMMENT = "bootstrap token (make run)"
# Where earlier versions kept the admin's password and token in plaintext; removed on sight.
LEGACY_CREDENTIALS_FILE = "admin-credentials.json"


@dataclass
class AdminCredentials:
    """What this run of setup can tell the user: secrets only when it has just made them."""

    username: str
    password: str | None = None  # set only on the run that created the admin
    token: str | None = None  # set only on the run that created the token (or from the environment)
    token_from_environment: bool = False


def _django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    import django

    django.setup()


def _legacy_credentials_file() -> Path:
    return Path(settings.DATA_DIR) / LEGACY_CREDENTIALS_FILE


def bootstrap_admin() -> AdminCredentials:
    """The admin user and its bootstrap token (MODELFLEET_BOOTSTRAP_TOKEN when given).

    The password and a generated token come back only from the run that creates them, to be
    printed once; later runs return neither, since only their hashes exist.
    """
    from django.contrib.auth import get_user_model

    from endpoints_app.models import AccessToken
    from endpoints_app.models.tokens import hash_token
    from endpoints_app.services.tokens import create_token

    _legacy_credentials_file().unlink(missing_ok=True)
    result = AdminCredentials(username=ADMIN_USERNAME)
    User = get_user_model()
    user = User.objects.filter(username=ADMIN_USERNAME).first()
    if user is None:
        result.password = secrets.token_urlsafe(12)
        user = User.objects.create_superuser(ADMIN_USERNAME, "admin@localhost", result.password)
    live = AccessToken.objects.filter(user=user, revoked_at__isnull=True)
    wanted = settings.BOOTSTRAP_TOKEN
    if wanted:
        result.token, result.token_from_environment = wanted, True
        if not live.filter(digest=hash_token(wanted)).exists():
            if AccessToken.objects.filter(digest=hash_token(wanted)).exists():
                # Revoked, or another user's: a fresh token instead, printed once like a generated one.
                _, result.token = create_token(user=user, comment=BOOTSTRAP_TOKEN_COMMENT)
                result.token_from_environment = False
            else:
                create_token(user=user, comment=BOOTSTRAP_TOKEN_COMMENT, raw=wanted)
    elif not live.filter(comment=BOOTSTRAP_TOKEN_COMMENT).exists():
        _, result.token = create_token(user=user, comment=BOOTSTRAP_TOKEN_COMMENT)
    return result


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
    path = config_path()
    return path, write_default_profile(path, host, token)


def first_run_notice(credentials: AdminCredentials) -> str:
    """The lines that show a just-made password or token, the one time they can be shown."""
    lines = []
    if credentials.password:
        lines.append(f"setup: admin '{credentials.username}' created; password: {credentials.password}")
    if credentials.token and not credentials.token_from_environment:
        lines.append(f"setup: API token for '{credentials.username}': {credentials.token}")
    if lines:
        lines.append(
            "setup: these are shown only now and are not stored (only their hashes); the token is also in the "
            "CLI profile DEFAULT (~/.modelfleetcfg). New password: python manage.py changepassword admin"
        )
    return "\n".join(lines)


def banner() -> None:
    url = settings.PUBLIC_URL
    lines = [
        "",
        "Modelfleet is running.",
        f"  URL:       {url}",
        f"  Admin:     {ADMIN_USERNAME}, password as printed by the first setup ({url}/admin/);"
        " python manage.py changepassword admin sets a new one",
        "  Token:     in the CLI profile DEFAULT (~/.modelfleetcfg), printed by the first setup",
        "  CLI:       modelfleet serving-endpoints list   (profile DEFAULT in ~/.modelfleetcfg)",
        f"  Demo:      registered model {DEMO_MODEL}, versions 1 and 2",
        "  Stop:      Ctrl-C",
        "",
    ]
    print("\n".join(lines), flush=True)


def main(args: argparse.Namespace | None = None) -> int:
    quiet = bool(getattr(args, "quiet", False))
    _django()
    from django.core.management import call_command

    Path(settings.DATA_DIR).mkdir(parents=True, exist_ok=True)
    if getattr(args, "banner", False):
        banner()
        return 0
    call_command("migrate", interactive=False, verbosity=0 if quiet else 1)
    credentials = bootstrap_admin()
    versions = ensure_demo_model()
    print(
        f"setup: database migrated; admin '{credentials.username}' ready; "
        f"demo model {DEMO_MODEL} versions {', '.join(versions)}"
    )
    if credentials.token:
        path, wrote = write_cli_profile(settings.PUBLIC_URL, credentials.token)
        print(f"setup: CLI profile DEFAULT {'written to' if wrote else 'already in'} {path}")
    notice = first_run_notice(credentials)
    if notice:
        print(notice, flush=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m endpoints_app.setup")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--banner", action="store_true")
    sys.exit(main(parser.parse_args()))
