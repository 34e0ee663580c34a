"""``GET /api/2.0/modelfleet/openapi.json``: the management API's OpenAPI document."""

from __future__ import annotations

from django.urls import URLPattern, path
from rest_framework.request import Request
from rest_framework.response import Response

from endpoints_app.api.openapi import management_openapi
from endpoints_app.api.views import ApiView


class ManagementOpenApiView(ApiView):
    """Any signed-in user may read it (the default IsAuthenticated): it holds no data, only the API's
    shape, and like every API route it answers no anonymous caller."""

    def get(self, request: Request) -> Response:
        return Response(management_openapi())


urlpatterns: list[URLPattern] = [path("api/2.0/modelfleet/openapi.json", ManagementOpenApiView.as_view())]
