"""AI-gateway usage records: the recorder's upserts add up across flushes and processes; the API
shows managers everyone's use and others their own."""

from __future__ import annotations

import pytest

from endpoints_app.gateway.usage import UsageRecorder, prune
from endpoints_app.models import Endpoint, EndpointPermission, PermissionLevel, Role, UsageRecord, UserProfile
from endpoints_app.services.tokens import create_token
from tests.conftest import endpoint_body

pytestmark = pytest.mark.django_db

T0 = 1_800_000_000  # a minute boundary (divisible by 60)


@pytest.fixture
def llm(api, registered_models) -> Endpoint:
    from tests.test_api_endpoints import create

    create(api, endpoint_body("llm", (registered_models["iris"], "1")))
    return Endpoint.objects.get(name="llm")


def test_flushes_add_to_what_is_already_stored(llm):
    first, second = UsageRecorder(), UsageRecorder()  # two gateway processes
    first.observe(endpoint_id=llm.id, user_name="alice", served_entity="gpt", input_tokens=10, output_tokens=5, now=T0)
    first.observe(
        endpoint_id=llm.id, user_name="alice", served_entity="gpt", input_tokens=3, output_tokens=2, now=T0 + 59
    )
    second.observe(
        endpoint_id=llm.id, user_name="alice", served_entity="gpt", input_tokens=1, output_tokens=1, now=T0 + 1
    )
    second.observe(
        endpoint_id=llm.id, user_name="bob", served_entity="gpt", input_tokens=7, output_tokens=0, now=T0 + 60
    )
    assert first.flush() == 1 and second.flush() == 2
    assert first.flush() == 0  # nothing new
    rows = {(r.user_name, r.minute): (r.requests, r.input_tokens, r.output_tokens) for r in UsageRecord.objects.all()}
    assert rows == {("alice", T0): (3, 14, 8), ("bob", T0 + 60): (1, 7, 0)}


def test_old_usage_is_pruned(llm, settings):
    settings.USAGE_RETENTION_DAYS = 1
    recorder = UsageRecorder()
    recorder.observe(endpoint_id=llm.id, user_name="a", served_entity="gpt", input_tokens=1, output_tokens=1, now=T0)
    recorder.observe(
        endpoint_id=llm.id, user_name="a", served_entity="gpt", input_tokens=1, output_tokens=1, now=T0 + 2 * 86400
    )
    recorder.flush()
    assert prune(now=T0 + 2 * 86400 + 1) == 1
    assert list(UsageRecord.objects.values_list("minute", flat=True)) == [T0 + 2 * 86400]


def test_the_api_groups_by_user_for_managers_and_shows_others_only_their_own(api, llm, django_user_model):
    recorder = UsageRecorder()
    for user, tokens in (("alice", 10), ("alice", 20), ("carol", 5)):
        recorder.observe(
            endpoint_id=llm.id, user_name=user, served_entity="gpt", input_tokens=tokens, output_tokens=1, now=T0
        )
    recorder.flush()
    url = f"/api/2.0/modelfleet/serving-endpoints/llm/usage?start={T0 * 1000}&end={(T0 + 60) * 1000}"
    body = api.get(url).json()  # alice created it: CAN_MANAGE
    assert body["usage"] == [
        {"user": "alice", "requests": 2, "input_tokens": 30, "output_tokens": 2},
        {"user": "carol", "requests": 1, "input_tokens": 5, "output_tokens": 1},
    ]
    assert body["totals"] == {"requests": 3, "input_tokens": 35, "output_tokens": 3}

    carol = django_user_model.objects.create_user("carol", "carol@example.com", "pw-123456789")
    UserProfile.objects.create(user=carol, role=Role.NONE)
    EndpointPermission.objects.create(endpoint=llm, user=carol, level=PermissionLevel.CAN_QUERY)
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {create_token(user=carol)[1]}")
    assert client.get(url).json()["totals"] == {"requests": 1, "input_tokens": 5, "output_tokens": 1}
    assert client.get(url + "&group_by=minute").json()["usage"][0]["minute"] == T0 * 1000


@pytest.mark.parametrize("query", ["start=x", "start=10&end=5", "group_by=planet"])
def test_bad_queries_are_400(api, llm, query):
    response = api.get(f"/api/2.0/modelfleet/serving-endpoints/llm/usage?{query}")
    assert response.status_code == 400 and response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
