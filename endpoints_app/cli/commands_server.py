"""Server-side commands (``up``, ``runtime``, ``setup``): only dispatched from here.

Their code needs Django, so each handler imports it on call; the rest of the CLI stays Django-free.
They receive the parsed ``argparse.Namespace``.
"""

from __future__ import annotations

import argparse

from endpoints_app.cli.commands_common import Context


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "up",
        parents=[common],
        help="run Modelfleet on this machine (web, worker, runtime agent)",
        allow_abbrev=False,
    )
    p.add_argument("--no-setup", action="store_true", help="skip the first-run setup (migrations, admin, profile)")
    p.set_defaults(handler=cmd_up, leaf_parser=p)

    p = commands.add_parser(
        "runtime", parents=[common], help="run the runtime agent that hosts model servers", allow_abbrev=False
    )
    p.add_argument("--agent-id", help="id of this agent (default: derived from the host)")
    p.add_argument("--once", action="store_true", help="reconcile once and exit")
    p.set_defaults(handler=cmd_runtime, leaf_parser=p)

    p = commands.add_parser(
        "setup", parents=[common], help="prepare the database, admin user and DEFAULT profile", allow_abbrev=False
    )
    p.set_defaults(handler=cmd_setup, leaf_parser=p)


def cmd_up(ctx: Context) -> int:
    from endpoints_app.supervisor import main as up

    return up(ctx.args) or 0


def cmd_runtime(ctx: Context) -> int:
    from endpoints_app.runtime.agent_main import main as runtime_main

    return runtime_main(ctx.args) or 0


def cmd_setup(ctx: Context) -> int:
    from endpoints_app.setup import main as setup_main

    return setup_main(ctx.args) or 0
