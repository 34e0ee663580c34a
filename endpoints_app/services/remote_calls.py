"""The write calls a change to a remote workspace's endpoint makes, with the databricks-sdk.

Both the proposal (``services.proposals``: the remote's current ``config_version``, the base a
proposal rests on) and the apply (``services.remote_changes``) go through here, so every call
to a remote is the SDK's own (``remote.client.workspace_client``: the personal access token only,
the egress policy at every connection, no redirects, bounded answers and short timeouts), and
every failure becomes one ``RemoteCallFailed`` whose message a person can act on, with the token
masked. Nothing here writes to the database: callers record the outcome in a short transaction
after the call (no remote I/O inside ``atomic()``).

What a call sent and what came back (``Exchange``) is what the audit row records: the request
body as given (a remote change never carries plaintext credentials: ``services.remote_changes``
refuses them; environment values are redacted as everywhere), and the remote's answer or error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import DatabricksError
from databricks.sdk.errors import platform as sdk_errors
from databricks.sdk.service import serving

from endpoints_app.errors import DomainError, InvalidParameterValue, PreconditionFailed
from endpoints_app.models import ChangeRequest, Workspace
from endpoints_app.remote import client as remote_client
from endpoints_app.services import workspaces as workspace_services
from endpoints_app.validation import (
    CoreConfig,
    parse_ai_gateway,
    parse_core_config,
    parse_create_request,
    parse_tags_patch,
    plaintext_credentials,
    redact_environment_vars,
    require_object,
)

MAX_SHOWN = 2000  # characters of a remote's answer kept in an error message

Action = ChangeRequest.Action

# The remote's own client errors keep their status and error code (a config the remote refuses is
# still a 400 to our caller). Anything else (unreachable, its token refused, a 5xx) is a 502: the
# change did not reach the remote, and a 503 would make an SDK caller retry for minutes.
_PASSED_THROUGH = {
    sdk_errors.BadRequest: 400,
    sdk_errors.NotFound: 404,
    sdk_errors.ResourceConflict: 409,
    sdk_errors.AlreadyExists: 409,
}


class RemoteCallFailed(DomainError):
    """A remote workspace did not apply a change: unreachable, refused by the egress policy or the
    remote's token check, or it answered with an error (``remote_error``: its error code)."""

    error_code = "REMOTE_WORKSPACE_ERROR"
    status = 502

    def __init__(self, message: str, *, error_code: str | None = None, status: int | None = None) -> None:
        super().__init__(message, error_code=error_code, status=status)


@dataclass
class Exchange:
    """One write call: what was sent (method, path, body) and what came back."""

    method: str
    path: str
    sent: Any
    received: Any = None
    error: str = ""
    failure: RemoteCallFailed | None = None

    def as_audit(self, workspace: Workspace) -> dict[str, Any]:
        shown: dict[str, Any] = {
            "workspace": workspace.name,
            "request": {"method": self.method, "path": self.path, "body": _redacted(self.sent)},
        }
        if self.error:
            shown["error"] = self.error
        else:
            shown["response"] = _redacted(self.received)
        return shown


def _redacted(value: Any) -> Any:
    """Environment values as the API shows them ("[REDACTED]"), wherever served entities appear."""
    if isinstance(value, dict):
        out = {k: _redacted(v) for k, v in value.items()}
        if isinstance(value.get("environment_vars"), dict):
            out["environment_vars"] = redact_environment_vars(value["environment_vars"])
        return out
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


def client_for(workspace: Workspace) -> tuple[WorkspaceClient, str]:
    """The SDK client for a remote workspace, and its token (to mask it in messages)."""
    try:
        token = workspace_services.token_of(workspace)
    except DomainError:
        raise RemoteCallFailed(
            f"Workspace '{workspace.name}' has no token in the secrets store: an admin gives it again (update)"
        ) from None
    try:
        return remote_client.workspace_client(host=workspace.host, token=token), token
    except Exception as exc:  # noqa: BLE001 - building the client asks the host (discovery)
        raise failure(workspace, token, exc) from None


def failure(workspace: Workspace, token: str, exc: BaseException) -> RemoteCallFailed:
    """What went wrong with a call to the remote as a domain error, the token masked."""
    if isinstance(exc, RemoteCallFailed):
        return exc
    if isinstance(exc, DatabricksError):
        status = next((s for cls, s in _PASSED_THROUGH.items() if isinstance(exc, cls)), 502)
        code = (exc.error_code or "") if status != 502 else RemoteCallFailed.error_code
        text = f"Workspace '{workspace.name}' answered {exc.error_code or type(exc).__name__}: {exc}"
        return RemoteCallFailed(
            remote_client.masked(token, text[:MAX_SHOWN]), error_code=code or RemoteCallFailed.error_code, status=status
        )
    text = remote_client.describe_failure(workspace.host, exc)
    return RemoteCallFailed(remote_client.masked(token, f"Workspace '{workspace.name}': {text}"))


def read_endpoint(workspace: Workspace, name: str) -> dict[str, Any]:
    """The remote's endpoint as it answers ``GET …/serving-endpoints/<name>`` now."""
    client, token = client_for(workspace)
    try:
        return client.serving_endpoints.get(name).as_dict()
    except Exception as exc:  # noqa: BLE001 - every failure is the caller's 4xx/502
        raise failure(workspace, token, exc) from None


def config_version(detail: dict[str, Any]) -> int | None:
    """The remote's newest config version: the pending one while an update rolls out (a change made
    meanwhile moves it before it serves), else the active one."""
    for key in ("pending_config", "config"):
        version = (detail.get(key) or {}).get("config_version")
        if isinstance(version, int):
            return version
    return None


def check_not_stale(workspace: Workspace, name: str, base: int | None) -> None:
    """Refuse (412, as a stale If-Match is refused locally) when the remote's config moved on
    since the change was proposed on ``base``."""
    if base is None:
        return
    now = config_version(read_endpoint(workspace, name))
    if now != base:
        raise PreconditionFailed(
            f"Endpoint '{name}' of workspace '{workspace.name}' changed since the change was proposed "
            f"(config_version {base}, now {now}); propose it again against the current config"
        )


def send(workspace: Workspace, *, action: str, name: str, body: dict[str, Any]) -> Exchange:
    """Make one change on the remote with the SDK; the exchange records what was sent and what came
    back, or ``error`` (and ``failure``: the ``RemoteCallFailed`` to raise) when it failed."""
    base = "/api/2.0/serving-endpoints"
    if action == Action.CREATE:
        exchange = Exchange("POST", base, body)
    elif action == Action.UPDATE_CONFIG:
        exchange = Exchange("PUT", f"{base}/{name}/config", body)
    elif action == Action.TAGS:
        exchange = Exchange("PATCH", f"{base}/{name}/tags", body)
    elif action == Action.AI_GATEWAY:
        exchange = Exchange("PUT", f"{base}/{name}/ai-gateway", body)
    else:
        exchange = Exchange("DELETE", f"{base}/{name}", None)
    token = ""
    try:
        client, token = client_for(workspace)
        exchange.received = _call(client, action=action, name=name, body=body)
    except Exception as exc:  # noqa: BLE001 - recorded, then raised by the caller
        error = failure(workspace, token, exc)
        exchange.error, exchange.failure = error.message, error
    return exchange


def _typed(cls: Any, value: Any) -> Any:
    return cls.from_dict(value) if isinstance(value, dict) else None


def _call(client: WorkspaceClient, *, action: str, name: str, body: dict[str, Any]) -> Any:
    api = client.serving_endpoints
    if action == Action.CREATE:
        waiter = api.create(
            body["name"],
            ai_gateway=_typed(serving.AiGatewayConfig, body.get("ai_gateway")),
            budget_policy_id=body.get("budget_policy_id"),
            config=_typed(serving.EndpointCoreConfigInput, body.get("config")),
            description=body.get("description"),
            email_notifications=_typed(serving.EmailNotifications, body.get("email_notifications")),
            rate_limits=[serving.RateLimit.from_dict(r) for r in body["rate_limits"]]
            if body.get("rate_limits")
            else None,
            route_optimized=body.get("route_optimized"),
            tags=[serving.EndpointTag.from_dict(t) for t in body["tags"]] if body.get("tags") else None,
            telemetry_config=_typed(serving.TelemetryConfig, body.get("telemetry_config")),
        )
        return waiter.response.as_dict() if waiter.response is not None else {}
    if action == Action.UPDATE_CONFIG:
        config = serving.EndpointCoreConfigInput.from_dict(body)
        waiter = api.update_config(
            name,
            auto_capture_config=config.auto_capture_config,
            # ``from_dict`` gives [] for a list the body has not: the SDK would send it, and a
            # remote refuses served_entities beside served_models, even an empty one.
            served_entities=config.served_entities or None,
            served_models=config.served_models or None,
            traffic_config=config.traffic_config,
        )
        return waiter.response.as_dict() if waiter.response is not None else {}
    if action == Action.TAGS:
        add = [serving.EndpointTag.from_dict(t) for t in body.get("add_tags") or []]
        return api.patch(name, add_tags=add or None, delete_tags=list(body.get("delete_tags") or []) or None).as_dict()
    if action == Action.AI_GATEWAY:
        gateway = serving.AiGatewayConfig.from_dict(body)
        return api.put_ai_gateway(
            name,
            fallback_config=gateway.fallback_config,
            guardrails=gateway.guardrails,
            inference_table_config=gateway.inference_table_config,
            rate_limits=gateway.rate_limits or None,
            usage_tracking_config=gateway.usage_tracking_config,
        ).as_dict()
    api.delete(name)
    return {}


REMOTE_ACTIONS = (Action.CREATE, Action.UPDATE_CONFIG, Action.TAGS, Action.AI_GATEWAY, Action.DELETE)


def checked_body(*, action: str, name: str, body: Any) -> tuple[dict[str, Any], Any]:
    """A remote change's body checked as a local one is (400 ``INVALID_PARAMETER_VALUE`` naming the
    field), and what it would make of the endpoint, for the proposal's diff. The body is sent as
    given: the remote checks it again against what it serves. It never carries a plaintext
    credential: it is stored, shown to approvers and audited as given (refer to a secret of the
    remote instead)."""
    if action not in REMOTE_ACTIONS:
        raise InvalidParameterValue(
            f"action must be one of {', '.join(REMOTE_ACTIONS)} for an endpoint of a remote workspace"
        )
    if action == Action.DELETE:
        return {}, None
    data = require_object(body if body is not None else {}, "request body")
    if action == Action.CREATE:
        create = parse_create_request({**data, "name": name})
        _refuse_plaintext(create.config)
        return {**data, "name": name}, {k: v for k, v in data.items() if k != "name"}
    if action == Action.UPDATE_CONFIG:
        config = parse_core_config(data, where="config")
        _refuse_plaintext(config)
        return data, {"config": data}
    if action == Action.TAGS:
        add, delete = parse_tags_patch(data)
        return data, {"add_tags": dict(add), "delete_tags": delete}
    return data, {"ai_gateway": parse_ai_gateway(data)}


def _refuse_plaintext(config: CoreConfig) -> None:
    fields = plaintext_credentials(config)
    if fields:
        raise InvalidParameterValue(
            f"A change to a remote workspace's endpoint cannot carry plaintext credentials ({', '.join(fields)}): "
            "it is stored, shown to approvers and audited. Refer to a secret of the remote workspace instead "
            "({{secrets/SCOPE/KEY}})."
        )


def current_view(action: str, detail: dict[str, Any]) -> Any:
    """The part of the remote's endpoint a change of ``action`` changes, for the proposal's diff."""
    if action == Action.TAGS:
        return {"tags": {t.get("key"): t.get("value") for t in detail.get("tags") or []}}
    if action == Action.AI_GATEWAY:
        return {"ai_gateway": detail.get("ai_gateway")}
    config = {k: v for k, v in (detail.get("config") or {}).items() if k != "config_version"}
    for key in ("served_entities", "served_models"):  # their deployment state is no part of a change
        if isinstance(config.get(key), list):
            config[key] = [{k: v for k, v in e.items() if k != "state"} for e in config[key] if isinstance(e, dict)]
    return {"config": _redacted(config)}
