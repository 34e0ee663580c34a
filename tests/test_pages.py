"""The fleet list page."""

import pytest

from tests.conftest import endpoint_body

pytestmark = pytest.mark.django_db


def test_anonymous_visitors_are_sent_to_log_in(client):
    response = client.get("/")
    assert response.status_code == 302
    assert "/login/" in response["Location"]


def test_the_fleet_list_shows_each_endpoint_with_its_status(client, user, api, registered_models):
    api.post("/api/2.0/serving-endpoints", endpoint_body("page-ep", (registered_models["iris"], "1")), format="json")
    client.force_login(user)
    response = client.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "page-ep" in html
    assert "Not ready (Updating)" in html
    assert "iris-1" in html
