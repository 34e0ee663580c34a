"""``PUT /api/2.0/serving-endpoints/<name>/ai-gateway`` (SDK ``put_ai_gateway``, CLI ``put-ai-gateway``).

The body is an ``AiGatewayConfig`` (reference §2.9); the response is what is now stored, the same
five fields (an empty body unsets the settings and answers ``{}``). Needs CAN_MANAGE, honours
If-Match, and where a policy requires approval answers 403 saying how to propose the change.
"""

from __future__ import annotations

from django.urls import URLPattern, path
from rest_framework.response import Response

from endpoints_app.api.views import ApiView, if_match, request_body
from endpoints_app.authenticated import AuthenticatedRequest
from endpoints_app.services import ai_gateway


class EndpointAiGatewayView(ApiView):
    def put(self, request: AuthenticatedRequest, name: str) -> Response:
        outcome = ai_gateway.put_ai_gateway(
            actor=request.user, name=name, body=request_body(request), if_match=if_match(request)
        )
        return Response(outcome.applied() or {})


urlpatterns: list[URLPattern] = [
    path("api/2.0/serving-endpoints/<str:name>/ai-gateway", EndpointAiGatewayView.as_view()),
]
