"""An endpoint's AI-gateway page: usage charts for everyone who may see the endpoint, and the
settings (rate limits, guardrails, usage tracking, fallbacks, inference table) for its managers.

Saving builds ``PUT …/ai-gateway``'s body and calls the same service as the API
(``services.ai_gateway.put_ai_gateway``) with the ETag read when the form was rendered, so a change
made meanwhile is refused rather than overwritten; when an approval policy covers the endpoint and
the user may not skip approval, the service proposes a change request instead (action
``ai_gateway``, ``on_approval_needed="propose"``), as for the endpoint editor's configs.

The charts (``static/js/ai-gateway.js``) read the usage API with the session cookie,
``/api/2.0/modelfleet/serving-endpoints/<name>/usage``, which shows managers everyone's use and
everyone else their own: the page asks nothing the API would not answer.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.views.decorators.http import require_http_methods

from endpoints_app import access, selectors
from endpoints_app.authenticated import AuthenticatedHttpRequest
from endpoints_app.errors import DomainError
from endpoints_app.models import Endpoint, PermissionLevel
from endpoints_app.pages.edit import proposed, shows_approval_notice
from endpoints_app.pages.forms.ai_gateway import AiGatewayEditor
from endpoints_app.services import ai_gateway, checks

RANGES = (("1h", "1 h", 3600), ("6h", "6 h", 6 * 3600), ("24h", "24 h", 86400), ("7d", "7 d", 7 * 86400))


def _current(endpoint: Endpoint) -> dict[str, Any] | None:
    return endpoint.ai_gateway if isinstance(endpoint.ai_gateway, dict) else None


def _render(
    request: AuthenticatedHttpRequest,
    endpoint: Endpoint,
    *,
    can_manage: bool,
    editor: AiGatewayEditor | None,
    status: int = 200,
) -> HttpResponse:
    current = _current(endpoint) or {}
    context = {
        "nav": "endpoints",
        "endpoint": endpoint,
        "can_manage": can_manage,
        "needs_approval": can_manage and shows_approval_notice(request.user, endpoint.name),
        "editor": editor,
        "current_json": json.dumps(current, indent=2, sort_keys=True) if current else "",
        "usage_tracking": bool((current.get("usage_tracking_config") or {}).get("enabled")),
        "ranges": RANGES,
        "page_data": {
            "usageUrl": f"/api/2.0/modelfleet/serving-endpoints/{endpoint.name}/usage",
            "everyone": can_manage,  # the usage API shows managers everyone's use, others their own
        },
    }
    return render(request, "dashboard/ai_gateway.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def endpoint_ai_gateway(request: AuthenticatedHttpRequest, name: str) -> HttpResponse:
    endpoint = selectors.endpoint_by_name(name)
    level = access.require(request.user, endpoint, PermissionLevel.CAN_VIEW)  # 404 for outsiders
    can_manage = level == PermissionLevel.CAN_MANAGE
    if request.method == "GET":
        editor = AiGatewayEditor(current=_current(endpoint), etag=checks.etag(endpoint)) if can_manage else None
        return _render(request, endpoint, can_manage=can_manage, editor=editor)

    access.require(request.user, endpoint, PermissionLevel.CAN_MANAGE)  # 403 for everyone else
    editor = AiGatewayEditor(current=_current(endpoint), data=request.POST)
    if request.POST.get("edit_action") == "add_limit":
        editor.add_limit_row()
        return _render(request, endpoint, can_manage=True, editor=editor)
    if not editor.is_valid():
        return _render(request, endpoint, can_manage=True, editor=editor, status=400)
    body = editor.body()
    try:
        outcome = ai_gateway.put_ai_gateway(
            actor=request.user, name=name, body=body, if_match=editor.etag, on_approval_needed="propose"
        )
    except DomainError as exc:
        editor.add_domain_error(exc)
        return _render(request, endpoint, can_manage=True, editor=editor, status=exc.status)
    if outcome.change_request is not None:
        return proposed(request, outcome.change_request, f"AI gateway changes to {name} need approval")
    messages.success(request, f"AI gateway settings of {name} saved; the gateway applies them within a second.")
    return redirect(reverse("endpoint_ai_gateway", args=[name]))


urlpatterns = [
    path("endpoints/<str:name>/ai-gateway", endpoint_ai_gateway, name="endpoint_ai_gateway"),
]
