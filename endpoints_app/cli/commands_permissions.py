"""``modelfleet permissions VERB REQUEST_OBJECT_TYPE REQUEST_OBJECT_ID``: the Databricks permissions API.

The same verbs as ``databricks permissions`` (reference §2.11). Modelfleet keeps permissions on
serving endpoints only, so REQUEST_OBJECT_TYPE is ``serving-endpoints`` and REQUEST_OBJECT_ID an
endpoint's id (``modelfleet serving-endpoints get NAME | jq -r .id``); the server answers any other
type with its own error. Every verb prints the server's JSON answer.
"""

from __future__ import annotations

import argparse

from endpoints_app.cli import render
from endpoints_app.cli.commands_common import Context, Handler, parse_json_object, path_param
from endpoints_app.cli.errors import EXIT_OK

PERMISSIONS = "/api/2.0/permissions"
OBJECT_TYPES = ("serving-endpoints",)


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser(
        "permissions",
        parents=[common],
        help="read and change object permissions (Databricks `permissions` compatible)",
        description="Read and change who may view, query or manage an object. Objects are named by type "
        "(serving-endpoints) and id: `modelfleet serving-endpoints get NAME | jq -r .id` gives an endpoint's.",
        allow_abbrev=False,
    )
    verbs = group.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, handler, text, body in (
        ("get", cmd_get, "show an object's permissions", False),
        ("get-permission-levels", cmd_get_permission_levels, "list the permission levels an object has", False),
        ("set", cmd_set, "replace an object's direct permissions (an empty list removes them all)", True),
        ("update", cmd_update, "add or change an object's permissions", True),
    ):
        _verb(verbs, common, verb, handler, text, json_body=body)


def _verb(
    verbs: argparse._SubParsersAction,
    common: argparse.ArgumentParser,
    verb: str,
    handler: Handler,
    text: str,
    *,
    json_body: bool,
) -> None:
    parser = verbs.add_parser(
        verb,
        parents=[common],
        help=text,
        description=text,
        allow_abbrev=False,
        usage=f"%(prog)s REQUEST_OBJECT_TYPE REQUEST_OBJECT_ID{' --json JSON' if json_body else ''} [flags]",
    )
    parser.add_argument(
        "object_type", metavar="REQUEST_OBJECT_TYPE", choices=OBJECT_TYPES, help="the object's type: serving-endpoints"
    )
    parser.add_argument("object_id", metavar="REQUEST_OBJECT_ID", help="the object's id")
    if json_body:
        parser.add_argument(
            "--json",
            metavar="JSON",
            required=True,
            help='{"access_control_list": [{"user_name"|"group_name"|"service_principal_name": …, '
            '"permission_level": …}]}: inline or @file (a service principal by its application id)',
        )
    parser.set_defaults(handler=handler, leaf_parser=parser)


def _path(ctx: Context, suffix: str = "") -> str:
    return f"{PERMISSIONS}/{path_param(ctx.args.object_type)}/{path_param(ctx.args.object_id)}{suffix}"


def cmd_get(ctx: Context) -> int:
    ctx.out(render.to_json(ctx.api.call("GET", _path(ctx))))
    return EXIT_OK


def cmd_get_permission_levels(ctx: Context) -> int:
    ctx.out(render.to_json(ctx.api.call("GET", _path(ctx, "/permissionLevels"))))
    return EXIT_OK


def cmd_set(ctx: Context) -> int:
    ctx.out(render.to_json(ctx.api.call("PUT", _path(ctx), parse_json_object(ctx.args.json))))
    return EXIT_OK


def cmd_update(ctx: Context) -> int:
    ctx.out(render.to_json(ctx.api.call("PATCH", _path(ctx), parse_json_object(ctx.args.json))))
    return EXIT_OK
