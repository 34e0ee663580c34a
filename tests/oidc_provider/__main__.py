"""Run the test OpenID provider: ``python -m tests.oidc_provider --port P --dir D --client-id ...``.

1. an RSA key for signing ID tokens, made now, in D;
2. its own SQLite database in D, migrated;
3. one confidential client (authorization code, PKCE required, RS256 ID tokens, consent skipped)
   and the users given with --user NAME:PASSWORD:GROUP,GROUP;
4. Django's threaded development server on 127.0.0.1:P, until killed.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.oidc_provider")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--redirect-uri", required=True)
    parser.add_argument("--post-logout-redirect-uri", default="")
    parser.add_argument("--user", action="append", default=[], help="NAME:PASSWORD:GROUP,GROUP")
    args = parser.parse_args()

    args.dir.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_path = args.dir / "oidc.key"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "tests.oidc_provider.settings",
            "OIDC_PROVIDER_URL": f"http://127.0.0.1:{args.port}",
            "OIDC_PROVIDER_DB": str(args.dir / "provider.sqlite3"),
            "OIDC_PROVIDER_KEY": str(key_path),
        }
    )
    import django

    django.setup()
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command
    from oauth2_provider.models import Application

    call_command("migrate", verbosity=0, interactive=False)
    Application.objects.create(
        name="Modelfleet",
        client_id=args.client_id,
        client_secret=args.client_secret,  # hashed on save
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
        redirect_uris=args.redirect_uri,
        post_logout_redirect_uris=args.post_logout_redirect_uri,
        algorithm=Application.RS256_ALGORITHM,
        skip_authorization=True,
    )
    for spec in args.user:
        name, password, groups = spec.split(":", 2)
        user = User.objects.create_user(name, f"{name}@example.com", password)
        for group_name in filter(None, groups.split(",")):
            user.groups.add(Group.objects.get_or_create(name=group_name)[0])
    call_command("runserver", f"127.0.0.1:{args.port}", use_reloader=False, use_threading=True, skip_checks=True)


if __name__ == "__main__":
    main()
