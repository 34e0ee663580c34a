"""Log cursors made in bulk (issue 16 part 6): one INSERT ... ON CONFLICT DO NOTHING."""

from __future__ import annotations

import pytest

from endpoints_app.models import Deployment, Endpoint, LogCursor, LogKind
from endpoints_app.monitoring import logs

pytestmark = pytest.mark.django_db


def deployment(name: str) -> Deployment:
    endpoint = Endpoint.objects.create(name=name)
    return Deployment.objects.create(
        endpoint=endpoint,
        endpoint_name=name,
        served_entity_name="m-1",
        spec_hash="x",
        spec={},
        model_name="m",
        model_version="1",
    )


def test_missing_cursors_are_made_at_offset_zero_and_existing_ones_kept():
    old, new = deployment("cursors-old"), deployment("cursors-new")
    LogCursor.objects.create(deployment=old, kind=LogKind.SERVER, offset=123)
    cursors = logs.cursors_for([old, new])
    assert sorted(cursors) == sorted((d.id, k) for d in (old, new) for k in LogKind.values)
    assert cursors[(old.id, LogKind.SERVER)].offset == 123
    assert all(c.offset == 0 for key, c in cursors.items() if key != (old.id, LogKind.SERVER))
    assert all(c.updated_at is not None for c in cursors.values())
    # Made once: a second call (or a concurrent poll's) finds them all.
    again = logs.cursors_for([old, new])
    assert {k: c.id for k, c in again.items()} == {k: c.id for k, c in cursors.items()}
    assert LogCursor.objects.count() == 4
