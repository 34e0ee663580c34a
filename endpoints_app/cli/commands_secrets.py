"""``modelfleet secrets VERB``: the Databricks CLI's secrets verbs (reference §6.3).

``put-secret`` takes the value from ``--string-value``, from ``--bytes-value`` (raw text that the
CLI base64-encodes, as Databricks' CLI does), else from stdin when it is not a terminal (read as
is, every byte: use ``printf``, not ``echo``, to avoid a trailing newline), else from a prompt that
does not echo. The value never appears in the output.

Output is the Databricks CLI's: ``list-scopes`` and ``list-secrets`` print tables, ``list-acls`` and
``get-acl`` JSON, and the verbs that change something print nothing (``-o table`` prints tables
and a line saying what was done; ``-o json`` JSON).
"""

from __future__ import annotations

import argparse
import base64
import getpass
import sys
from typing import Any

from endpoints_app.cli import render
from endpoints_app.cli.commands_common import Context, Handler, parse_json_object
from endpoints_app.cli.errors import EXIT_OK, CliError, UsageError

SECRETS = "/api/2.0/secrets"
PERMISSIONS = ["MANAGE", "WRITE", "READ"]
BACKEND_TYPES = ["DATABRICKS", "AZURE_KEYVAULT"]


def _verb(
    verbs: argparse._SubParsersAction,
    common: argparse.ArgumentParser,
    name: str,
    handler: Handler,
    text: str,
    positionals: list[tuple[str, str]],
    *,
    json_body: bool = False,
) -> argparse.ArgumentParser:
    """A verb with positionals ``(dest, METAVAR)``, bound by ``main.bind_positionals`` so they may follow flags.

    With ``json_body`` the request body may come from ``--json`` instead, and then no positional is allowed.
    """
    usage = " ".join(meta for _, meta in positionals)
    parser = verbs.add_parser(
        name,
        parents=[common],
        help=text,
        description=text,
        allow_abbrev=False,
        usage=f"%(prog)s {usage + ' ' if usage else ''}[flags]",
    )
    spec = [(dest, meta, not json_body) for dest, meta in positionals]
    parser.set_defaults(handler=handler, positional_spec=spec, leaf_parser=parser, json=None)
    if positionals:
        parser.add_argument("positionals", nargs="*", help=argparse.SUPPRESS)
    if json_body:
        parser.add_argument("--json", metavar="JSON", help="request body: inline JSON or @path/to/file.json")
    return parser


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser(
        "secrets",
        parents=[common],
        help="store credentials encrypted, for endpoints to use as {{secrets/SCOPE/KEY}}",
        description="Manage secret scopes, secrets and their ACLs (Databricks `secrets` compatible).",
        allow_abbrev=False,
    )
    verbs = group.add_subparsers(dest="verb", metavar="VERB", required=True)
    scope = [("scope", "SCOPE")]

    p = _verb(verbs, common, "create-scope", cmd_create_scope, "create a secret scope", scope, json_body=True)
    p.add_argument("--initial-manage-principal", metavar="PRINCIPAL", help="'users' gives MANAGE to every user")
    p.add_argument("--scope-backend-type", choices=BACKEND_TYPES, help="only DATABRICKS is supported")
    _verb(verbs, common, "delete-scope", cmd_delete_scope, "delete a scope with its secrets", scope, json_body=True)
    p = _verb(verbs, common, "list-scopes", cmd_list_scopes, "list the scopes you can see", [])
    p.add_argument("--limit", type=int, default=0, help="show at most N scopes (0 = all)")

    p = _verb(
        verbs,
        common,
        "put-secret",
        cmd_put_secret,
        "add or overwrite a secret (value from a flag, stdin, or a prompt)",
        [("scope", "SCOPE"), ("key", "KEY")],
        json_body=True,
    )
    p.add_argument("--string-value", metavar="VALUE", help="the value, stored as UTF-8 text")
    p.add_argument("--bytes-value", metavar="VALUE", help="the value, sent base64-encoded as bytes")
    p = _verb(verbs, common, "list-secrets", cmd_list_secrets, "list the keys in a scope (never values)", scope)
    p.add_argument("--limit", type=int, default=0, help="show at most N secrets (0 = all)")
    _verb(
        verbs,
        common,
        "delete-secret",
        cmd_delete_secret,
        "delete a secret",
        [("scope", "SCOPE"), ("key", "KEY")],
        json_body=True,
    )

    principal = [("scope", "SCOPE"), ("principal", "PRINCIPAL")]
    p = _verb(
        verbs,
        common,
        "put-acl",
        cmd_put_acl,
        "grant a user or group MANAGE, WRITE or READ on a scope",
        [*principal, ("permission", "PERMISSION")],
        json_body=True,
    )
    _verb(verbs, common, "list-acls", cmd_list_acls, "list a scope's ACLs", scope)
    _verb(verbs, common, "get-acl", cmd_get_acl, "show one principal's ACL on a scope", principal)
    _verb(verbs, common, "delete-acl", cmd_delete_acl, "remove a principal's ACL", principal, json_body=True)


def _body(ctx: Context, *fields: str) -> dict[str, Any]:
    """The request body: ``--json``, or the positionals named ``fields`` (exactly one of the two)."""
    given = {f: getattr(ctx.args, f) for f in fields if getattr(ctx.args, f, None) is not None}
    if ctx.args.json is not None:
        if given:
            raise UsageError("when --json flag is specified, no positional arguments are allowed")
        return parse_json_object(ctx.args.json)
    missing = [f.upper() for f in fields if f not in given]
    if missing:
        raise UsageError(f"missing {' '.join(missing)} (or give the request body with --json)")
    return given


def _done(ctx: Context, message: str) -> int:
    """Void calls print nothing, like the Databricks CLI's; ``-o table`` adds one line saying what was done."""
    if ctx.table_output:
        ctx.out(message)
    return EXIT_OK


def _limited(items: list[Any], limit: int) -> list[Any]:
    return items[:limit] if limit > 0 else items


def cmd_create_scope(ctx: Context) -> int:
    body = _body(ctx, "scope")
    if ctx.args.initial_manage_principal:
        body["initial_manage_principal"] = ctx.args.initial_manage_principal
    if ctx.args.scope_backend_type:
        body["scope_backend_type"] = ctx.args.scope_backend_type
    ctx.api.call("POST", f"{SECRETS}/scopes/create", body)
    return _done(ctx, f"Created scope {body.get('scope')}")


def cmd_delete_scope(ctx: Context) -> int:
    body = _body(ctx, "scope")
    ctx.api.call("POST", f"{SECRETS}/scopes/delete", body)
    return _done(ctx, f"Deleted scope {body.get('scope')} and its secrets")


def cmd_list_scopes(ctx: Context) -> int:
    scopes = _limited(ctx.api.call("GET", f"{SECRETS}/scopes/list").get("scopes") or [], ctx.args.limit)
    if ctx.json_output:
        ctx.out(render.to_json(scopes))
    else:
        ctx.out(render.table(["Scope", "Backend Type"], [[s.get("name"), s.get("backend_type")] for s in scopes]))
    return EXIT_OK


def _read_value() -> bytes:
    """The value from stdin as is when it is piped, else from a prompt that does not echo."""
    if sys.stdin is None:
        raise CliError("no secret value: give --string-value, or pipe it to stdin")
    if sys.stdin.isatty():
        return getpass.getpass("Please enter your secret value: ").encode("utf-8")
    stream = getattr(sys.stdin, "buffer", None)
    return stream.read() if stream is not None else sys.stdin.read().encode("utf-8")


def put_secret_body(ctx: Context) -> dict[str, Any]:
    args = ctx.args
    if args.string_value is not None and args.bytes_value is not None:
        raise UsageError("cannot specify both --bytes-value and --string-value")
    body = _body(ctx, "scope", "key")
    if args.json is not None:
        return body
    if args.string_value is not None:
        body["string_value"] = args.string_value
    elif args.bytes_value is not None:
        body["bytes_value"] = base64.b64encode(args.bytes_value.encode("utf-8")).decode("ascii")
    else:
        value = _read_value()
        if not value:
            raise CliError("no secret value given (the input was empty)")
        body["bytes_value"] = base64.b64encode(value).decode("ascii")
    return body


def cmd_put_secret(ctx: Context) -> int:
    body = put_secret_body(ctx)
    ctx.api.call("POST", f"{SECRETS}/put", body)
    return _done(ctx, f"Stored secret {body.get('key')} in scope {body.get('scope')}")


def cmd_list_secrets(ctx: Context) -> int:
    secrets = ctx.api.call("GET", f"{SECRETS}/list", params={"scope": ctx.args.scope}).get("secrets") or []
    secrets = _limited(secrets, ctx.args.limit)
    if ctx.json_output:
        ctx.out(render.to_json(secrets))
    else:
        rows = [[s.get("key"), render.timestamp(s.get("last_updated_timestamp"))] for s in secrets]
        ctx.out(render.table(["Key", "Last Updated Timestamp"], rows))
    return EXIT_OK


def cmd_delete_secret(ctx: Context) -> int:
    body = _body(ctx, "scope", "key")
    ctx.api.call("POST", f"{SECRETS}/delete", body)
    return _done(ctx, f"Deleted secret {body.get('key')} from scope {body.get('scope')}")


def cmd_put_acl(ctx: Context) -> int:
    body = _body(ctx, "scope", "principal", "permission")
    if ctx.args.json is None:
        body["permission"] = str(body["permission"]).upper()
        if body["permission"] not in PERMISSIONS:
            raise UsageError(f"PERMISSION must be one of {', '.join(PERMISSIONS)}")
    ctx.api.call("POST", f"{SECRETS}/acls/put", body)
    return _done(ctx, f"{body.get('principal')} has {body.get('permission')} on scope {body.get('scope')}")


def _acl_table(acls: list[dict[str, Any]]) -> str:
    return render.table(["Principal", "Permission"], [[a.get("principal"), a.get("permission")] for a in acls])


def cmd_list_acls(ctx: Context) -> int:
    acls = ctx.api.call("GET", f"{SECRETS}/acls/list", params={"scope": ctx.args.scope}).get("items") or []
    ctx.out(_acl_table(acls) if ctx.table_output else render.to_json(acls))
    return EXIT_OK


def cmd_get_acl(ctx: Context) -> int:
    acl = ctx.api.call("GET", f"{SECRETS}/acls/get", params={"scope": ctx.args.scope, "principal": ctx.args.principal})
    ctx.out(_acl_table([acl]) if ctx.table_output else render.to_json(acl))
    return EXIT_OK


def cmd_delete_acl(ctx: Context) -> int:
    body = _body(ctx, "scope", "principal")
    ctx.api.call("POST", f"{SECRETS}/acls/delete", body)
    return _done(ctx, f"Removed the ACL of {body.get('principal')} on scope {body.get('scope')}")
