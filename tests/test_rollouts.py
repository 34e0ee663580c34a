"""Driving a rollout: switch when ready, fail and keep the old config, time out, one chain at a time."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from endpoints_app.models import ConfigUpdate, Deployment, DeploymentState, Endpoint
from endpoints_app.services import endpoints as endpoint_services
from endpoints_app.services import rollouts
from tests.conftest import endpoint_body

pytestmark = pytest.mark.django_db


def create(user, name: str, *entities) -> Endpoint:
    endpoint = endpoint_services.create_endpoint(actor=user, body=endpoint_body(name, *entities)).applied()
    rollouts.start_rollout(endpoint_id=endpoint.id)
    return endpoint


def set_state(endpoint: Endpoint, state: str, message: str = "") -> None:
    Deployment.objects.filter(endpoint=endpoint, remove_requested_at__isnull=True, stopped_at__isnull=True).exclude(
        state=DeploymentState.READY
    ).update(state=state, state_message=message)


def test_it_switches_traffic_when_every_entity_is_ready(user, registered_models):
    endpoint = create(user, "r1", (registered_models["iris"], "1"))
    assert rollouts.advance_rollout(endpoint_id=endpoint.id, claim=False) is False
    set_state(endpoint, DeploymentState.READY)
    assert rollouts.advance_rollout(endpoint_id=endpoint.id, claim=False) is True
    endpoint.refresh_from_db()
    assert endpoint.config_update == ConfigUpdate.NOT_UPDATING
    assert endpoint.active_config.version == 1 and endpoint.pending_config is None


def test_a_failed_entity_fails_the_update_and_keeps_the_old_config(user, registered_models):
    iris = registered_models["iris"]
    endpoint = create(user, "r2", (iris, "1"))
    set_state(endpoint, DeploymentState.READY)
    rollouts.advance_rollout(endpoint_id=endpoint.id, claim=False)
    old = Deployment.objects.get(endpoint=endpoint)

    endpoint_services.update_endpoint_config(actor=user, name="r2", body=endpoint_body("r2", (iris, "2"))["config"])
    rollouts.start_rollout(endpoint_id=endpoint.id)
    set_state(endpoint, DeploymentState.FAILED, "model load failed: boom")
    assert rollouts.advance_rollout(endpoint_id=endpoint.id, claim=False) is True

    endpoint.refresh_from_db()
    assert endpoint.config_update == ConfigUpdate.UPDATE_FAILED
    assert "boom" in endpoint.config_update_message
    assert endpoint.active_config.version == 1
    assert endpoint.pending_config.version == 2
    new = Deployment.objects.exclude(id=old.id).get(endpoint=endpoint)
    assert new.remove_requested_at is not None  # failed replicas get cleaned up
    assert Deployment.objects.get(id=old.id).remove_requested_at is None  # old config keeps serving

    # After a failure a new update is allowed.
    endpoint_services.update_endpoint_config(actor=user, name="r2", body=endpoint_body("r2", (iris, "1"))["config"])
    endpoint.refresh_from_db()
    assert endpoint.config_update == ConfigUpdate.IN_PROGRESS and endpoint.pending_config.version == 3


def test_a_rollout_past_its_deadline_fails_naming_what_was_not_ready(user, registered_models):
    endpoint = create(user, "r3", (registered_models["iris"], "1"))
    Endpoint.objects.filter(id=endpoint.id).update(rollout_deadline=timezone.now() - timedelta(seconds=1))
    assert rollouts.advance_rollout(endpoint_id=endpoint.id, claim=False) is True
    endpoint.refresh_from_db()
    assert endpoint.config_update == ConfigUpdate.UPDATE_FAILED
    assert "timed out" in endpoint.config_update_message and "iris-1" in endpoint.config_update_message


def test_only_one_task_chain_drives_a_rollout(user, registered_models):
    endpoint = create(user, "r4", (registered_models["iris"], "1"))
    assert rollouts.claim_check(endpoint_id=endpoint.id) is True
    assert rollouts.claim_check(endpoint_id=endpoint.id) is False  # a second chain stops here
    assert rollouts.advance_rollout(endpoint_id=endpoint.id) is True


def test_the_sweeper_finds_rollouts_nobody_checked_recently(user, registered_models):
    endpoint = create(user, "r5", (registered_models["iris"], "1"))
    assert endpoint.id not in rollouts.lost_rollouts()
    Endpoint.objects.filter(id=endpoint.id).update(rollout_next_check_at=timezone.now() - timedelta(minutes=1))
    assert endpoint.id in rollouts.lost_rollouts()


def test_creating_enqueues_the_rollout_only_on_commit(user, registered_models, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        endpoint_services.create_endpoint(actor=user, body=endpoint_body("r6", (registered_models["iris"], "1")))
    assert len(callbacks) == 1
