"""``modelfleet rollouts …``: rollout plans, a new version moved onto an endpoint step by step
while its metrics stay as good as the current version's, rolled back by the platform when not.

``start NAME`` takes the plan as ``--json @plan.json`` (``served_entity`` or ``config``, ``steps``,
``bake_seconds``, ``gates``) or from flags (``--entity-name`` and ``--entity-version`` for one new
served entity; ``--steps 5,25,50,100``, ``--bake-seconds``, and one flag per gate); flags given
with ``--json`` override its fields. On an endpoint an approval policy covers, the plan waits for
an approver (its change request is printed). ``status NAME [PLAN]`` shows one plan with its step,
share and gate readings, or lists the endpoint's plans; ``pause``, ``resume``, ``abort``,
``promote`` (the new version takes all traffic now) and ``close`` (after a rollback or abort: the
new version leaves the endpoint) act on one plan, by default the endpoint's open one.
"""

from __future__ import annotations

import argparse
from typing import Any

from endpoints_app.cli import render
from endpoints_app.cli.commands_common import Context, parse_json_object, path_param, simple_verb
from endpoints_app.cli.errors import EXIT_OK, CliError, UsageError

GATE_FLAGS = (
    ("--min-requests", "min_requests", int, "requests the new version needs before a gate may pass"),
    ("--max-4xx-increase", "max_4xx_rate_increase", float, "largest 4xx rate increase over the current version (0-1)"),
    ("--max-5xx-increase", "max_5xx_rate_increase", float, "largest 5xx rate increase over the current version (0-1)"),
    ("--max-p99-ratio", "max_p99_latency_ratio", float, "largest p99 latency ratio new / current"),
    ("--p99-floor-ms", "p99_latency_floor_ms", float, "p99 latencies below this count as this (noise)"),
)
ACTIONS = (
    ("pause", "pause a running plan (traffic stays where it is)"),
    ("resume", "resume a paused plan (its current step is applied again)"),
    ("abort", "abort a plan: all traffic back on the previous version"),
    ("promote", "promote now: the new version takes all traffic"),
    ("close", "close a rolled-back, aborted or failed plan: the new version leaves the endpoint"),
)


def rollouts_path(name: str, *rest: str) -> str:
    return "/".join(["/api/2.0/modelfleet/serving-endpoints", path_param(name), "rollouts", *rest])


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser(
        "rollouts",
        parents=[common],
        help="metric-gated rollout plans of an endpoint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    verbs = group.add_subparsers(dest="verb", metavar="VERB", required=True)
    p = simple_verb(verbs, common, "start", cmd_start, "start a rollout plan (or propose it where approval is needed)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", metavar="JSON", help="the plan: inline JSON or @file.json")
    p.add_argument("--entity-name", metavar="MODEL", help="the new version's registered model")
    p.add_argument("--entity-version", metavar="VERSION", help="the new version's model version")
    p.add_argument("--served-entity-name", metavar="NAME", help="the new served entity's name (default: model-version)")
    p.add_argument("--workload-size", default="Small", help="the new served entity's workload size (default Small)")
    p.add_argument("--steps", metavar="P,P,…", help="traffic shares, increasing, ending at 100 (default 5,25,50,100)")
    p.add_argument(
        "--bake-seconds", type=int, metavar="N", help="how long each step runs before the next (default 300)"
    )
    for flag, _, kind, text in GATE_FLAGS:
        p.add_argument(flag, type=kind, help=text)
    p = simple_verb(verbs, common, "status", cmd_status, "show a plan's step, share and gate readings, or list plans")
    p.add_argument("name", metavar="NAME")
    p.add_argument("plan_id", metavar="PLAN", type=int, nargs="?")
    for verb, text in ACTIONS:
        p = simple_verb(verbs, common, verb, cmd_action, text)
        p.add_argument("name", metavar="NAME")
        p.add_argument("plan_id", metavar="PLAN", type=int, nargs="?", help="default: the endpoint's open plan")


def _steps(value: str) -> list[int]:
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise UsageError(
            f"--steps must be whole percentages separated by commas, e.g. 5,25,50,100; got {value!r}"
        ) from None


def plan_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = parse_json_object(args.json) if args.json else {}
    if args.entity_name or args.entity_version:
        if not (args.entity_name and args.entity_version):
            raise UsageError("give both --entity-name and --entity-version")
        entity: dict[str, Any] = {
            "entity_name": args.entity_name,
            "entity_version": args.entity_version,
            "workload_size": args.workload_size,
        }
        if args.served_entity_name:
            entity["name"] = args.served_entity_name
        body["served_entity"] = entity
    if "served_entity" not in body and "config" not in body:
        raise UsageError(
            "name the new version: --entity-name and --entity-version, or --json with served_entity/config"
        )
    if args.steps:
        body["steps"] = _steps(args.steps)
    if args.bake_seconds is not None:
        body["bake_seconds"] = args.bake_seconds
    gates = dict(body.get("gates") or {})
    for flag, key, _, _ in GATE_FLAGS:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            gates[key] = value
    if gates:
        body["gates"] = gates
    return body


def _share(plan: dict[str, Any]) -> str:
    steps = plan.get("steps") or []
    step = plan.get("current_step", -1)
    where = f"step {step + 1}/{len(steps)}" if step >= 0 else "not started"
    return f"{plan.get('current_share', 0)} % ({where})"


def _gates(plan: dict[str, Any]) -> list[list[str]]:
    readings = plan.get("readings") or {}
    rows = []
    for gate in readings.get("gates") or []:
        rows.append([gate["gate"], str(gate.get("value")), str(gate.get("limit")), gate.get("status", "")])
    return rows


def show(ctx: Context, plan: dict[str, Any], done: str = "") -> None:
    if ctx.json_output:
        ctx.out(render.to_json(plan))
        return
    if done:
        ctx.note(done)
    readings = plan.get("readings") or {}
    new, current = readings.get("new_version") or {}, readings.get("current_version") or {}
    rows = [
        ["plan", str(plan["id"])],
        ["endpoint", plan["endpoint_name"]],
        ["state", plan["state"]],
        ["new version", ", ".join(plan.get("new_served_entities") or [])],
        ["share", _share(plan)],
        ["steps", ", ".join(f"{s}%" for s in plan.get("steps") or [])],
        ["bake", f"{plan.get('bake_seconds')} s per step"],
        ["author", plan.get("author") or ""],
        ["change request", str(plan.get("change_request_id") or "")],
        ["reason", plan.get("reason") or ""],
    ]
    if readings:
        rows.append(["window", f"{readings.get('elapsed_seconds')} s, gates {readings.get('status')}"])
        rows.append(["new version", _side(new)])
        rows.append(["current version", _side(current)])
    ctx.out(render.table(["FIELD", "VALUE"], rows))
    gates = _gates(plan)
    if gates:
        ctx.out("")
        ctx.out(render.table(["GATE", "VALUE", "LIMIT", "STATUS"], gates))


def _side(side: dict[str, Any]) -> str:
    return (
        f"{side.get('requests', 0)} requests, 4xx {side.get('rate_4xx', 0)}, 5xx {side.get('rate_5xx', 0)}, "
        f"p99 {side.get('p99_ms')} ms"
    )


def cmd_start(ctx: Context) -> int:
    plan = ctx.api.call("POST", rollouts_path(ctx.args.name), plan_body(ctx.args))
    if plan["state"] == "PENDING_APPROVAL":
        done = (
            f"Rollout plan {plan['id']} waits for approval: change request {plan['change_request_id']} "
            f"(modelfleet change-requests approve {plan['change_request_id']})"
        )
    else:
        done = f"Rollout plan {plan['id']} started: {_share(plan)}"
    show(ctx, plan, done)
    return EXIT_OK


def cmd_status(ctx: Context) -> int:
    if ctx.args.plan_id is not None:
        show(ctx, ctx.api.call("GET", rollouts_path(ctx.args.name, str(ctx.args.plan_id))))
        return EXIT_OK
    plans = ctx.api.call("GET", rollouts_path(ctx.args.name)).get("rollouts") or []
    if ctx.json_output:
        ctx.out(render.to_json(plans))
        return EXIT_OK
    rows = [
        [
            str(p["id"]),
            p["state"],
            ", ".join(p.get("new_served_entities") or []),
            _share(p),
            (p.get("readings") or {}).get("status", ""),
            render.timestamp(p.get("created_at")),
            p.get("reason") or "",
        ]
        for p in plans
    ]
    ctx.out(render.table(["PLAN", "STATE", "NEW VERSION", "SHARE", "GATES", "CREATED", "REASON"], rows))
    return EXIT_OK


def _open_plan(ctx: Context) -> int:
    plans = ctx.api.call("GET", rollouts_path(ctx.args.name)).get("rollouts") or []
    for plan in plans:
        if plan.get("open"):
            return int(plan["id"])
    raise CliError(f"Endpoint {ctx.args.name} has no open rollout plan; name one (modelfleet rollouts status NAME)")


def cmd_action(ctx: Context) -> int:
    verb = ctx.args.verb
    plan_id = ctx.args.plan_id if ctx.args.plan_id is not None else _open_plan(ctx)
    plan = ctx.api.call("POST", rollouts_path(ctx.args.name, str(plan_id), verb))
    show(ctx, plan, f"Rollout plan {plan['id']}: {plan['state']}")
    return EXIT_OK
