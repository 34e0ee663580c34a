"""``modelfleet workspaces …``: the remote workspaces this installation's fleet spans (admins change them).

``add NAME --host URL --token-stdin`` registers a Databricks workspace or another Modelfleet; the
token is read from stdin (its first line: ``echo "$TOKEN" | modelfleet workspaces add …``), or
asked for without echo when stdin is a terminal. There is no flag that takes the token itself, so
it never lands in the shell's history or in ``ps``. The server checks the workspace with the token
before storing it and refuses it with the remote's answer if that fails; ``--no-validate`` stores
it anyway, with the failure as its status. ``update`` changes the host (with the token again) or
the token; ``remove`` deletes the workspace and its stored token. ``list`` and ``get`` show the
status (OK, or the error and since when) and a hint of the token, never the token.

``grant NAME --user U|--group G --role R`` gives a user or group viewer, editor or approver in a
workspace (``local`` included) on top of their global role; ``revoke NAME --user U|--group G``
removes it; ``grants NAME`` lists them, with those single sign-on gave (admins, all three).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from endpoints_app.cli import render
from endpoints_app.cli.commands_common import Context, path_param, simple_verb
from endpoints_app.cli.errors import EXIT_OK, CliError

WORKSPACES = "/api/2.0/modelfleet/workspaces"
MAX_TOKEN_INPUT = 8192  # characters read from stdin at most (the server takes 4096)
GRANT_ROLES = ("viewer", "editor", "approver")  # admin is global only


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser(
        "workspaces",
        parents=[common],
        help="remote workspaces (Databricks or Modelfleet) in this fleet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    verbs = group.add_subparsers(dest="verb", metavar="VERB", required=True)
    p = simple_verb(verbs, common, "add", cmd_add, "register a remote workspace (admins)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--host", required=True, metavar="URL", help="the workspace's URL, https://…")
    _token_flags(p)
    simple_verb(verbs, common, "list", cmd_list, "list the workspaces and their status")
    p = simple_verb(verbs, common, "get", cmd_get, "show one workspace and its status")
    p.add_argument("name", metavar="NAME")
    p = simple_verb(verbs, common, "update", cmd_update, "change a workspace's host (with its token) or token (admins)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--host", metavar="URL", help="a new URL: the token must be given again")
    _token_flags(p)
    p = simple_verb(verbs, common, "remove", cmd_remove, "remove a workspace and its stored token (admins)")
    p.add_argument("name", metavar="NAME")
    p = simple_verb(verbs, common, "grants", cmd_grants, "list the roles granted in a workspace (admins)")
    p.add_argument("name", metavar="NAME")
    p = simple_verb(verbs, common, "grant", cmd_grant, "give a user or group a role in a workspace (admins)")
    p.add_argument("name", metavar="NAME")
    _principal_flags(p)
    p.add_argument("--role", required=True, choices=GRANT_ROLES, help="the role in this workspace")
    p = simple_verb(verbs, common, "revoke", cmd_revoke, "remove a user's or group's role in a workspace (admins)")
    p.add_argument("name", metavar="NAME")
    _principal_flags(p)


def _principal_flags(parser: argparse.ArgumentParser) -> None:
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", metavar="USER", help="a user name")
    who.add_argument("--group", metavar="GROUP", help="a group name")


def _token_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--token-stdin", action="store_true", help="read the workspace's token from stdin (its first line)"
    )
    parser.add_argument(
        "--no-validate",
        action="store_true",
        help="store it even if the workspace refuses the token or cannot be reached",
    )


def _read_token(ctx: Context) -> str:
    """The token: stdin's first line with ``--token-stdin``, else a prompt that does not echo."""
    stdin = sys.stdin
    if ctx.args.token_stdin:
        if stdin is None:
            raise CliError("--token-stdin: stdin is closed")
        token = stdin.readline(MAX_TOKEN_INPUT).rstrip("\r\n")
    elif stdin is not None and stdin.isatty():
        token = getpass.getpass("Token for the workspace (not shown): ")
    else:
        raise CliError('give the token on stdin with --token-stdin (e.g. echo "$TOKEN" | modelfleet workspaces …)')
    if not token:
        raise CliError("the token is empty")
    return token


def _query(ctx: Context) -> dict[str, str] | None:
    return {"validate": "false"} if ctx.args.no_validate else None


def _status(workspace: dict[str, Any]) -> str:
    status = workspace.get("status") or {}
    message = status.get("message") or ""
    return f"{status.get('state', '')}{': ' + message if message else ''}"


def _show(ctx: Context, workspace: dict[str, Any], done: str = "") -> None:
    if ctx.json_output:
        ctx.out(render.to_json(workspace))
        return
    if done:
        ctx.note(done)
    status = workspace.get("status") or {}
    rows = [
        ["name", workspace["name"]],
        ["kind", workspace["kind"]],
        ["host", workspace.get("host", "")],
        ["token", workspace.get("token_hint", "")],
        ["status", _status(workspace)],
        ["since", render.timestamp(status.get("since"))],
        ["checked", render.timestamp(status.get("checked_at"))],
    ]
    ctx.out(render.table(["FIELD", "VALUE"], rows))


def cmd_add(ctx: Context) -> int:
    token = _read_token(ctx)
    body = {"name": ctx.args.name, "host": ctx.args.host, "token": token}
    workspace = ctx.api.call("POST", WORKSPACES, body, params=_query(ctx))
    _show(ctx, workspace, f"Workspace {workspace['name']} registered: {_status(workspace)}")
    return EXIT_OK


def cmd_update(ctx: Context) -> int:
    body: dict[str, str] = {}
    if ctx.args.host:
        body["host"] = ctx.args.host
    if ctx.args.token_stdin or not ctx.args.host:
        body["token"] = _read_token(ctx)
    path = f"{WORKSPACES}/{path_param(ctx.args.name)}"
    workspace = ctx.api.call("PATCH", path, body, params=_query(ctx))
    _show(ctx, workspace, f"Workspace {workspace['name']} updated: {_status(workspace)}")
    return EXIT_OK


def cmd_list(ctx: Context) -> int:
    workspaces = ctx.api.call("GET", WORKSPACES).get("workspaces") or []
    if ctx.json_output:
        ctx.out(render.to_json(workspaces))
        return EXIT_OK
    rows = [
        [
            w["name"],
            w["kind"],
            w.get("host", ""),
            (w.get("status") or {}).get("state", ""),
            render.timestamp((w.get("status") or {}).get("since")),
            w.get("token_hint", ""),
            (w.get("status") or {}).get("message", ""),
        ]
        for w in workspaces
    ]
    ctx.out(render.table(["NAME", "KIND", "HOST", "STATE", "SINCE", "TOKEN", "MESSAGE"], rows))
    return EXIT_OK


def cmd_get(ctx: Context) -> int:
    _show(ctx, ctx.api.call("GET", f"{WORKSPACES}/{path_param(ctx.args.name)}"))
    return EXIT_OK


def cmd_remove(ctx: Context) -> int:
    ctx.api.call("DELETE", f"{WORKSPACES}/{path_param(ctx.args.name)}")
    if ctx.json_output:
        ctx.out(render.to_json({"name": ctx.args.name, "removed": True}))
    else:
        ctx.out(f"Workspace {ctx.args.name} removed")
    return EXIT_OK


def _grants_path(name: str) -> str:
    return f"{WORKSPACES}/{path_param(name)}/grants"


def _principal(ctx: Context) -> dict[str, str]:
    return {"user_name": ctx.args.user} if ctx.args.user is not None else {"group_name": ctx.args.group}


def _who(grant: dict[str, Any]) -> str:
    return f"user {grant['user_name']}" if "user_name" in grant else f"group {grant.get('group_name', '')}"


def cmd_grants(ctx: Context) -> int:
    grants = ctx.api.call("GET", _grants_path(ctx.args.name)).get("grants") or []
    if ctx.json_output:
        ctx.out(render.to_json(grants))
        return EXIT_OK
    rows = [
        [
            _who(g),
            g.get("role", ""),
            f"single sign-on ({g.get('mapped_group', '')})" if g.get("source") == "group_role_mapping" else "admin",
        ]
        for g in grants
    ]
    ctx.out(render.table(["PRINCIPAL", "ROLE", "GRANTED BY"], rows))
    return EXIT_OK


def cmd_grant(ctx: Context) -> int:
    grant = ctx.api.call("PUT", _grants_path(ctx.args.name), {**_principal(ctx), "role": ctx.args.role})
    if ctx.json_output:
        ctx.out(render.to_json(grant))
    else:
        ctx.out(f"{_who(grant).capitalize()} is {grant['role']} in workspace {ctx.args.name}")
    return EXIT_OK


def cmd_revoke(ctx: Context) -> int:
    principal = _principal(ctx)
    ctx.api.call("DELETE", _grants_path(ctx.args.name), params=principal)
    if ctx.json_output:
        ctx.out(render.to_json({"workspace": ctx.args.name, **principal, "revoked": True}))
    else:
        ctx.out(f"{_who(principal).capitalize()} has no role granted in workspace {ctx.args.name} any more")
    return EXIT_OK
