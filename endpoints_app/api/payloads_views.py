"""API views for logged payloads (inference tables).

``GET /api/2.0/modelfleet/serving-endpoints/<name>/payloads`` → ``{"payloads": [...],
"next_page_token": "..."}``, newest first; ``next_page_token`` is omitted on the last page (the
Databricks list convention). Query parameters: ``served_model``, ``status`` (404 or 5xx),
``since`` / ``until`` (epoch ms, inclusive / exclusive), ``client_request_id``, ``limit``
(1–1000, default 100), ``page_token``, ``include_bodies`` (default true).
"""

from __future__ import annotations

from typing import Any

from django.urls import URLPattern, path
from rest_framework.response import Response

from endpoints_app.api.serializers.payloads import serialize_payload
from endpoints_app.api.views import ApiView
from endpoints_app.authenticated import AuthenticatedRequest
from endpoints_app.filters import PayloadFilterSet
from endpoints_app.filters.fields import to_epoch_ms
from endpoints_app.models import PermissionLevel
from endpoints_app.monitoring import payloads


class EndpointPayloadsView(ApiView):
    def get(self, request: AuthenticatedRequest, name: str) -> Response:
        endpoint = self.endpoint(request, name, PermissionLevel.CAN_MANAGE)
        filters = PayloadFilterSet(request.query_params)
        filters.raise_if_invalid()
        since, until = filters.range()
        include_bodies = filters.value("include_bodies")
        page = payloads.payload_logs(
            endpoint,
            served_entity=filters.value("served_model") or None,
            status=filters.value("status") or None,
            since_ms=to_epoch_ms(since) if since is not None else None,
            until_ms=to_epoch_ms(until) if until is not None else None,
            client_request_id=filters.value("client_request_id") or None,
            limit=filters.value("limit"),
            after=filters.value("page_token"),
            include_bodies=include_bodies,
        )
        body: dict[str, Any] = {"payloads": [serialize_payload(r, include_bodies=include_bodies) for r in page.rows]}
        if page.next_page_token:
            body["next_page_token"] = page.next_page_token
        return Response(body)


urlpatterns: list[URLPattern] = [
    path("api/2.0/modelfleet/serving-endpoints/<str:name>/payloads", EndpointPayloadsView.as_view()),
]
