"""Usage of an AI-gateway endpoint (``ai_gateway.usage_tracking_config``).

``GET /api/2.0/modelfleet/serving-endpoints/<name>/usage?start=<ms>&end=<ms>&group_by=user|served_entity|minute``
→ ``{"usage": [{<group>, "requests", "input_tokens", "output_tokens"}], "totals": {...}}``.
Callers with CAN_MANAGE see everyone's use; others with CAN_VIEW see their own.
"""

from __future__ import annotations

from django.db.models import Sum
from django.urls import URLPattern, path
from rest_framework.response import Response

from endpoints_app import access
from endpoints_app.api.serializers.usage import USAGE_SUMS, serialize_usage
from endpoints_app.api.views import ApiView
from endpoints_app.authenticated import AuthenticatedRequest
from endpoints_app.filters import UsageFilterSet
from endpoints_app.filters.fields import to_epoch_seconds
from endpoints_app.models import PermissionLevel, UsageRecord

COLUMNS = {"user": "user_name", "served_entity": "served_entity", "minute": "minute"}


class EndpointUsageView(ApiView):
    def get(self, request: AuthenticatedRequest, name: str) -> Response:
        endpoint = self.endpoint(request, name, PermissionLevel.CAN_VIEW)
        filters = UsageFilterSet(request.query_params)
        filters.raise_if_invalid()
        start, end = to_epoch_seconds(filters.value("start")), to_epoch_seconds(filters.value("end"))
        rows = UsageRecord.objects.filter(endpoint=endpoint, minute__gte=start, minute__lt=end)
        if access.endpoint_level(request.user, endpoint) != PermissionLevel.CAN_MANAGE:
            rows = rows.filter(user_name=request.user.get_username())
        group_by = filters.value("group_by")
        column = COLUMNS[group_by]
        sums = {k: Sum(k) for k in USAGE_SUMS}
        groups = rows.values(column).annotate(**sums).order_by(column)
        return Response(serialize_usage(groups, rows.aggregate(**sums), group_by=group_by, column=column))


urlpatterns: list[URLPattern] = [
    path("api/2.0/modelfleet/serving-endpoints/<str:name>/usage", EndpointUsageView.as_view()),
]
