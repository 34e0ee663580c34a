"""Entry point of the ``modelfleet`` command: argument parsing, global flags and error handling.

Global flags (``-p/--profile``, ``-o/--output``, ``--debug``) are accepted before or after the
subcommand. Exit codes: 0 success, 1 server or network error, 2 usage error.

Output formats: ``text`` (the default) prints what the Databricks CLI prints for the verbs it has
(JSON for serving endpoints and permissions) and tables for Modelfleet's own commands; ``json``
prints JSON everywhere; ``table`` prints tables and summaries everywhere, for people.
"""

from __future__ import annotations

import argparse
import os
import sys

from endpoints_app.cli import (
    commands_admin,
    commands_local,
    commands_models,
    commands_permissions,
    commands_rollouts,
    commands_secrets,
    commands_server,
    commands_service_principals,
    commands_serving,
    commands_workspaces,
)
from endpoints_app.cli.commands_common import Context
from endpoints_app.cli.errors import EXIT_ERROR, EXIT_USAGE, CliError
from endpoints_app.cli.version import version_line

ENV_OUTPUT = "MODELFLEET_OUTPUT_FORMAT"
DATABRICKS_ENV_OUTPUT = "DATABRICKS_OUTPUT_FORMAT"
OUTPUT_FORMATS = ("text", "json", "table")

EPILOG = """\
connection: --profile NAME (in ~/.modelfleetcfg, else ~/.databrickscfg), else $MODELFLEET_HOST and
$MODELFLEET_TOKEN, else the profile named by $MODELFLEET_CONFIG_PROFILE, else [DEFAULT] in
~/.modelfleetcfg ($MODELFLEET_CONFIG_FILE). `make run` writes that DEFAULT profile. With none of
these, the Databricks CLI's settings: $DATABRICKS_CONFIG_PROFILE, $DATABRICKS_HOST and
$DATABRICKS_TOKEN, ~/.databrickscfg ($DATABRICKS_CONFIG_FILE); personal access tokens only.

output: text (default; JSON where the Databricks CLI prints JSON), json, or table (tables and
summaries for people); -o, else $MODELFLEET_OUTPUT_FORMAT, else $DATABRICKS_OUTPUT_FORMAT.
"""


def _global_flags() -> argparse.ArgumentParser:
    """Flags every parser level accepts. SUPPRESS defaults let a later level leave an earlier value alone."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("global flags")
    group.add_argument(
        "-p", "--profile", default=argparse.SUPPRESS, help="profile in ~/.modelfleetcfg, else ~/.databrickscfg"
    )
    group.add_argument(
        "-o",
        "--output",
        choices=OUTPUT_FORMATS,
        default=argparse.SUPPRESS,
        help=f"output format: text, json or table (default text, or ${ENV_OUTPUT})",
    )
    group.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="print HTTP requests and responses to stderr"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _global_flags()
    parser = argparse.ArgumentParser(
        prog="modelfleet",
        parents=[common],
        description="Modelfleet command-line client (Databricks Model Serving compatible).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=version_line(), help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands_serving.register(commands, common)
    commands_permissions.register(commands, common)
    commands_models.register(commands, common)
    commands_admin.register(commands, common)
    commands_secrets.register(commands, common)
    commands_service_principals.register(commands, common)
    commands_workspaces.register(commands, common)
    commands_rollouts.register(commands, common)
    commands_server.register(commands, common)
    commands_local.register(commands, common)
    return parser


def bind_positionals(args: argparse.Namespace, extras: list[str]) -> None:
    """Give each declared positional its value, taking the endpoint name from ``--name`` if given.

    ``parse_known_args`` leaves positionals that follow a flag in ``extras`` (an argparse 3.11
    limitation with optional positionals), so they are appended here in command-line order.
    """
    leaf: argparse.ArgumentParser = args.leaf_parser
    unknown = [e for e in extras if e.startswith("-") and e != "-"]
    spec = getattr(args, "positional_spec", [])
    if unknown or (extras and not spec):
        leaf.error(f"unrecognized arguments: {' '.join(extras)}")
    values = [*getattr(args, "positionals", []), *extras]
    if getattr(args, "name_opt", None):
        values.insert(0, args.name_opt)
    if len(values) > len(spec):
        leaf.error(f"too many arguments: {' '.join(values[len(spec) :])}")
    for index, (dest, metavar, required) in enumerate(spec):
        value = values[index] if index < len(values) else None
        if value is None and required:
            how = " (as an argument or with --name)" if index == 0 else ""
            leaf.error(f"missing {metavar}{how}")
        setattr(args, dest, value)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(argv)
        bind_positionals(args, extras)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)

    output = getattr(args, "output", None)
    if output is None:
        source = next((name for name in (ENV_OUTPUT, DATABRICKS_ENV_OUTPUT) if os.environ.get(name)), None)
        output = os.environ[source].strip().lower() if source else "text"
        if output not in OUTPUT_FORMATS:
            sys.stderr.write(f"Error: invalid output format {output!r} in ${source} (use text, json or table)\n")
            return EXIT_USAGE
    # Server-side commands receive the Namespace: give it every global flag, set or not.
    args.output = output
    args.debug = getattr(args, "debug", False)
    args.profile = getattr(args, "profile", None)

    ctx = Context(args=args, output=output, debug=args.debug, root_parser=parser)
    try:
        return args.handler(ctx)
    except CliError as exc:
        ctx.stderr.write(f"Error: {exc.message}\n")
        if ctx.debug and exc.detail:
            ctx.stderr.write(f"{exc.detail}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        ctx.stderr.write("\n")
        return 130
    except BrokenPipeError:
        # `modelfleet … | head`: stop quietly, and keep Python from complaining at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
