"""Commands that answer without a server: ``version`` and ``completion SHELL``."""

from __future__ import annotations

import argparse

from endpoints_app.cli import completion, render
from endpoints_app.cli.commands_common import Context
from endpoints_app.cli.errors import EXIT_OK, CliError
from endpoints_app.cli.version import version_info, version_line


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "version",
        parents=[common],
        help="print the CLI's version (-o json: its parts)",
        description="Print the CLI's version, like `databricks version`.",
        allow_abbrev=False,
    )
    p.set_defaults(handler=cmd_version, leaf_parser=p)

    p = commands.add_parser(
        "completion",
        parents=[common],
        help="print a shell completion script (bash, zsh or fish)",
        description="Print a completion script for your shell. Load it with "
        "`source <(modelfleet completion bash)` (bash), `source <(modelfleet completion zsh)` (zsh, "
        "after compinit) or `modelfleet completion fish | source` (fish); save it in your shell's "
        "completion directory to load it in every shell.",
        allow_abbrev=False,
    )
    p.add_argument("shell", metavar="SHELL", choices=completion.SHELLS, help="bash, zsh or fish")
    p.set_defaults(handler=cmd_completion, leaf_parser=p)


def cmd_version(ctx: Context) -> int:
    ctx.out(render.to_json(version_info()) if ctx.json_output else version_line())
    return EXIT_OK


def cmd_completion(ctx: Context) -> int:
    if ctx.root_parser is None:
        raise CliError("completion needs the command's parser")
    ctx.stdout.write(completion.script(ctx.args.shell, ctx.root_parser))
    return EXIT_OK
