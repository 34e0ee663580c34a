"""`modelfleet users …`, `modelfleet tokens …` and `modelfleet audit …` (administration)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from endpoints_app.cli import render
from endpoints_app.cli.commands_common import Context, parse_json_object, simple_verb
from endpoints_app.cli.errors import EXIT_OK, CliError

USERS = "/api/2.0/modelfleet/users"
TOKENS = "/api/2.0/modelfleet/tokens"
AUDIT = "/api/2.0/modelfleet/audit-events"
ROLES = ["none", "viewer", "editor", "approver", "admin"]


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    users = commands.add_parser("users", parents=[common], help="manage users and their roles (admins)")
    verbs = users.add_subparsers(dest="verb", metavar="VERB", required=True)
    p = simple_verb(verbs, common, "create", cmd_users_create, "create a user")
    p.add_argument("username")
    p.add_argument("--role", choices=ROLES, default="none")
    p.add_argument("--email", default="")
    p.add_argument("--password-stdin", action="store_true", help="read a password for the web sign-in from stdin")
    simple_verb(verbs, common, "list", cmd_users_list, "list users")
    p = simple_verb(verbs, common, "set-role", cmd_users_set_role, "change a user's global role")
    p.add_argument("username")
    p.add_argument("role", choices=ROLES)
    p = simple_verb(
        verbs, common, "deactivate", cmd_users_deactivate, "stop a user from signing in (their tokens stop too)"
    )
    p.add_argument("username")
    p = simple_verb(
        verbs,
        common,
        "set-max-token-lifetime",
        cmd_users_set_max_token_lifetime,
        "the longest lifetime a user's new personal access tokens may have",
    )
    p.add_argument("username")
    p.add_argument("seconds", help="whole seconds, or 'none' for no limit")

    groups = commands.add_parser("groups", parents=[common], help="manage groups (admins); grant endpoints to them")
    verbs = groups.add_subparsers(dest="verb", metavar="VERB", required=True)
    simple_verb(verbs, common, "list", cmd_groups_list, "list groups and their members")
    p = simple_verb(verbs, common, "create", cmd_groups_create, "create a group")
    p.add_argument("name")
    for name, handler, text in (
        ("add-member", cmd_groups_add, "add a user to a group"),
        ("remove-member", cmd_groups_remove, "remove a user from a group"),
    ):
        p = simple_verb(verbs, common, name, handler, text)
        p.add_argument("group")
        p.add_argument("username")

    tokens = commands.add_parser("tokens", parents=[common], help="personal access tokens")
    verbs = tokens.add_subparsers(dest="verb", metavar="VERB", required=True)
    p = simple_verb(verbs, common, "create", cmd_tokens_create, "create a token (printed once, as the last line)")
    p.add_argument("--user", help="for another user (admins)")
    p.add_argument("--comment", default="")
    p.add_argument(
        "--lifetime-seconds", type=int, metavar="N", help="the token expires after N seconds (default: never)"
    )
    p = simple_verb(verbs, common, "list", cmd_tokens_list, "list tokens (never their values)")
    p.add_argument("--user")
    p = simple_verb(verbs, common, "revoke", cmd_tokens_revoke, "revoke a token")
    p.add_argument("token_id", type=int)

    crs = commands.add_parser("change-requests", parents=[common], help="propose, review and approve changes")
    verbs = crs.add_subparsers(dest="verb", metavar="VERB", required=True)
    p = simple_verb(verbs, common, "list", cmd_cr_list, "list change requests (approvers see all, others their own)")
    p.add_argument("--status", choices=["pending", "applied", "rejected", "stale", "failed"])
    p = simple_verb(verbs, common, "show", cmd_cr_show, "show one change request with its diff")
    p.add_argument("request_id", type=int)
    p = simple_verb(verbs, common, "propose", cmd_cr_propose, "propose a change for approval")
    p.add_argument("endpoint_name")
    p.add_argument(
        "--action", choices=["create", "update-config", "ai-gateway", "tags", "delete"], default="update-config"
    )
    p.add_argument(
        "--json",
        metavar="JSON",
        help="the config (update-config), create body, ai-gateway body or tags patch (add_tags, delete_tags): "
        "inline or @file",
    )
    p.add_argument("--workspace", metavar="NAME", help="the endpoint of this remote workspace (default: local)")
    for name, handler in (("approve", cmd_cr_approve), ("reject", cmd_cr_reject)):
        p = simple_verb(verbs, common, name, handler, f"{name} a change request (not your own)")
        p.add_argument("request_id", type=int)
        p.add_argument("--comment", default="")

    audit = commands.add_parser("audit", parents=[common], help="read the audit log (admins)")
    verbs = audit.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name, handler, text in (
        ("list", cmd_audit_list, "list audit events, newest first"),
        ("export", cmd_audit_export, "every matching event as JSON lines, oldest first"),
    ):
        p = simple_verb(verbs, common, name, handler, text)
        for flag in ("--actor", "--action", "--object-type", "--object-id", "--object-name", "--since", "--until"):
            p.add_argument(flag)
        if name == "list":
            p.add_argument("--limit", type=int, default=50)


def _role(value: str) -> str:
    return "" if value == "none" else value


def cmd_users_create(ctx: Context) -> int:
    body: dict[str, Any] = {"username": ctx.args.username, "email": ctx.args.email, "role": _role(ctx.args.role)}
    if ctx.args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
        if not password:
            raise CliError("no password on stdin")
        body["password"] = password
    result = ctx.api.call("POST", USERS, body)
    ctx.out(
        render.to_json(result)
        if ctx.json_output
        else f"Created user {result['username']} (role {result['role'] or 'none'})"
    )
    return EXIT_OK


def cmd_users_list(ctx: Context) -> int:
    users = ctx.api.call("GET", USERS).get("users") or []
    if ctx.json_output:
        ctx.out(render.to_json(users))
    else:
        ctx.out(
            render.table(
                ["USERNAME", "EMAIL", "ROLE", "ACTIVE"],
                [[u["username"], u["email"], u["role"] or "none", "yes" if u["active"] else "no"] for u in users],
            )
        )
    return EXIT_OK


def cmd_users_set_role(ctx: Context) -> int:
    result = ctx.api.call("PATCH", f"{USERS}/{ctx.args.username}", {"role": _role(ctx.args.role)})
    ctx.out(
        render.to_json(result)
        if ctx.json_output
        else f"{result['username']} is now {result['role'] or 'without a role'}"
    )
    return EXIT_OK


def cmd_users_deactivate(ctx: Context) -> int:
    result = ctx.api.call("PATCH", f"{USERS}/{ctx.args.username}", {"active": False})
    ctx.out(render.to_json(result) if ctx.json_output else f"{result['username']} deactivated")
    return EXIT_OK


def cmd_users_set_max_token_lifetime(ctx: Context) -> int:
    seconds: int | None = None
    if ctx.args.seconds != "none":
        try:
            seconds = int(ctx.args.seconds)
        except ValueError:
            raise CliError("seconds must be a whole number or 'none'") from None
    result = ctx.api.call("PATCH", f"{USERS}/{ctx.args.username}", {"max_token_lifetime_seconds": seconds})
    limit = result.get("max_token_lifetime_seconds")
    ctx.out(
        render.to_json(result)
        if ctx.json_output
        else f"{result['username']}'s new tokens may live {f'at most {limit} seconds' if limit else 'without limit'}"
    )
    return EXIT_OK


def cmd_tokens_create(ctx: Context) -> int:
    body: dict[str, Any] = {"comment": ctx.args.comment}
    if ctx.args.user:
        body["user"] = ctx.args.user
    if ctx.args.lifetime_seconds is not None:
        body["lifetime_seconds"] = ctx.args.lifetime_seconds
    result = ctx.api.call("POST", TOKENS, body)
    if ctx.json_output:
        ctx.out(render.to_json(result))
    else:
        expiry = result.get("expiry_time", -1)
        until = f"expires {render.timestamp(expiry)}" if expiry and expiry > 0 else "never expires"
        ctx.note(f"Token {result['id']} for {result['user']} ({until}): shown once, stored only as a hash.")
        ctx.out(result["token"])
    return EXIT_OK


def cmd_tokens_list(ctx: Context) -> int:
    tokens = ctx.api.call("GET", TOKENS, params={"user": ctx.args.user} if ctx.args.user else None).get("tokens") or []
    if ctx.json_output:
        ctx.out(render.to_json(tokens))
    else:
        ctx.out(
            render.table(
                ["ID", "USER", "HINT", "COMMENT", "CREATED", "LAST USED", "EXPIRES", "REVOKED"],
                [
                    [
                        t["id"],
                        t["user"],
                        t["hint"] + "…",
                        t["comment"],
                        render.timestamp(t["created_at"]),
                        render.timestamp(t["last_used_at"]) if t["last_used_at"] else "-",
                        render.timestamp(t["expiry_time"]) if t.get("expiry_time", -1) > 0 else "never",
                        "yes" if t["revoked"] else "no",
                    ]
                    for t in tokens
                ],
            )
        )
    return EXIT_OK


def cmd_tokens_revoke(ctx: Context) -> int:
    ctx.api.call("DELETE", f"{TOKENS}/{ctx.args.token_id}")
    ctx.out(f"Token {ctx.args.token_id} revoked")
    return EXIT_OK


def _audit_params(ctx: Context) -> dict[str, str]:
    names = ("actor", "action", "object_type", "object_id", "object_name", "since", "until")
    return {n: getattr(ctx.args, n) for n in names if getattr(ctx.args, n)}


def cmd_audit_list(ctx: Context) -> int:
    events = ctx.api.call("GET", AUDIT, params={**_audit_params(ctx), "limit": str(ctx.args.limit)}).get("events") or []
    if ctx.json_output:
        ctx.out(render.to_json(events))
    else:
        ctx.out(
            render.table(
                ["AT", "ACTOR", "SOURCE", "ACTION", "OBJECT"],
                [
                    [
                        render.timestamp(e["at"]),
                        e["actor"] or "system",
                        e["source"],
                        e["action"],
                        f"{e['object_type']}:{e['object_name'] or e['object_id']}",
                    ]
                    for e in events
                ],
            )
        )
    return EXIT_OK


def cmd_audit_export(ctx: Context) -> int:
    ctx.out(ctx.api.text("GET", AUDIT, params={**_audit_params(ctx), "format": "jsonl"}).rstrip("\n"))
    return EXIT_OK


CRS = "/api/2.0/modelfleet/change-requests"


def _cr_summary(cr: dict[str, Any]) -> str:
    lines = [
        f"Change request #{cr['id']}: {cr['action']} {cr['endpoint_name']}"
        + (f" in workspace {cr['workspace']}" if cr.get("workspace") not in (None, "local") else "")
        + f" — {cr['status']}",
        f"  proposed by {cr['author']} at {render.timestamp(cr['created_at'])}",
    ]
    if cr.get("decided_by"):
        lines.append(f"  decided by {cr['decided_by']} at {render.timestamp(cr['decided_at'])}: {cr['comment'] or '-'}")
    if cr.get("error"):
        lines.append(f"  error: {cr['error']}")
    if cr.get("diff"):
        lines += ["", cr["diff"]]
    return "\n".join(lines)


def cmd_cr_list(ctx: Context) -> int:
    params = {"status": ctx.args.status.upper()} if ctx.args.status else None
    items = ctx.api.call("GET", CRS, params=params).get("change_requests") or []
    if ctx.json_output:
        ctx.out(render.to_json(items))
    else:
        ctx.out(
            render.table(
                ["ID", "ENDPOINT", "ACTION", "STATUS", "AUTHOR", "CREATED"],
                [
                    [
                        c["id"],
                        c["endpoint_name"],
                        c["action"],
                        c["status"],
                        c["author"],
                        render.timestamp(c["created_at"]),
                    ]
                    for c in items
                ],
            )
        )
    return EXIT_OK


def cmd_cr_show(ctx: Context) -> int:
    cr = ctx.api.call("GET", f"{CRS}/{ctx.args.request_id}")
    ctx.out(render.to_json(cr) if ctx.json_output else _cr_summary(cr))
    return EXIT_OK


def cmd_cr_propose(ctx: Context) -> int:
    action = ctx.args.action.replace("-", "_")
    body: dict[str, Any] | None = None
    if ctx.args.json:
        body = parse_json_object(ctx.args.json)
        if action == "update_config" and "config" in body and "served_entities" not in body:
            body = body["config"]
    elif action != "delete":
        raise CliError("--json is required to propose a create or a config update")
    request: dict[str, Any] = {"endpoint_name": ctx.args.endpoint_name, "action": action, "body": body}
    if ctx.args.workspace:
        request["workspace"] = ctx.args.workspace
    cr = ctx.api.call("POST", CRS, request)
    ctx.out(render.to_json(cr) if ctx.json_output else _cr_summary(cr))
    return EXIT_OK


def cmd_cr_approve(ctx: Context) -> int:
    cr = ctx.api.call("POST", f"{CRS}/{ctx.args.request_id}/approve", {"comment": ctx.args.comment})
    ctx.out(render.to_json(cr) if ctx.json_output else _cr_summary(cr))
    return EXIT_OK


def cmd_cr_reject(ctx: Context) -> int:
    cr = ctx.api.call("POST", f"{CRS}/{ctx.args.request_id}/reject", {"comment": ctx.args.comment})
    ctx.out(render.to_json(cr) if ctx.json_output else _cr_summary(cr))
    return EXIT_OK


GROUPS = "/api/2.0/modelfleet/groups"


def _group_line(group: dict[str, Any]) -> str:
    return f"{group['name']}: {', '.join(group['members']) or '(no members)'}"


def cmd_groups_list(ctx: Context) -> int:
    groups = ctx.api.call("GET", GROUPS).get("groups") or []
    ctx.out(render.to_json(groups) if ctx.json_output else "\n".join(_group_line(g) for g in groups))
    return EXIT_OK


def cmd_groups_create(ctx: Context) -> int:
    group = ctx.api.call("POST", GROUPS, {"name": ctx.args.name})
    ctx.out(render.to_json(group) if ctx.json_output else f"Created group {group['name']}")
    return EXIT_OK


def cmd_groups_add(ctx: Context) -> int:
    group = ctx.api.call("PUT", f"{GROUPS}/{ctx.args.group}/members/{ctx.args.username}")
    ctx.out(render.to_json(group) if ctx.json_output else _group_line(group))
    return EXIT_OK


def cmd_groups_remove(ctx: Context) -> int:
    group = ctx.api.call("DELETE", f"{GROUPS}/{ctx.args.group}/members/{ctx.args.username}")
    ctx.out(render.to_json(group) if ctx.json_output else _group_line(group))
    return EXIT_OK
