"""A remote workspace's endpoint page (issue 16): ``/workspaces/<workspace>/endpoints/<name>/``.

The local endpoint page's sections for what the remote poller keeps (``monitoring.remote``):
state and health as the remote last said them, with the workspace's status and why the data may
be stale; config versions and served entities; charts and logs (``static/js/endpoint.js``
through the fleet API's ``metric-series`` and ``log-lines``); health history and alerts.
No query playground or permissions (those are the remote's). A user sees it with a role in its
workspace (global, or granted there); 404 otherwise.

``/workspaces/<workspace>/endpoints/<name>/traffic/`` is its traffic-split editor (issue 16 part 4):
the local editor's split rows and ``static/js/traffic-split.js`` (sliders that keep the total at
100), one share per served entity of the active config. Saving calls the same service as the API
(``services.remote_changes.update_remote_config``, ``on_approval_needed="propose"``): applied to the
remote with the SDK, or a change request when a policy covers it. Editors in the workspace only
(viewers get 403); a POST needs the CSRF token like every form.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import path

from endpoints_app import access
from endpoints_app.authenticated import AuthenticatedHttpRequest
from endpoints_app.errors import DomainError, ResourceDoesNotExist
from endpoints_app.models import AlertEvent, ConfigUpdate, ConfigVersion, HealthChange, HealthStatus
from endpoints_app.monitoring.remote import stale_reason
from endpoints_app.pages.endpoint import HISTORY_ROWS, RANGES, _config_json, _log_tail, entity_rows
from endpoints_app.selectors.fleet import fleet_endpoint
from endpoints_app.services import remote_changes


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
        "may_change": access.role_of(request.user, endpoint.workspace.name) in access.CREATE_ROLES,
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


class SplitShareForm(forms.Form):
    """One served entity's share, named as the local editor's split row expects (``traffic``)."""

    traffic = forms.IntegerField(
        label="Traffic %",
        min_value=0,
        max_value=100,
        widget=forms.NumberInput(attrs={"min": 0, "max": 100, "step": 1, "inputmode": "numeric"}),
    )


def _entity_input(entity: Any) -> dict[str, Any]:
    """A served entity of the remote's active config as a config input (what the remote echoes)."""
    if entity.external_model:
        raise DomainError(
            "This endpoint serves external models: change its config with the API (…/serving-endpoints/<name>/config)"
        )
    shown: dict[str, Any] = {
        "name": entity.name,
        "entity_name": entity.entity_name,
        "entity_version": entity.entity_version,
        "scale_to_zero_enabled": entity.scale_to_zero_enabled,
    }
    if entity.workload_size:
        shown["workload_size"] = entity.workload_size
    if entity.workload_type:
        shown["workload_type"] = entity.workload_type
    for key in ("min_provisioned_concurrency", "max_provisioned_concurrency"):
        if getattr(entity, key) is not None:
            shown[key] = getattr(entity, key)
    return shown


@login_required
def remote_split_page(request: AuthenticatedHttpRequest, workspace: str, name: str) -> HttpResponse:
    endpoint = fleet_endpoint(request.user, workspace, name)
    if endpoint.workspace is None or endpoint.active_config is None:
        raise ResourceDoesNotExist(f"Endpoint '{name[:255]}' has no config to split in workspace '{workspace[:63]}'")
    access.require_remote_edit(request.user, endpoint.workspace)  # viewers: 403
    entities = list(endpoint.active_config.served_entities.all())
    routes = {
        r.get("served_model_name") or r.get("served_entity_name"): r.get("traffic_percentage", 0)
        for r in (endpoint.active_config.traffic_config or {}).get("routes") or []
    }
    data = request.POST if request.method == "POST" else None
    rows = [
        SplitShareForm(data, prefix=f"split-{i}", initial={"traffic": routes.get(e.name, 0)})
        for i, e in enumerate(entities)
    ]
    errors: list[str] = []
    if data is not None and all(f.is_valid() for f in rows):
        shares = [f.cleaned_data["traffic"] for f in rows]
        if sum(shares) != 100:
            errors.append(f"The shares must add up to 100 (they add up to {sum(shares)}).")
        else:
            body = {
                "served_entities": [_entity_input(e) for e in entities],
                "traffic_config": {
                    "routes": [
                        {"served_model_name": e.name, "traffic_percentage": share}
                        for e, share in zip(entities, shares, strict=True)
                    ]
                },
            }
            try:
                outcome = remote_changes.update_remote_config(
                    actor=request.user,
                    workspace=endpoint.workspace,
                    name=endpoint.name,
                    body=body,
                    on_approval_needed="propose",
                    based_on=endpoint.active_config.version,  # the copy the entities come from
                )
            except DomainError as exc:
                errors.append(exc.message)
            else:
                if outcome.change_request is not None:
                    messages.info(
                        request,
                        f"Traffic split: change request #{outcome.change_request.pk} now waits for an approver.",
                    )
                    return redirect("change_request_detail", request_id=outcome.change_request.pk)
                messages.success(request, "Traffic split sent to the remote workspace.")
                return redirect("remote_endpoint_detail", workspace=endpoint.workspace.name, name=endpoint.name)
    split = [
        {"form": f, "name": e.name, "index": i % 10, "share": f["traffic"].value()}
        for i, (f, e) in enumerate(zip(rows, entities, strict=True))
    ]
    total = sum(int(row["share"] or 0) for row in split if str(row["share"] or "0").isdigit())
    context = {
        "nav": "endpoints",
        "endpoint": endpoint,
        "workspace": endpoint.workspace,
        "split": split,
        "split_total": total,
        "errors": errors,
        "stale": stale_reason(endpoint),
    }
    return render(request, "dashboard/remote_split.html", context, status=400 if errors else 200)


urlpatterns = [
    path("workspaces/<str:workspace>/endpoints/<str:name>/", remote_endpoint_page, name="remote_endpoint_detail"),
    path("workspaces/<str:workspace>/endpoints/<str:name>/traffic/", remote_split_page, name="remote_endpoint_split"),
]
