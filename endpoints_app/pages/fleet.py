"""The fleet list: every endpoint the user may see."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path

from endpoints_app import access, selectors
from endpoints_app.models import ConfigUpdate


def _status(endpoint) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """The UI status strings Databricks documents (reference §2.6) and a badge colour."""
    ready = selectors.endpoint_is_ready(endpoint)
    prefix = "Ready" if ready else "Not ready"
    if endpoint.config_update == ConfigUpdate.IN_PROGRESS:
        return f"{prefix} (Updating)", "updating"
    if endpoint.config_update == ConfigUpdate.UPDATE_FAILED:
        return f"{prefix} (Update failed)", "failed"
    return prefix, "ready" if ready else "failed"


@login_required
def endpoint_list(request: HttpRequest) -> HttpResponse:
    rows = []
    for endpoint in access.visible_endpoints(request.user, selectors.endpoint_list()):
        config = endpoint.active_config or endpoint.pending_config
        status, badge = _status(endpoint)
        rows.append(
            {
                "name": endpoint.name,
                "status": status,
                "badge": badge,
                "entities": list(config.served_entities.all()) if config else [],
                "version": endpoint.active_config.version if endpoint.active_config else None,
                "creator": endpoint.creator.get_username() if endpoint.creator else "",
            }
        )
    return render(request, "dashboard/endpoint_list.html", {"endpoints": rows})


urlpatterns = [path("", endpoint_list, name="endpoint_list")]
