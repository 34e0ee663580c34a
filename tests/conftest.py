"""Shared fixtures: users and tokens, registered models, an API client."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from endpoints_app import registry
from endpoints_app.services.tokens import create_token
from tests import model_fixtures

MODEL = "main.default.iris"


@pytest.fixture(scope="session")
def registered_models(django_db_setup, tmp_path_factory) -> dict[str, str]:
    """Registry entries used across tests (the registry is MLflow's, outside Django's test DB).

    iris v1 and v2 (real scikit-learn models), a constant model, one that fails to load, and two
    that take 0.5 s and 10 s per query.
    """
    base = tmp_path_factory.mktemp("models")
    if not registry.list_registered_models(MODEL):
        registry.register_model_dir(model_fixtures.save_iris_model(base / "v1"), MODEL)
        registry.register_model_dir(model_fixtures.save_iris_model(base / "v2", multiply=2), MODEL)
        registry.register_model_dir(model_fixtures.save_constant_model(base / "a", "a"), "main.default.constant")
        registry.register_model_dir(model_fixtures.save_broken_model(base / "broken"), "main.default.broken")
        registry.register_model_dir(model_fixtures.save_slow_model(base / "slow", 0.5), "main.default.slow")
        registry.register_model_dir(model_fixtures.save_slow_model(base / "very_slow", 10.0), "main.default.very_slow")
    return {
        "iris": MODEL,
        "constant": "main.default.constant",
        "broken": "main.default.broken",
        "slow": "main.default.slow",
        "very_slow": "main.default.very_slow",
    }


@pytest.fixture
def user(django_user_model):
    """An editor: may create endpoints, and manages the ones she creates."""
    from endpoints_app.models import Role, UserProfile

    alice = django_user_model.objects.create_user("alice", "alice@example.com", "pw-alice-123")
    UserProfile.objects.create(user=alice, role=Role.EDITOR)
    return alice


@pytest.fixture
def token(user) -> str:
    return create_token(user=user, comment="test")[1]


@pytest.fixture
def api(token) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def anon() -> APIClient:
    return APIClient()


def endpoint_body(name: str, *entities: tuple[str, str], routes: list[tuple[str, int]] | None = None) -> dict:
    body: dict = {
        "name": name,
        "config": {
            "served_entities": [
                {"entity_name": e, "entity_version": v, "workload_size": "Small", "scale_to_zero_enabled": False}
                for e, v in entities
            ]
        },
    }
    if routes:
        body["config"]["traffic_config"] = {
            "routes": [{"served_model_name": n, "traffic_percentage": p} for n, p in routes]
        }
    return body
