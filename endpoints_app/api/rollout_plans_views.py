"""Rollout plans of an endpoint (``services.rollout_plans``): list and start (GET / POST
``…/rollouts``), one plan (GET ``…/rollouts/<id>``), and its actions (POST ``…/rollouts/<id>/
pause|resume|abort|promote|close``). Reading needs CAN_VIEW, everything else CAN_MANAGE."""

from __future__ import annotations

from collections.abc import Callable

from django.urls import URLPattern, path
from rest_framework.response import Response

from endpoints_app.api.serializers.rollout_plans import serialize_rollout_plan
from endpoints_app.api.views import ApiView, request_body
from endpoints_app.authenticated import AuthenticatedRequest
from endpoints_app.models import RolloutPlan
from endpoints_app.services import rollout_plans


class RolloutPlanListView(ApiView):
    def get(self, request: AuthenticatedRequest, name: str) -> Response:
        plans = rollout_plans.list_plans(actor=request.user, name=name)
        return Response({"rollouts": [serialize_rollout_plan(p) for p in plans]})

    def post(self, request: AuthenticatedRequest, name: str) -> Response:
        plan = rollout_plans.start_plan(actor=request.user, name=name, body=request_body(request))
        return Response(serialize_rollout_plan(plan))


class RolloutPlanDetailView(ApiView):
    def get(self, request: AuthenticatedRequest, name: str, plan_id: int) -> Response:
        return Response(serialize_rollout_plan(rollout_plans.get_plan(actor=request.user, name=name, plan_id=plan_id)))


def _action(service: Callable[..., RolloutPlan]) -> type[ApiView]:
    class RolloutPlanActionView(ApiView):
        def post(self, request: AuthenticatedRequest, name: str, plan_id: int) -> Response:
            return Response(serialize_rollout_plan(service(actor=request.user, name=name, plan_id=plan_id)))

    return RolloutPlanActionView


ACTIONS: dict[str, Callable[..., RolloutPlan]] = {
    "pause": rollout_plans.pause,
    "resume": rollout_plans.resume,
    "abort": rollout_plans.abort,
    "promote": rollout_plans.promote,
    "close": rollout_plans.close,
}
MF = "api/2.0/modelfleet/serving-endpoints/<str:name>/rollouts"
urlpatterns: list[URLPattern] = [
    path(MF, RolloutPlanListView.as_view()),
    path(f"{MF}/<int:plan_id>", RolloutPlanDetailView.as_view()),
    *(path(f"{MF}/<int:plan_id>/{verb}", _action(service).as_view()) for verb, service in ACTIONS.items()),
]
