"""Usage of an AI-gateway endpoint (``ai_gateway.usage_tracking_config``).

``GET /api/2.0/modelfleet/serving-endpoints/<name>/usage?start=<ms>&end=<ms>&group_by=user|served_entity|minute``
→ ``{"usage": [{<group>, "requests", "input_tokens", "output_tokens"}], "totals": {...}}``.
Callers with CAN_MANAGE see everyone's use; others with CAN_VIEW see their own.
"""

from __future__ import annotations

import time

from django.db.models import Sum
from django.urls import URLPattern, path
from rest_framework.response import Response

from endpoints_app import access
from endpoints_app.api.views import ApiView
from endpoints_app.authenticated import AuthenticatedRequest
from endpoints_app.errors import InvalidParameterValue
from endpoints_app.models import PermissionLevel, UsageRecord

GROUPS = {"user": "user_name", "served_entity": "served_entity", "minute": "minute"}
SUMS = {"requests": Sum("requests"), "input_tokens": Sum("input_tokens"), "output_tokens": Sum("output_tokens")}


def _ms(request: AuthenticatedRequest, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidParameterValue(f"{name} must be epoch milliseconds") from None


class EndpointUsageView(ApiView):
    def get(self, request: AuthenticatedRequest, name: str) -> Response:
        endpoint = self.endpoint(request, name, PermissionLevel.CAN_VIEW)
        now_ms = int(time.time() * 1000)
        start, end = _ms(request, "start", now_ms - 24 * 3600 * 1000), _ms(request, "end", now_ms)
        if start >= end:
            raise InvalidParameterValue("start must be before end")
        group_by = request.query_params.get("group_by", "user")
        if group_by not in GROUPS:
            raise InvalidParameterValue(f"group_by must be one of {', '.join(GROUPS)}")
        rows = UsageRecord.objects.filter(endpoint=endpoint, minute__gte=start // 1000, minute__lt=end // 1000)
        if access.endpoint_level(request.user, endpoint) != PermissionLevel.CAN_MANAGE:
            rows = rows.filter(user_name=request.user.get_username())
        column = GROUPS[group_by]
        usage = [
            {group_by: row[column] * 1000 if group_by == "minute" else row[column], **{k: row[k] for k in SUMS}}
            for row in rows.values(column).annotate(**SUMS).order_by(column)
        ]
        totals = rows.aggregate(**SUMS)
        return Response({"usage": usage, "totals": {k: totals[k] or 0 for k in SUMS}})


urlpatterns: list[URLPattern] = [
    path("api/2.0/modelfleet/serving-endpoints/<str:name>/usage", EndpointUsageView.as_view()),
]
