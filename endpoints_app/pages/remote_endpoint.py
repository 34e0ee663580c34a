"""A remote workspace's endpoint page (issue 16): ``/workspaces/<workspace>/endpoints/<name>/``.

The local endpoint page's sections for what the remote poller keeps (``monitoring.remote``):
state and health as the remote last said them, with the workspace's status and why the data may
be stale; config versions and served entities; charts and logs (``static/js/endpoint.js``
through the fleet API's ``metric-series`` and ``log-lines``); health history and alerts.
Read-only: no query playground, permissions or edits (changes go to the remote itself).
A user sees it with a role in its workspace (global, or granted there); 404 otherwise.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import path

from endpoints_app.authenticated import AuthenticatedHttpRequest
from endpoints_app.models import AlertEvent, ConfigUpdate, ConfigVersion, HealthChange, HealthStatus
from endpoints_app.monitoring.remote import stale_reason
from endpoints_app.pages.endpoint import HISTORY_ROWS, RANGES, _config_json, _log_tail, entity_rows
from endpoints_app.selectors.fleet import fleet_endpoint


def _rows(config: ConfigVersion, *, failed: bool = False) -> list[dict[str, Any]]:
    """The local page's entity rows, with the deployment state the remote reported."""
    rows = entity_rows(config, failed=failed)
    for row in rows:
        state = (row["entity"].extra or {}).get("state") or {}
        deployment = state.get("deployment") or "DEPLOYMENT_UNKNOWN"
        row.update(
            state=deployment,
            state_label=deployment.removeprefix("DEPLOYMENT_").replace("_", " ").capitalize(),
            state_message=state.get("deployment_state_message") or "",
            ready_replicas=None,
            environment_vars=[],
        )
    return rows


@login_required
def remote_endpoint_page(request: AuthenticatedHttpRequest, workspace: str, name: str) -> HttpResponse:
    endpoint = fleet_endpoint(request.user, workspace, name)
    if endpoint.workspace is None:  # "local": the local page is the one
        return redirect(f"/endpoints/{quote(endpoint.name, safe='')}/")
    remote_state = endpoint.remote_state or {}
    update = endpoint.config_update
    updating = endpoint.pending_config_id is not None and update in (
        ConfigUpdate.IN_PROGRESS,
        ConfigUpdate.UPDATE_FAILED,
    )
    active_rows = _rows(endpoint.active_config) if endpoint.active_config is not None else []
    pending_rows = (
        _rows(endpoint.pending_config, failed=update == ConfigUpdate.UPDATE_FAILED)
        if updating and endpoint.pending_config is not None
        else []
    )
    names: list[str] = []
    for row in pending_rows + active_rows:
        if row["entity"].name not in names:
            names.append(row["entity"].name)
    ready = remote_state.get("ready") or "NOT_READY"
    base = (
        f"/api/2.0/modelfleet/fleet/endpoints/{quote(endpoint.workspace.name, safe='')}/{quote(endpoint.name, safe='')}"
    )
    context = {
        "nav": "endpoints",
        "endpoint": endpoint,
        "workspace": endpoint.workspace,
        "ready": ready,
        "state_key": "ready" if ready == "READY" else "down",
        "state_label": "Ready" if ready == "READY" else "Not ready",
        "config_update": update,
        "stale": stale_reason(endpoint),
        "remote_state": remote_state,
        "health_label": HealthStatus(endpoint.health).label
        if endpoint.health in HealthStatus.values
        else endpoint.health,
        "tags": list(endpoint.tags.all()),
        "active_rows": active_rows,
        "pending_rows": pending_rows,
        "updating": updating,
        "active_json": _config_json(endpoint.active_config),
        "pending_json": _config_json(endpoint.pending_config) if updating else "",
        "ranges": RANGES,
        "log_tail": _log_tail(endpoint, request.GET),
        "health_changes": list(HealthChange.objects.filter(endpoint=endpoint).order_by("-at", "-id")[:HISTORY_ROWS]),
        "alert_events": list(
            AlertEvent.objects.filter(endpoint=endpoint)
            .select_related("rule")
            .order_by("-started_at", "-id")[:HISTORY_ROWS]
        ),
        "entity_names": names,
        "page_data": {
            "name": endpoint.name,
            "id": endpoint.id,
            "workspace": endpoint.workspace.name,
            "entities": names,
            "shadows": [],
            "examples": {},
            "seriesUrl": f"{base}/metric-series",
            "logsUrl": f"{base}/log-lines",
        },
    }
    return render(request, "dashboard/remote_endpoint_detail.html", context)


urlpatterns = [
    path("workspaces/<str:workspace>/endpoints/<str:name>/", remote_endpoint_page, name="remote_endpoint_detail"),
]
