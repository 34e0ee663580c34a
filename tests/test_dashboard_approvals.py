"""The change-request pages (list, detail with the diff, approve / reject) and the audit log page."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from endpoints_app import audit
from endpoints_app.models import (
    ApprovalPolicy,
    AuditEvent,
    ChangeRequest,
    Endpoint,
    EndpointPermission,
    PermissionLevel,
    Role,
)
from endpoints_app.services import changes, proposals
from endpoints_app.services import endpoints as endpoint_services
from tests.conftest import endpoint_body
from tests.test_api_endpoints import create, mark_ready
from tests.test_dashboard_edit import make_user

pytestmark = pytest.mark.django_db
IRIS = "main.default.iris"


def split(v1: int, v2: int) -> dict:
    return endpoint_body("x", (IRIS, "1"), (IRIS, "2"), routes=[("iris-1", v1), ("iris-2", v2)])["config"]


@pytest.fixture
def ab(api, registered_models) -> Endpoint:
    create(api, endpoint_body("ab", (IRIS, "1"), (IRIS, "2"), routes=[("iris-1", 50), ("iris-2", 50)]))
    mark_ready("ab")
    ApprovalPolicy.objects.create(endpoint_name="ab")
    return Endpoint.objects.get(name="ab")


@pytest.fixture
def proposal(user, ab) -> ChangeRequest:
    """alice (an editor) proposes 90/10."""
    return proposals.propose(actor=user, endpoint_name="ab", action="update_config", body=split(90, 10))


def row_class(html: str, request_id: int) -> str:
    """The class attribute of the list row that links to this change request."""
    match = re.search(rf'<tr( class="[^"]*")?>\s*<td data-label="#"><a href="/change-requests/{request_id}/">', html)
    assert match, f"no row for change request {request_id}"
    return match.group(1) or ""


@pytest.fixture
def paula(django_user_model):
    return make_user(django_user_model, "paula", Role.APPROVER)


# --- the list ----------------------------------------------------------------------------------


def test_an_approver_sees_every_change_request_with_pending_ones_highlighted(client, user, paula, proposal):
    older = proposals.propose(actor=user, endpoint_name="ab", action="delete", body={})
    changes.reject(actor=paula, request=older, comment="no")
    client.force_login(paula)
    response = client.get("/change-requests/")
    assert response.status_code == 200
    html = response.content.decode()
    assert row_class(html, proposal.pk) == ' class="pending"'
    assert row_class(html, older.pk) == ""
    assert re.search(r'<span class="count"[^>]*>1\b', html)  # the nav badge: one pending


def test_others_see_only_their_own_change_requests(client, django_user_model, proposal):
    client.force_login(make_user(django_user_model, "bob", Role.EDITOR))
    response = client.get("/change-requests/")
    assert response.status_code == 200 and f"/change-requests/{proposal.pk}/" not in response.content.decode()
    assert client.get(f"/change-requests/{proposal.pk}/").status_code == 404
    assert client.post(f"/change-requests/{proposal.pk}/approve").status_code == 404
    assert ChangeRequest.objects.get(pk=proposal.pk).status == "PENDING"


def test_the_list_filters_by_status_and_endpoint(client, user, paula, proposal, api):
    create(api, endpoint_body("other", (IRIS, "1")))
    mark_ready("other")
    ApprovalPolicy.objects.create(endpoint_name="other")
    other = proposals.propose(actor=user, endpoint_name="other", action="delete", body={})
    changes.reject(actor=paula, request=other)
    client.force_login(paula)
    pending = client.get("/change-requests/", {"status": "PENDING"}).content.decode()
    assert f"/change-requests/{proposal.pk}/" in pending and f"/change-requests/{other.pk}/" not in pending
    by_name = client.get("/change-requests/", {"endpoint_name": "other"}).content.decode()
    assert f"/change-requests/{other.pk}/" in by_name and f"/change-requests/{proposal.pk}/" not in by_name


def test_the_list_reads_a_fixed_number_of_queries(client, user, paula, ab, django_assert_max_num_queries):
    for _ in range(30):
        proposals.propose(actor=user, endpoint_name="ab", action="delete", body={})
    client.force_login(paula)
    with django_assert_max_num_queries(8):
        response = client.get("/change-requests/")
    assert response.content.decode().count('<tr class="pending">') == 25  # one page of 30
    assert "page=2" in response.content.decode()


# --- the detail and the decision ----------------------------------------------------------------


def test_the_detail_shows_the_diff_and_the_proposed_split(client, paula, proposal):
    client.force_login(paula)
    response = client.get(f"/change-requests/{proposal.pk}/")
    assert response.status_code == 200
    html = response.content.decode()
    assert re.search(r'<span class="diff-del">-\s+&quot;traffic_percentage&quot;: 50\s*</span>', html)
    assert re.search(r'<span class="diff-add">\+\s+&quot;traffic_percentage&quot;: 90\s*</span>', html)
    assert '<td data-label="Traffic">90%</td>' in html and '<td data-label="Traffic">10%</td>' in html
    assert "Approve and apply" in html and "Reject" in html


def test_the_author_gets_no_approve_button_and_the_server_refuses_anyway(client, django_user_model, ab):
    # An approver who proposes: the page hides the decision, the service refuses it.
    quinn = make_user(django_user_model, "quinn", Role.APPROVER)
    EndpointPermission.objects.create(endpoint=ab, user=quinn, level=PermissionLevel.CAN_MANAGE)
    mine = proposals.propose(actor=quinn, endpoint_name="ab", action="delete", body={})
    client.force_login(quinn)
    page = client.get(f"/change-requests/{mine.pk}/").content.decode()
    assert "Approve and apply" not in page and "Another approver decides it" in page
    response = client.post(f"/change-requests/{mine.pk}/approve", {"comment": "self"})
    assert response.status_code == 403 and "cannot approve or reject your own" in response.content.decode()
    assert ChangeRequest.objects.get(pk=mine.pk).status == "PENDING"


def test_an_editor_author_sees_the_request_but_no_decision(client, user, proposal):
    client.force_login(user)
    page = client.get(f"/change-requests/{proposal.pk}/").content.decode()
    assert "Approve and apply" not in page and "You proposed this change" in page
    assert client.post(f"/change-requests/{proposal.pk}/approve").status_code == 403


def test_an_approver_approves_with_a_comment_and_it_is_applied(client, paula, proposal):
    client.force_login(paula)
    response = client.post(f"/change-requests/{proposal.pk}/approve", {"comment": "ship it"}, follow=True)
    assert response.redirect_chain == [(f"/change-requests/{proposal.pk}/", 302)]
    assert "Approved and applied" in response.content.decode() and "ship it" in response.content.decode()
    proposal.refresh_from_db()
    assert proposal.status == "APPLIED" and proposal.decided_by == paula and proposal.comment == "ship it"
    config = Endpoint.objects.get(name="ab").pending_config
    assert [r["traffic_percentage"] for r in config.traffic_config["routes"]] == [90, 10]


def test_an_approver_rejects_with_a_comment(client, paula, proposal):
    client.force_login(paula)
    response = client.post(f"/change-requests/{proposal.pk}/reject", {"comment": "not now"}, follow=True)
    assert "Rejected</strong> by paula" in response.content.decode()
    proposal.refresh_from_db()
    assert proposal.status == "REJECTED" and proposal.comment == "not now"
    assert Endpoint.objects.get(name="ab").config_versions.count() == 1


def test_a_stale_request_is_shown_as_stale(client, django_user_model, paula, proposal):
    admin = django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-long-enough-1")
    # An admin changes the endpoint directly (the policy binds others) after the proposal.
    endpoint_services.patch_endpoint_tags(actor=admin, name="ab", body={"add_tags": [{"key": "team", "value": "ml"}]})
    client.force_login(paula)
    response = client.post(f"/change-requests/{proposal.pk}/approve", {"comment": ""})
    assert response.status_code == 409
    html = response.content.decode()
    assert "Stale: not applied." in html and "/endpoints/ab/edit" in html
    assert ChangeRequest.objects.get(pk=proposal.pk).status == "STALE"
    assert Endpoint.objects.get(name="ab").config_versions.count() == 1


def test_a_decided_request_cannot_be_decided_again(client, django_user_model, paula, proposal):
    client.force_login(paula)
    assert client.post(f"/change-requests/{proposal.pk}/approve").status_code == 302
    client.force_login(make_user(django_user_model, "quinn", Role.APPROVER))
    response = client.post(f"/change-requests/{proposal.pk}/reject")
    assert response.status_code == 409 and "is already APPLIED" in response.content.decode()


def test_decisions_are_posts_with_a_csrf_token(paula, proposal):
    client = Client(enforce_csrf_checks=True)
    client.force_login(paula)
    assert client.get(f"/change-requests/{proposal.pk}/approve").status_code == 405
    assert client.post(f"/change-requests/{proposal.pk}/approve").status_code == 403  # no token
    assert ChangeRequest.objects.get(pk=proposal.pk).status == "PENDING"


# --- the audit log -----------------------------------------------------------------------------


@pytest.fixture
def admin(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-123")


def test_the_audit_log_is_for_admins_only(client, user, paula, admin, ab):
    assert client.get("/audit/").status_code == 302  # to the sign-in page
    for someone in (user, paula):
        client.force_login(someone)
        assert client.get("/audit/").status_code == 403
    client.force_login(admin)
    response = client.get("/audit/")
    assert response.status_code == 200 and "endpoint.create" in response.content.decode()


def test_the_audit_log_shows_before_and_after(client, paula, admin, proposal):
    changes.approve(actor=paula, request=proposal, comment="ok")
    client.force_login(admin)
    html = client.get("/audit/", {"action": "endpoint.update_config"}).content.decode()
    assert "<code>endpoint.update_config</code>" in html and "<code>endpoint.create</code>" not in html
    assert re.search(r'<span class="diff-add">\+\s+&quot;traffic_percentage&quot;: 90\s*</span>', html)


def test_the_audit_log_filters_by_actor_object_and_time(client, user, paula, admin, proposal):
    client.force_login(admin)
    by_actor = client.get("/audit/", {"actor": "alice"}).content.decode()
    assert "change_request.propose" in by_actor and "approval_policy" not in by_actor
    by_object = client.get("/audit/", {"object_type": "change_request", "object_name": "ab"}).content.decode()
    assert "change_request.propose" in by_object and "<code>endpoint.create</code>" not in by_object
    later = (timezone.now() + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    future = client.get("/audit/", {"since": later}).content.decode()
    assert "No audit events match these filters" in future
    past = client.get("/audit/", {"until": later}).content.decode()
    assert "change_request.propose" in past


def test_the_audit_log_pages_newest_first(client, admin, django_assert_max_num_queries):
    for i in range(60):
        audit.record(actor=admin, action="test.event", object_type="thing", object_name=f"thing-{i:02d}")
    client.force_login(admin)
    with django_assert_max_num_queries(8):
        first = client.get("/audit/", {"action": "test."}).content.decode()
    assert first.count("<code>test.event</code>") == 50 and "thing-59" in first and "thing-09" not in first
    older = AuditEvent.objects.filter(object_name="thing-10").get().id
    assert f"before={older}" in first
    second = client.get("/audit/", {"action": "test.", "before": older}).content.decode()
    assert second.count("<code>test.event</code>") == 10 and "thing-09" in second and "thing-10" not in second
