"""The log-lines API: search, filter and page through the log lines the poller stored.

``GET /api/2.0/modelfleet/serving-endpoints/<name>/log-lines`` answers
``{"lines": [{"ts", "level", "served_model_name", "replica", "kind", "message"}], "next_page_token"}``
(``ts`` in epoch milliseconds; ``next_page_token`` null on the last page). The Databricks routes
``…/served-models/<name>/logs`` and ``/build-logs`` stay as they are: they read the files.
"""

from __future__ import annotations

from django.urls import URLPattern, path
from rest_framework.response import Response

from endpoints_app.api.serializers.logs import serialize_log_line
from endpoints_app.api.views import ApiView
from endpoints_app.authenticated import AuthenticatedRequest
from endpoints_app.filters import LogLineFilterSet
from endpoints_app.models import PermissionLevel
from endpoints_app.monitoring import logs


class LogLinesView(ApiView):
    """Filtered by ``LogLineFilterSet``, the endpoint page's log tail's filters too."""

    def get(self, request: AuthenticatedRequest, name: str) -> Response:
        endpoint = self.endpoint(request, name, PermissionLevel.CAN_VIEW)
        filters = LogLineFilterSet(request.query_params)
        filters.raise_if_invalid()
        page = logs.log_lines(endpoint=endpoint, query=filters.log_query())
        return Response(
            {"lines": [serialize_log_line(line) for line in page.lines], "next_page_token": page.next_page_token}
        )


urlpatterns: list[URLPattern] = [
    path("api/2.0/modelfleet/serving-endpoints/<str:name>/log-lines", LogLinesView.as_view()),
]
