"""``modelfleet service-principals …``: identities for automation that sign in with OAuth (admins).

``create NAME`` prints the application id (the OAuth client id) and a secret, once; give both to
the Databricks SDK (``WorkspaceClient(host=…, client_id=…, client_secret=…,
auth_type="oauth-m2m")``) or to any OAuth client of ``/oidc/v1/token``. Grant it endpoints with
``modelfleet permissions update serving-endpoints ID --json '{"access_control_list":
[{"service_principal_name": "<application id>", "permission_level": "CAN_QUERY"}]}'``.
"""

from __future__ import annotations

import argparse

from endpoints_app.cli import render
from endpoints_app.cli.commands_common import Context, path_param, simple_verb
from endpoints_app.cli.errors import EXIT_OK

PRINCIPALS = "/api/2.0/modelfleet/service-principals"
ROLES = ["none", "viewer", "editor", "approver", "admin"]


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser(
        "service-principals",
        parents=[common],
        help="identities for automation, signing in with OAuth client credentials (admins)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    verbs = group.add_subparsers(dest="verb", metavar="VERB", required=True)
    p = simple_verb(verbs, common, "create", cmd_create, "create a service principal (its secret printed once)")
    p.add_argument("display_name", metavar="NAME")
    p.add_argument("--role", choices=ROLES, default="none", help="its global role (default: none, only grants)")
    simple_verb(verbs, common, "list", cmd_list, "list service principals (never their secrets)")
    p = simple_verb(verbs, common, "delete", cmd_delete, "delete a service principal: its tokens stop at once")
    p.add_argument("application_id", metavar="APPLICATION_ID")
    p = simple_verb(verbs, common, "create-secret", cmd_create_secret, "another secret, to rotate (printed once)")
    p.add_argument("application_id", metavar="APPLICATION_ID")
    p = simple_verb(verbs, common, "delete-secret", cmd_delete_secret, "delete a secret: its tokens stop at once")
    p.add_argument("application_id", metavar="APPLICATION_ID")
    p.add_argument("secret_id", metavar="SECRET_ID", type=int)


def cmd_create(ctx: Context) -> int:
    role = "" if ctx.args.role == "none" else ctx.args.role
    result = ctx.api.call("POST", PRINCIPALS, {"display_name": ctx.args.display_name, "role": role})
    if ctx.json_output:
        ctx.out(render.to_json(result))
    else:
        ctx.note(f"Service principal {result['display_name']}: the secret is shown once, stored only as a hash.")
        ctx.out(f"client_id: {result['application_id']}")
        ctx.out(f"client_secret: {result['secret']}")
    return EXIT_OK


def cmd_list(ctx: Context) -> int:
    principals = ctx.api.call("GET", PRINCIPALS).get("service_principals") or []
    if ctx.json_output:
        ctx.out(render.to_json(principals))
    else:
        ctx.out(
            render.table(
                ["APPLICATION ID", "NAME", "ROLE", "SECRETS", "CREATED"],
                [
                    [
                        p["application_id"],
                        p["display_name"],
                        p["role"] or "none",
                        ", ".join(f"{s['id']}:{s['hint']}…" for s in p["secrets"]) or "-",
                        render.timestamp(p["created_at"]),
                    ]
                    for p in principals
                ],
            )
        )
    return EXIT_OK


def cmd_delete(ctx: Context) -> int:
    ctx.api.call("DELETE", f"{PRINCIPALS}/{path_param(ctx.args.application_id)}")
    ctx.out(f"Service principal {ctx.args.application_id} deleted")
    return EXIT_OK


def cmd_create_secret(ctx: Context) -> int:
    result = ctx.api.call("POST", f"{PRINCIPALS}/{path_param(ctx.args.application_id)}/secrets", {})
    if ctx.json_output:
        ctx.out(render.to_json(result))
    else:
        ctx.note(f"Secret {result['id']}: shown once, stored only as a hash.")
        ctx.out(result["secret"])
    return EXIT_OK


def cmd_delete_secret(ctx: Context) -> int:
    ctx.api.call("DELETE", f"{PRINCIPALS}/{path_param(ctx.args.application_id)}/secrets/{ctx.args.secret_id}")
    ctx.out(f"Secret {ctx.args.secret_id} deleted")
    return EXIT_OK
