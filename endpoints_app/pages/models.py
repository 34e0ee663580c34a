"""The models page: the registry's models and versions, and which endpoints serve each version."""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.http import HttpResponse
from django.shortcuts import render
from django.urls import path
from django.utils.text import slugify

from endpoints_app import access, registry
from endpoints_app.authenticated import AuthenticatedHttpRequest
from endpoints_app.models import ConfigUpdate, Endpoint

log = logging.getLogger(__name__)


def serving_map(user: Any) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(model, version) → the visible endpoints whose active or deploying config serves it (two queries)."""
    visible = access.visible_endpoints(user, Endpoint.objects.all())
    served: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    active = visible.filter(active_config__served_entities__isnull=False).values_list(
        "name",
        "active_config__served_entities__name",
        "active_config__served_entities__entity_name",
        "active_config__served_entities__entity_version",
    )
    pending = visible.filter(
        Q(config_update=ConfigUpdate.IN_PROGRESS), pending_config__served_entities__isnull=False
    ).values_list(
        "name",
        "pending_config__served_entities__name",
        "pending_config__served_entities__entity_name",
        "pending_config__served_entities__entity_version",
    )
    for rows, deploying in ((active, False), (pending, True)):
        for endpoint, served_name, model, version in rows.order_by("name"):
            if not model:
                continue  # an external model: not in the registry
            entry = {"endpoint": endpoint, "served_name": served_name, "deploying": deploying}
            if deploying and any(e["endpoint"] == endpoint for e in served[(model, version)]):
                continue  # already listed as serving
            served[(model, version)].append(entry)
    return served


def _when(ms: int) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, tz=UTC) if ms else None


@login_required
def model_list(request: AuthenticatedHttpRequest) -> HttpResponse:
    q = request.GET.get("q", "").strip()[:200]
    error = ""
    try:
        registered = registry.list_registered_models()
    except Exception:  # the registry is another system: say so instead of failing the page
        log.exception("could not read the model registry")
        registered, error = [], "The model registry could not be read; see the server log."
    served = serving_map(request.user)
    models = []
    for model in registered:
        if q and q.lower() not in model["name"].lower():
            continue
        versions = [
            {
                **v,
                "created": _when(v["creation_timestamp"]),
                "served_by": served.get((model["name"], v["version"]), []),
            }
            for v in reversed(model["versions"])
        ]
        models.append(
            {
                **model,
                "anchor": "model-" + slugify(model["name"]),
                "updated": _when(model["last_updated_timestamp"]),
                "versions": versions,
                "serving_count": sum(1 for v in versions if v["served_by"]),
            }
        )
    return render(
        request,
        "dashboard/model_list.html",
        {
            "nav": "models",
            "models": models,
            "q": q,
            "error": error,
            "total": len(registered),
            "can_register": access.role_of(request.user) in access.CREATE_ROLES,
        },
    )


urlpatterns = [path("models/", model_list, name="model_list")]
