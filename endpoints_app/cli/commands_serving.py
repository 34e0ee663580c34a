"""``modelfleet serving-endpoints VERB``: the Databricks CLI's serving-endpoints verbs (reference §6.2).

Every verb that takes an endpoint name accepts it positionally or as ``--name NAME`` (the seed docs
use ``--name``). ``create`` and ``update-config`` wait for the rollout unless ``--no-wait``.

Output is the Databricks CLI's: the verbs it has print the response as JSON in ``text`` mode too
(``list`` a JSON array), so ``… | jq`` scripts written for ``databricks`` work. ``-o table`` prints
Modelfleet's summaries and tables instead. ``get-status``, ``list-external-models`` and ``logs``
without a served model are Modelfleet's own and print text unless ``-o json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from typing import Any

from endpoints_app.cli import render
from endpoints_app.cli.commands_common import (
    Context,
    Handler,
    endpoint_path,
    endpoints_base,
    format_duration,
    parse_duration,
    parse_json_object,
    path_param,
)
from endpoints_app.cli.errors import EXIT_ERROR, EXIT_OK, CliError, UsageError

DEFAULT_TIMEOUT_S = 20 * 60.0
POLL_FIRST_DELAY_S = 1.0
POLL_MAX_DELAY_S = 5.0
POLL_GROWTH = 1.5
_SPINNER_FRAMES = "|/-\\"


# -- argument wiring --------------------------------------------------------------------------


def add_verb(
    verbs: argparse._SubParsersAction,
    common: argparse.ArgumentParser,
    verb: str,
    handler: Handler,
    help_text: str,
    positionals: list[tuple[str, str, bool]],
    *,
    aliases: tuple[str, ...] = (),
) -> argparse.ArgumentParser:
    """Add a verb whose positionals are ``(dest, METAVAR, required)``; the first may be ``--name``.

    The positionals are collected into ``args.positionals`` and bound by ``main.bind_positionals``
    after parsing, because argparse (3.11) cannot interleave optional positionals with flags.
    """
    usage = " ".join(meta if required else f"[{meta}]" for _, meta, required in positionals)
    parser = verbs.add_parser(
        verb,
        aliases=list(aliases),
        parents=[common],
        help=help_text,
        description=help_text,
        allow_abbrev=False,
        usage=f"%(prog)s {usage + ' ' if usage else ''}[flags]",
    )
    parser.set_defaults(handler=handler, positional_spec=positionals, leaf_parser=parser)
    if positionals:
        parser.add_argument("positionals", nargs="*", help=argparse.SUPPRESS)
        first_meta = positionals[0][1]
        parser.add_argument(
            "--name", dest="name_opt", metavar=first_meta, help=f"{first_meta} (instead of the argument)"
        )
    return parser


def _add_wait_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-wait", action="store_true", help="do not wait for the config update to finish")
    parser.add_argument(
        "--timeout",
        type=parse_duration,
        default=DEFAULT_TIMEOUT_S,
        metavar="DURATION",
        help="how long to wait for the config update, e.g. 20m0s, 90s, 1h (default 20m0s)",
    )


def _add_workspace_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workspace",
        metavar="NAME",
        help="an endpoint of this remote workspace, changed through this installation's approval policies and audit",
    )


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser(
        "serving-endpoints",
        parents=[common],
        help="create, update, query and inspect serving endpoints",
        description="Manage serving endpoints (Databricks `serving-endpoints` compatible).",
        allow_abbrev=False,
    )
    verbs = group.add_subparsers(dest="verb", metavar="VERB", required=True)
    name = [("name", "NAME", True)]

    p = add_verb(verbs, common, "list", cmd_list, "list serving endpoints", [])
    p.add_argument("--limit", type=int, default=0, help="show at most N endpoints (0 = all)")

    add_verb(verbs, common, "get", cmd_get, "show one endpoint", name)
    add_verb(verbs, common, "get-status", cmd_get_status, "show the endpoint's and its served entities' state", name)

    p = add_verb(verbs, common, "create", cmd_create, "create an endpoint", [("name", "NAME", False)])
    p.add_argument("--json", metavar="JSON", help="request body: inline JSON or @path/to/file.json")
    p.add_argument("--description", help="endpoint description")
    p.add_argument("--route-optimized", action="store_true", default=None, help="create a route-optimized endpoint")
    p.add_argument("--budget-policy-id", metavar="ID", help="budget policy to attach")
    _add_wait_flags(p)
    _add_workspace_flag(p)

    p = add_verb(verbs, common, "update-config", cmd_update_config, "roll out a new config", [("name", "NAME", False)])
    p.add_argument("--json", metavar="JSON", required=True, help="new config: inline JSON or @path/to/file.json")
    _add_wait_flags(p)
    _add_workspace_flag(p)

    _add_workspace_flag(add_verb(verbs, common, "delete", cmd_delete, "delete an endpoint", name))

    eid = [("name", "SERVING_ENDPOINT_ID", True)]
    add_verb(
        verbs, common, "get-permissions", cmd_get_permissions, "show an endpoint's permissions (by endpoint id)", eid
    )
    add_verb(verbs, common, "get-permission-levels", cmd_get_permission_levels, "list the permission levels", eid)
    for verb, handler, text in (
        ("set-permissions", cmd_set_permissions, "replace an endpoint's direct permissions"),
        ("update-permissions", cmd_update_permissions, "add or change an endpoint's permissions"),
    ):
        p = add_verb(verbs, common, verb, handler, text, eid)
        p.add_argument("--json", metavar="JSON", required=True, help='{"access_control_list": [...]}: inline or @file')

    p = add_verb(verbs, common, "query", cmd_query, "send a request to the endpoint's model", name)
    p.add_argument("--json", metavar="JSON", help="request body: inline JSON or @path/to/file.json")
    p.add_argument("--client-request-id", metavar="ID", help="id logged with the request")
    p.add_argument("--max-tokens", type=int, metavar="N", help="maximum tokens to generate")
    p.add_argument("--n", type=int, metavar="N", help="number of completions")
    p.add_argument("--stream", action="store_true", default=None, help="ask for a streamed answer")
    p.add_argument("--temperature", type=float, metavar="T", help="sampling temperature (0.0-2.0)")

    add_verb(
        verbs,
        common,
        "logs",
        cmd_logs,
        "show a served model's logs (all served models when none is named)",
        [*name, ("served_model_name", "SERVED_MODEL_NAME", False)],
    )
    add_verb(
        verbs,
        common,
        "build-logs",
        cmd_build_logs,
        "show a served model's build logs",
        [*name, ("served_model_name", "SERVED_MODEL_NAME", True)],
    )

    p = add_verb(verbs, common, "patch", cmd_patch, "add or delete endpoint tags", name)
    p.add_argument("--json", metavar="JSON", required=True, help='{"add_tags":[{"key","value"}],"delete_tags":["key"]}')
    _add_workspace_flag(p)

    p = add_verb(
        verbs,
        common,
        "put-ai-gateway",
        cmd_put_ai_gateway,
        "set the AI-gateway settings (an empty object unsets)",
        name,
    )
    p.add_argument(
        "--json",
        metavar="JSON",
        required=True,
        help='{"rate_limits":[…],"guardrails":{…},"usage_tracking_config":{…},"fallback_config":{…},…} or @file',
    )
    _add_workspace_flag(p)

    add_verb(verbs, common, "get-open-api", cmd_get_open_api, "print the endpoint's OpenAPI document", name)
    add_verb(
        verbs,
        common,
        "export-metrics",
        cmd_export_metrics,
        "print the endpoint's metrics (Prometheus text)",
        name,
        aliases=("get-metrics",),
    )
    add_verb(
        verbs,
        common,
        "list-external-models",
        cmd_list_external_models,
        "list the endpoints that serve external models, with provider, model and task",
        [],
    )

    for verb, handler, text, example in (
        ("put", cmd_put, "replace the endpoint's rate limits (legacy; kept as AI-gateway rate limits)",
         '{"rate_limits": [{"calls": 100, "key": "user", "renewal_period": "minute"}]}'),
        ("update-notifications", cmd_update_notifications, "set who is emailed when a config update ends",
         '{"email_notifications": {"on_update_failure": ["ops@example.com"], "on_update_success": []}}'),
        ("patch-telemetry-config", cmd_patch_telemetry_config, "set or remove the endpoint's telemetry config",
         '{"telemetry_config": {…}} ({} removes it)'),
    ):  # fmt: skip
        p = add_verb(verbs, common, verb, handler, text, name)
        p.add_argument("--json", metavar="JSON", required=True, help=f"{example}: inline or @file")

    # Databricks' verbs for what Modelfleet does not serve: the server answers each with a 400
    # saying so, which reads better than "invalid choice" in a script written for `databricks`.
    p = add_verb(
        verbs,
        common,
        "create-provisioned-throughput-endpoint",
        cmd_create_provisioned_throughput,
        "provisioned throughput: not supported by Modelfleet (the server says why)",
        [],
    )
    p.add_argument("--json", metavar="JSON", required=True, help="request body: inline JSON or @file")
    p.add_argument("--budget-policy-id", metavar="ID", help="budget policy to attach")
    _add_wait_flags(p)
    p = add_verb(
        verbs,
        common,
        "update-provisioned-throughput-endpoint-config",
        cmd_update_provisioned_throughput,
        "provisioned throughput: not supported by Modelfleet (the server says why)",
        name,
    )
    p.add_argument("--json", metavar="JSON", required=True, help="request body: inline JSON or @file")
    _add_wait_flags(p)
    # Hidden, as in the Databricks CLI (no help= keeps it out of the verb list).
    p = verbs.add_parser("http-request", parents=[common], allow_abbrev=False)
    p.set_defaults(
        handler=cmd_http_request,
        leaf_parser=p,
        positional_spec=[
            ("connection_name", "CONNECTION_NAME", True),
            ("method", "METHOD", True),
            ("path", "PATH", True),
        ],
    )
    p.add_argument("positionals", nargs="*", help=argparse.SUPPRESS)
    p.add_argument("--headers", metavar="JSON", help="request headers as a JSON object")
    p.add_argument("--json", metavar="JSON", help="the request's payload")
    p.add_argument("--params", metavar="JSON", help="query parameters as a JSON object")
    p.add_argument("--sub-domain", metavar="SUB_DOMAIN", help="sub-domain of the connection's host")


# -- helpers ----------------------------------------------------------------------------------


def _print_endpoint(ctx: Context, endpoint: dict[str, Any]) -> None:
    ctx.out(render.endpoint_summary(endpoint) if ctx.table_output else render.to_json(endpoint))


def _print_raw(ctx: Context, text: str) -> None:
    ctx.stdout.write(text if not text or text.endswith("\n") else text + "\n")


def _failure_message(endpoint: dict[str, Any]) -> str:
    """Why an update failed: the endpoint's message, else the failing served entities' messages."""
    state = endpoint.get("state") or {}
    if state.get("config_update_message"):
        return str(state["config_update_message"])
    entities = render.served_entities(endpoint.get("pending_config"))
    failed = [e for e in entities if (e.get("state") or {}).get("deployment") == "DEPLOYMENT_FAILED"]
    messages = [
        f"{e.get('name')}: {e['state']['deployment_state_message']}"
        for e in failed or entities
        if (e.get("state") or {}).get("deployment_state_message")
    ]
    if messages:
        return "; ".join(messages)
    return f"config update ended in {state.get('config_update')}"


class _StatusLine:
    """Progress on stderr: a spinner redrawn in place on a terminal, else one line per change."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.tty = ctx.stderr.isatty()
        self.text = ""
        self.frames = itertools.cycle(_SPINNER_FRAMES)

    def update(self, text: str) -> None:
        if self.tty:
            self.text = text
            self._draw()
        elif text != self.text:
            self.text = text
            self.ctx.note(text)

    def sleep(self, seconds: float) -> None:
        if not self.tty:
            time.sleep(seconds)
            return
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(0.1, left))
            self._draw()

    def close(self) -> None:
        if self.tty and self.text:
            self.ctx.stderr.write("\r\x1b[K")
            self.ctx.stderr.flush()

    def _draw(self) -> None:
        self.ctx.stderr.write(f"\r\x1b[K{next(self.frames)} {self.text}")
        self.ctx.stderr.flush()


def wait_until_not_updating(ctx: Context, name: str, timeout: float) -> dict[str, Any]:
    """Poll the endpoint until its config update settles; return it, or raise on failure/timeout.

    Like the SDK waiter (§5.4) only ``state.config_update`` counts: ``NOT_UPDATING`` is success even
    if the endpoint is not READY. The first poll is immediate, then every 1 s growing to 5 s.
    """
    deadline = time.monotonic() + timeout
    delay = POLL_FIRST_DELAY_S
    status = _StatusLine(ctx)
    try:
        while True:
            endpoint = ctx.api.call("GET", endpoint_path(name))
            config_update = (endpoint.get("state") or {}).get("config_update")
            if config_update == "NOT_UPDATING":
                return endpoint
            if config_update in ("UPDATE_FAILED", "UPDATE_CANCELED"):
                raise CliError(f"update failed: {_failure_message(endpoint)}")
            deploying = render.deploying_summary(endpoint)
            status.update(f"current status: {config_update}" + (f" (deploying: {deploying})" if deploying else ""))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CliError(f"timed out after {format_duration(timeout)} waiting for {name}")
            status.sleep(min(delay, remaining))
            delay = min(delay * POLL_GROWTH, POLL_MAX_DELAY_S)
    finally:
        status.close()


# -- handlers ---------------------------------------------------------------------------------


def cmd_list(ctx: Context) -> int:
    endpoints = ctx.api.call("GET", "/api/2.0/serving-endpoints").get("endpoints") or []
    if ctx.args.limit > 0:
        endpoints = endpoints[: ctx.args.limit]
    ctx.out(render.endpoint_table(endpoints) if ctx.table_output else render.to_json(endpoints))
    return EXIT_OK


def cmd_get(ctx: Context) -> int:
    _print_endpoint(ctx, ctx.api.call("GET", endpoint_path(ctx.args.name)))
    return EXIT_OK


def cmd_get_status(ctx: Context) -> int:
    status = render.endpoint_status(ctx.api.call("GET", endpoint_path(ctx.args.name)))
    ctx.out(render.to_json(status) if ctx.json_output else render.status_text(status))
    return EXIT_OK


def create_body(args: argparse.Namespace) -> dict[str, Any]:
    """The create request: ``--json`` (whose ``name`` must agree with NAME/--name), then the flags."""
    if args.json is not None:
        body = parse_json_object(args.json)
        json_name = body.get("name")
        if args.name and json_name and args.name != json_name:
            raise UsageError(f'endpoint name {args.name!r} differs from "name" in --json ({json_name!r})')
        if args.name:
            body["name"] = args.name
        if not body.get("name"):
            raise UsageError('missing endpoint name: put "name" in --json or give NAME')
    else:
        if not args.name:
            raise UsageError("missing endpoint name: give NAME (or --name), or a request body with --json")
        body = {"name": args.name}
    if args.description is not None:
        body["description"] = args.description
    if args.route_optimized:
        body["route_optimized"] = True
    if args.budget_policy_id is not None:
        body["budget_policy_id"] = args.budget_policy_id
    return body


def cmd_create(ctx: Context) -> int:
    body = create_body(ctx.args)
    endpoint = ctx.api.call("POST", endpoints_base(ctx.args.workspace), body)
    if not ctx.args.no_wait and not ctx.args.workspace:  # a remote's state arrives with the next poll
        endpoint = wait_until_not_updating(ctx, endpoint.get("name") or body["name"], ctx.args.timeout)
    _print_endpoint(ctx, endpoint)
    return EXIT_OK


def update_config_body(name: str | None, raw_json: str) -> tuple[str, dict[str, Any], list[str]]:
    """Return ``(endpoint name, PUT body, ignored top-level keys)`` for update-config.

    The body is an ``EndpointCoreConfigInput`` without ``name`` (§2.2). A whole create document
    (``{"name": …, "config": {…}}``) is accepted too: its ``config`` is sent.
    """
    data = parse_json_object(raw_json)
    ignored: list[str] = []
    names = []
    if isinstance(data.get("config"), dict):
        names.append(data.get("name"))
        ignored = sorted(k for k in data if k not in ("name", "config"))
        data = dict(data["config"])
    names.append(data.pop("name", None))
    names = [n for n in names if n]
    for other in names:
        if name and other != name:
            raise UsageError(f"endpoint name {name!r} differs from the name in --json ({other!r})")
        if not name:
            name = other
    if not name:
        raise UsageError('missing endpoint name: give NAME (or --name), or "name" in --json')
    return name, data, ignored


def cmd_update_config(ctx: Context) -> int:
    name, body, ignored = update_config_body(ctx.args.name, ctx.args.json)
    if ignored:
        ctx.note(f'note: update-config only sends "config"; ignoring {", ".join(ignored)} from --json')
    endpoint = ctx.api.call("PUT", endpoint_path(name, "config", workspace=ctx.args.workspace), body)
    if not ctx.args.no_wait and not ctx.args.workspace:
        endpoint = wait_until_not_updating(ctx, endpoint.get("name") or name, ctx.args.timeout)
    _print_endpoint(ctx, endpoint)
    return EXIT_OK


def cmd_delete(ctx: Context) -> int:
    ctx.api.call("DELETE", endpoint_path(ctx.args.name, workspace=ctx.args.workspace))
    return EXIT_OK


def query_body(args: argparse.Namespace) -> dict[str, Any]:
    body = parse_json_object(args.json) if args.json is not None else {}
    flags = {
        "client_request_id": args.client_request_id,
        "max_tokens": args.max_tokens,
        "n": args.n,
        "stream": args.stream,
        "temperature": args.temperature,
    }
    body.update({key: value for key, value in flags.items() if value is not None})
    return body


def cmd_query(ctx: Context) -> int:
    path = f"/serving-endpoints/{path_param(ctx.args.name)}/invocations"
    response = ctx.api.request(
        "POST",
        path,
        data=json.dumps(query_body(ctx.args)).encode("utf-8"),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    if "json" in response.headers.get("Content-Type", "application/json"):
        try:
            ctx.out(render.to_json(response.json() if response.content else {}))
            return EXIT_OK
        except ValueError:
            pass
    _print_raw(ctx, response.text)  # e.g. a text/event-stream answer to --stream
    return EXIT_OK


def _logs_of(ctx: Context, name: str, served: str, kind: str) -> str:
    return str(ctx.api.call("GET", endpoint_path(name, "served-models", path_param(served), kind)).get("logs") or "")


def cmd_logs(ctx: Context) -> int:
    name, served = ctx.args.name, ctx.args.served_model_name
    if served:
        _print_logs(ctx, _logs_of(ctx, name, served, "logs"))
        return EXIT_OK

    endpoint = ctx.api.call("GET", endpoint_path(name))
    served_names = list(
        dict.fromkeys(
            e["name"]
            for e in render.served_entities(endpoint.get("config"))
            + render.served_entities(endpoint.get("pending_config"))
            if e.get("name")
        )
    )
    if not served_names:
        raise CliError(f"endpoint {name!r} has no served models")
    results: list[dict[str, str]] = []
    exit_code = EXIT_OK
    for served_name in served_names:
        try:
            results.append({"served_model_name": served_name, "logs": _logs_of(ctx, name, served_name, "logs")})
        except CliError as exc:
            exit_code = EXIT_ERROR
            results.append({"served_model_name": served_name, "error": exc.message})
    if ctx.json_output:
        ctx.out(render.to_json(results))
        return exit_code
    for index, result in enumerate(results):
        ctx.stdout.write(("\n" if index else "") + f"==> {result['served_model_name']} <==\n")
        if "error" in result:
            ctx.stderr.write(f"Error: {result['error']}\n")
        else:
            _print_raw(ctx, result["logs"])
    return exit_code


def _print_logs(ctx: Context, logs: str) -> None:
    """One served model's logs: ``{"logs": …}`` as the Databricks CLI prints them, raw with ``-o table``."""
    if ctx.table_output:
        _print_raw(ctx, logs)
    else:
        ctx.out(render.to_json({"logs": logs}))


def cmd_build_logs(ctx: Context) -> int:
    _print_logs(ctx, _logs_of(ctx, ctx.args.name, ctx.args.served_model_name, "build-logs"))
    return EXIT_OK


def cmd_patch(ctx: Context) -> int:
    body = parse_json_object(ctx.args.json)
    result = ctx.api.call("PATCH", endpoint_path(ctx.args.name, "tags", workspace=ctx.args.workspace), body)
    ctx.out(render.tags_table(result.get("tags") or []) if ctx.table_output else render.to_json(result))
    return EXIT_OK


def cmd_put_ai_gateway(ctx: Context) -> int:
    body = parse_json_object(ctx.args.json)
    result = ctx.api.call("PUT", endpoint_path(ctx.args.name, "ai-gateway", workspace=ctx.args.workspace), body)
    ctx.out(render.to_json(result))
    return EXIT_OK


def cmd_get_open_api(ctx: Context) -> int:
    _print_raw(ctx, ctx.api.text("GET", endpoint_path(ctx.args.name, "openapi")))
    return EXIT_OK


def cmd_export_metrics(ctx: Context) -> int:
    if ctx.json_output:
        raise CliError("json output not supported: metrics are Prometheus text, use -o text")
    _print_raw(ctx, ctx.api.text("GET", endpoint_path(ctx.args.name, "metrics")))
    return EXIT_OK


def cmd_list_external_models(ctx: Context) -> int:
    """One row per external model served by an endpoint the caller can see (from ``list``; Databricks
    has no API of its own for this, reference §1)."""
    rows = []
    for endpoint in ctx.api.call("GET", "/api/2.0/serving-endpoints").get("endpoints") or []:
        for entity in render.served_entities(endpoint.get("config")):
            external = entity.get("external_model")
            if external:
                rows.append(
                    {
                        "endpoint": endpoint.get("name"),
                        "served_model_name": entity.get("name"),
                        "provider": external.get("provider"),
                        "model": external.get("name"),
                        "task": external.get("task") or endpoint.get("task"),
                    }
                )
    if ctx.json_output:
        ctx.out(render.to_json(rows))
    else:
        headers = ["ENDPOINT", "SERVED MODEL", "PROVIDER", "MODEL", "TASK"]
        keys = ["endpoint", "served_model_name", "provider", "model", "task"]
        ctx.out(render.table(headers, [[r[k] for k in keys] for r in rows]))
    return EXIT_OK


def cmd_put(ctx: Context) -> int:
    body = parse_json_object(ctx.args.json)
    ctx.out(render.to_json(ctx.api.call("PUT", endpoint_path(ctx.args.name, "rate-limits"), body)))
    return EXIT_OK


def cmd_update_notifications(ctx: Context) -> int:
    body = parse_json_object(ctx.args.json)
    ctx.out(render.to_json(ctx.api.call("PATCH", endpoint_path(ctx.args.name, "notifications"), body)))
    return EXIT_OK


def cmd_patch_telemetry_config(ctx: Context) -> int:
    body = parse_json_object(ctx.args.json)
    _print_endpoint(ctx, ctx.api.call("PATCH", endpoint_path(ctx.args.name, "telemetry-config"), body))
    return EXIT_OK


def cmd_create_provisioned_throughput(ctx: Context) -> int:
    body = parse_json_object(ctx.args.json)
    if ctx.args.budget_policy_id is not None:
        body["budget_policy_id"] = ctx.args.budget_policy_id
    endpoint = ctx.api.call("POST", "/api/2.0/serving-endpoints/pt", body)
    if not ctx.args.no_wait:
        endpoint = wait_until_not_updating(ctx, endpoint.get("name") or str(body.get("name")), ctx.args.timeout)
    _print_endpoint(ctx, endpoint)
    return EXIT_OK


def cmd_update_provisioned_throughput(ctx: Context) -> int:
    body = parse_json_object(ctx.args.json)
    endpoint = ctx.api.call("PUT", f"/api/2.0/serving-endpoints/pt/{path_param(ctx.args.name)}/config", body)
    if not ctx.args.no_wait:
        endpoint = wait_until_not_updating(ctx, endpoint.get("name") or ctx.args.name, ctx.args.timeout)
    _print_endpoint(ctx, endpoint)
    return EXIT_OK


def cmd_http_request(ctx: Context) -> int:
    args = ctx.args
    body: dict[str, Any] = {"connection_name": args.connection_name, "method": args.method.upper(), "path": args.path}
    for key, raw in (("headers", args.headers), ("params", args.params)):
        if raw is not None:
            body[key] = json.dumps(parse_json_object(raw))
    if args.json is not None:
        body["json"] = args.json
    if args.sub_domain is not None:
        body["sub_domain"] = args.sub_domain
    response = ctx.api.request(
        "POST",
        "/api/2.0/external-function",
        data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json", "Accept": "text/plain"},
    )
    _print_raw(ctx, response.text)
    return EXIT_OK


def _permissions_path(endpoint_id: str, suffix: str = "") -> str:
    return f"/api/2.0/permissions/serving-endpoints/{path_param(endpoint_id)}{suffix}"


def cmd_get_permissions(ctx: Context) -> int:
    ctx.out(render.to_json(ctx.api.call("GET", _permissions_path(ctx.args.name))))
    return EXIT_OK


def cmd_get_permission_levels(ctx: Context) -> int:
    ctx.out(render.to_json(ctx.api.call("GET", _permissions_path(ctx.args.name, "/permissionLevels"))))
    return EXIT_OK


def cmd_set_permissions(ctx: Context) -> int:
    body = parse_json_object(ctx.args.json)
    ctx.out(render.to_json(ctx.api.call("PUT", _permissions_path(ctx.args.name), body)))
    return EXIT_OK


def cmd_update_permissions(ctx: Context) -> int:
    body = parse_json_object(ctx.args.json)
    ctx.out(render.to_json(ctx.api.call("PATCH", _permissions_path(ctx.args.name), body)))
    return EXIT_OK
