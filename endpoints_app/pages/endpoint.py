"""The endpoint page: state, active and pending config (with a diff), served entities, charts,
logs, health and alerts, the query playground and the permissions panel.

Everything a reader needs is in the HTML (configs, entities, the latest log lines, health
history, grants); ``static/js/endpoint.js`` adds the charts, live logs, the playground and grant
changes on top, through the same JSON APIs the CLI uses:

- charts: ``/api/2.0/modelfleet/serving-endpoints/<name>/metric-series`` per served entity;
- logs: ``…/log-lines`` (kind, served model, text filter; follow polls for newer lines);
- playground: the gateway itself, ``/serving-endpoints/<name>/invocations``, with the session
  cookie and the ``X-CSRFToken`` header (see ``endpoints_app.gateway.app``), so a query from the
  page is counted, routed and checked for CAN_QUERY exactly like one from the SDK;
- permissions: ``/api/2.0/permissions/serving-endpoints/<id>`` (PATCH adds a grant; removing one
  PUTs the list read just before, less that grant: the API has no "remove one" verb).

An endpoint the user may not see is a 404 page; actions are shown only to those the access rule
lets act, and the APIs they call check again.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse, QueryDict
from django.shortcuts import render
from django.urls import path

from endpoints_app import access, audit, registry, selectors, validation
from endpoints_app.api.serializers.endpoints import serialize_entity_state
from endpoints_app.authenticated import AuthenticatedHttpRequest
from endpoints_app.errors import DomainError, ResourceDoesNotExist
from endpoints_app.filters import LogLineFilterSet
from endpoints_app.models import (
    AlertEvent,
    ConfigUpdate,
    ConfigVersion,
    Endpoint,
    EndpointPermission,
    HealthChange,
    HealthStatus,
    PermissionLevel,
    PollTarget,
)
from endpoints_app.monitoring import logs
from endpoints_app.pages import fleet_render
from endpoints_app.pages import rollout_plans as rollout_plans_page
from endpoints_app.selectors.fleet import annotate_state

log = logging.getLogger(__name__)

RANGES = (
    ("1h", "1 h", 3600),
    ("6h", "6 h", 6 * 3600),
    ("24h", "24 h", 86400),
    ("7d", "7 d", 7 * 86400),
    ("14d", "14 d", 14 * 86400),
)
LOG_TAIL = 100
HISTORY_ROWS = 20


def endpoint_for(request: AuthenticatedHttpRequest, name: str, needed: str = PermissionLevel.CAN_VIEW) -> tuple[Endpoint, str]:
    """The endpoint (with entities, deployments and ready replicas) and the user's level on it."""
    endpoint = selectors.endpoint_detail(name)
    return endpoint, access.require(request.user, endpoint, needed)


# --- config and served entities -------------------------------------------------------------------


def _routes(config: ConfigVersion) -> dict[str, int]:
    return {
        (r.get("served_model_name") or r.get("served_entity_name") or ""): int(r.get("traffic_percentage") or 0)
        for r in (config.traffic_config or {}).get("routes") or []
    }


def shadow_shares(config: ConfigVersion | None) -> dict[str, int]:
    """The config's shadows (``traffic_config.shadow``): served entity → % of queries mirrored."""
    if config is None:
        return {}
    return {name: s["percentage"] for name, s in validation.stored_shadows(config.traffic_config).items()}


def entity_rows(config: ConfigVersion, *, failed: bool = False) -> list[dict[str, Any]]:
    """Each served entity of a config with its deployment state, replicas, traffic share and, for a
    shadow, the share of queries mirrored to it."""
    routes = _routes(config)
    shadows = shadow_shares(config)
    rows = []
    for i, entity in enumerate(config.served_entities.all()):
        dep = entity.deployment
        state = serialize_entity_state(entity, failed_config=failed)
        ready = getattr(dep, "ready_replica_list", None) if dep is not None else None
        rows.append(
            {
                "entity": entity,
                "colour": i % 6,
                "traffic": routes.get(entity.name, 0),
                "shadow": shadows.get(entity.name),
                "state": state["deployment"],
                "state_label": state["deployment"].removeprefix("DEPLOYMENT_").replace("_", " ").capitalize(),
                "state_message": state["deployment_state_message"],
                "ready_replicas": len(ready) if ready is not None else None,
                # What confines the model code of the ready replicas (runtime/sandbox.py).
                "isolation": ", ".join(sorted({r.isolation or "unknown" for r in ready})) if ready else "",
                "target_replicas": (0 if dep.stopped_at else dep.desired_replicas) if dep is not None else None,
                "min_replicas": dep.min_replicas if dep is not None else None,
                "max_replicas": dep.max_replicas if dep is not None else None,
                "scaled_to_zero": dep is not None and dep.scaled_to_zero_at is not None,
                "environment_vars": sorted((entity.environment_vars or {}).keys()),
            }
        )
    return rows


def config_diff(endpoint: Endpoint) -> list[tuple[str, str]]:
    """Active → pending as a unified diff of the configs' JSON, each line with its kind (add, del, hunk, '')."""
    snapshot = audit.endpoint_snapshot(endpoint)

    def lines(config: dict[str, Any] | None) -> list[str]:
        if config is None:
            return []
        shown = {k: v for k, v in config.items() if k != "config_version"}
        return json.dumps(shown, indent=2, sort_keys=True).splitlines()

    active, pending = snapshot["config"], snapshot["pending_config"]
    diff = difflib.unified_diff(
        lines(active),
        lines(pending),
        f"active (version {active['config_version']})" if active else "active (none)",
        f"pending (version {pending['config_version']})" if pending else "pending",
        lineterm="",
        n=3,
    )
    out = []
    for line in diff:
        if line.startswith(("+++", "---", "@@")):
            out.append(("hunk", line))
        else:
            out.append(({"+": "add", "-": "del"}.get(line[:1], ""), line))
    return out


def state_of(endpoint: Endpoint) -> tuple[str, str]:
    """The fleet list's badge for this endpoint (the same SQL rule), as (key, words)."""
    state_key, serving = (
        annotate_state(Endpoint.objects.filter(pk=endpoint.pk)).values_list("state_key", "serving").get()
    )
    return state_key, fleet_render.state_label(state_key, bool(serving))


# --- the playground's example body ----------------------------------------------------------------


_DEFAULTS = {"double": 0.0, "float": 0.0, "long": 0, "integer": 0, "boolean": False, "string": "", "datetime": ""}


# External models take the task's OpenAI-style body (reference §4.4).
_TASK_EXAMPLES: dict[str, dict[str, Any]] = {
    "llm/v1/chat": {"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 64},
    "llm/v1/completions": {"prompt": "Hello!", "max_tokens": 64},
    "llm/v1/embeddings": {"input": ["Hello!"]},
}


def example_for(entity: Any) -> str:
    """An example request body for a served entity (see ``example_request``)."""
    external = getattr(entity, "external_model", None)
    if external:
        return _pretty(_TASK_EXAMPLES.get(str(external.get("task")), _TASK_EXAMPLES["llm/v1/chat"]))
    return example_request(entity.entity_name, entity.entity_version)


def example_request(entity_name: str, entity_version: str) -> str:
    """An example request body for a registered model version.

    1. The input example saved with the model, as ``dataframe_split`` (first two rows) or ``inputs``;
    2. else one row of the signature's columns with neutral values (0, 0.0, "", false);
    3. else an empty ``inputs`` list for the user to fill in (also when the version cannot be read).
    """
    try:
        return _example_from_registry(entity_name, entity_version)
    except DomainError:  # not in the registry (any more): nothing to derive an example from
        return _pretty({"inputs": []})
    except Exception:  # an example is a convenience: a model we cannot read still gets a blank body
        log.warning("no example request for %s version %s", entity_name, entity_version, exc_info=True)
        return _pretty({"inputs": []})


@lru_cache(maxsize=512)
def _example_from_registry(entity_name: str, entity_version: str) -> str:
    """Cached: a registered version never changes (failures raise, so they are not cached)."""
    from mlflow.models import Model

    source = registry.get_model_version(entity_name, entity_version).source
    folder = Path(source.removeprefix("file://"))
    model = Model.load(str(folder / "MLmodel"))
    if model.saved_input_example_info:
        return _pretty(_as_request(model.load_input_example(str(folder))))
    if model.signature is not None and model.signature.inputs is not None:
        columns = [c for c in model.signature.inputs.to_dict() if isinstance(c, dict) and c.get("name")]
        if columns:
            row = [_DEFAULTS.get(str(c.get("type")), 0.0) for c in columns]
            return _pretty({"dataframe_split": {"columns": [c["name"] for c in columns], "data": [row]}})
    return _pretty({"inputs": []})


def _as_request(example: Any) -> dict[str, Any]:
    import pandas as pd

    if isinstance(example, pd.DataFrame):
        return {"dataframe_split": json.loads(example.head(2).to_json(orient="split", index=False))}
    if hasattr(example, "tolist"):  # a NumPy array
        return {"inputs": example.tolist()}
    if isinstance(example, dict) and ("messages" in example or "prompt" in example):
        return example
    return {"inputs": example}


def _pretty(body: dict[str, Any]) -> str:
    return json.dumps(body, indent=2, default=str)


# --- the page ---------------------------------------------------------------------------------------


def _log_tail(endpoint: Endpoint, params: QueryDict) -> dict[str, Any]:
    """The newest log lines for the page without JavaScript (the script reads the API instead),
    filtered by the log-lines API's filter set under the prefix ``logs`` (``logs_kind``, ``logs_q``…):
    a filter that does not parse is shown with its error and left out."""
    filters = LogLineFilterSet(params, prefix="logs")
    filters.is_valid()
    query = dataclasses.replace(filters.log_query(), limit=LOG_TAIL, descending=True, after=None)
    page = logs.log_lines(endpoint=endpoint, query=query)
    return {
        "kind": query.kind,
        "q": query.q,
        "model": query.served_model or "",
        "lines": list(reversed(page.lines)),
        "filters": filters,
    }


def grants_of(endpoint: Endpoint) -> list[EndpointPermission]:
    return list(
        EndpointPermission.objects.filter(endpoint=endpoint).select_related("user", "group").order_by("level", "id")
    )


def _permissions_context(request: AuthenticatedHttpRequest, endpoint: Endpoint, level: str) -> dict[str, Any]:
    return {
        "endpoint": endpoint,
        "grants": grants_of(endpoint),
        "can_manage": level == PermissionLevel.CAN_MANAGE,
        "levels": PermissionLevel.values,
        "me": request.user.get_username(),
    }


@login_required
def endpoint_page(request: AuthenticatedHttpRequest, name: str) -> HttpResponse:
    endpoint, level = endpoint_for(request, name)
    state_key, state_label = state_of(endpoint)
    updating = endpoint.pending_config_id is not None and endpoint.config_update in (
        ConfigUpdate.IN_PROGRESS,
        ConfigUpdate.UPDATE_FAILED,
    )
    failed = endpoint.config_update == ConfigUpdate.UPDATE_FAILED
    active_rows = entity_rows(endpoint.active_config) if endpoint.active_config is not None else []
    pending = endpoint.pending_config if updating else None
    pending_rows = entity_rows(pending, failed=failed) if pending is not None else []
    # Charts and playground cover both configs' entities, the pending ones first while they deploy.
    names: list[str] = []
    examples: dict[str, str] = {}
    for row in pending_rows + active_rows:
        entity = row["entity"]
        if entity.name not in names:
            names.append(entity.name)
            examples[entity.name] = example_for(entity)
    can_query = access.RANK[level] >= access.RANK[PermissionLevel.CAN_QUERY]
    can_manage = level == PermissionLevel.CAN_MANAGE
    serving_names = [r["entity"].name for r in active_rows]
    context = {
        "nav": "endpoints",
        "endpoint": endpoint,
        "level": level,
        "can_query": can_query,
        "can_manage": can_manage,
        "state_key": state_key,
        "state_label": state_label,
        "health_label": HealthStatus(endpoint.health).label
        if endpoint.health in HealthStatus.values
        else endpoint.health,
        "tags": list(endpoint.tags.all()),
        "active_rows": active_rows,
        "pending_rows": pending_rows,
        "updating": updating,
        "update_failed": failed,
        "active_json": _config_json(endpoint.active_config),
        "pending_json": _config_json(endpoint.pending_config) if updating else "",
        "diff": config_diff(endpoint) if updating and endpoint.active_config_id else [],
        "ranges": RANGES,
        "log_tail": _log_tail(endpoint, request.GET),
        "health_changes": list(HealthChange.objects.filter(endpoint=endpoint).order_by("-at", "-id")[:HISTORY_ROWS]),
        "alert_events": list(
            AlertEvent.objects.filter(endpoint=endpoint)
            .select_related("rule")
            .order_by("-started_at", "-id")[:HISTORY_ROWS]
        ),
        "polls": list(PollTarget.objects.filter(endpoint=endpoint).order_by("kind")),
        "example_name": serving_names[0] if serving_names else (names[0] if names else ""),
        "entity_names": names,
        "shadow_names": [n for n in names if n in shadow_shares(endpoint.active_config)],
        "edit_url": f"/endpoints/{endpoint.name}/edit" if can_manage else None,
        "page_data": {
            "name": endpoint.name,
            "id": endpoint.id,
            "entities": names,
            "shadows": [n for n in names if n in shadow_shares(endpoint.active_config)],
            "examples": examples,
            "seriesUrl": f"/api/2.0/modelfleet/serving-endpoints/{endpoint.name}/metric-series",
            "logsUrl": f"/api/2.0/modelfleet/serving-endpoints/{endpoint.name}/log-lines",
            "invocationsUrl": f"/serving-endpoints/{endpoint.name}/invocations",
            "permissionsApi": f"/api/2.0/permissions/serving-endpoints/{endpoint.id}",
            "permissionsFragment": f"/endpoints/{endpoint.name}/permissions",
        },
        **_permissions_context(request, endpoint, level),
        **rollout_plans_page.strip_context(endpoint, level),
    }
    return render(request, "dashboard/endpoint_detail.html", context)


def _config_json(config: ConfigVersion | None) -> str:
    if config is None:
        return ""
    routes = (config.traffic_config or {}).get("routes") or []
    body = {
        "config_version": config.version,
        "served_entities": [
            _external_json(e)
            if e.external_model
            else {
                "name": e.name,
                "entity_name": e.entity_name,
                "entity_version": e.entity_version,
                "workload_size": e.workload_size or None,
                "workload_type": e.workload_type,
                "scale_to_zero_enabled": e.scale_to_zero_enabled,
                **(
                    {
                        "min_provisioned_concurrency": e.min_provisioned_concurrency,
                        "max_provisioned_concurrency": e.max_provisioned_concurrency,
                    }
                    if e.min_provisioned_concurrency is not None
                    else {}
                ),
                # Names only: values may be secrets.
                **({"environment_vars": sorted(e.environment_vars)} if e.environment_vars else {}),
            }
            for e in config.served_entities.all()
        ],
        "traffic_config": {"routes": routes},
    }
    return json.dumps(body, indent=2)


def _external_json(entity: Any) -> dict[str, Any]:
    # Provider, model and task only: the provider config holds the credentials' references.
    external = entity.external_model
    return {"name": entity.name, "external_model": {k: external.get(k) for k in ("provider", "name", "task")}}


@login_required
def permissions_panel(request: AuthenticatedHttpRequest, name: str) -> HttpResponse:
    """The permissions panel alone, re-rendered after the script changed a grant through the API."""
    endpoint = Endpoint.objects.filter(name=name).first()
    if endpoint is None:
        raise ResourceDoesNotExist(f"Endpoint '{name}' does not exist")
    level = access.require(request.user, endpoint, PermissionLevel.CAN_VIEW)
    return render(request, "dashboard/_endpoint_permissions.html", _permissions_context(request, endpoint, level))


urlpatterns = [
    path("endpoints/<str:name>/", endpoint_page, name="endpoint_detail"),
    path("endpoints/<str:name>/permissions", permissions_panel, name="endpoint_permissions"),
]
