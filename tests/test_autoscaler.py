"""Autoscaling decisions and capacity rules (pure logic; the e2e tests drive the real agent)."""

from __future__ import annotations

import pytest

from endpoints_app import capacity
from endpoints_app.runtime.autoscaler import History, Policy, Sample, decide

POLICY = Policy(
    min_replicas=1, max_replicas=4, scale_to_zero=False, target_in_flight=3, up_delay=5, down_delay=30, idle_seconds=60
)


def history(*in_flights: float, ready: int = 1, idle: float = 0.0, start: float = 0.0) -> History:
    h = History()
    for i, value in enumerate(in_flights):
        h.add(Sample(at=start + i, ready=ready, in_flight=value, idle_seconds=idle))
    return h


def test_sustained_load_scales_up_to_what_the_in_flight_requests_need():
    h = history(*[10] * 7)
    assert decide(desired=1, policy=POLICY, history=h, now=6, wake_pending=False)[0] == 4  # ceil(10/3) = 4
    h = history(*[7] * 7)
    target, reason = decide(desired=1, policy=POLICY, history=h, now=6, wake_pending=False)
    assert target == 3 and "scale up" in reason and "7" in reason


def test_a_short_burst_changes_nothing():
    h = history(0, 0, 0, 0, 12, 0, 0)
    assert decide(desired=1, policy=POLICY, history=h, now=6, wake_pending=False) is None


def test_it_never_goes_past_the_bounds():
    assert decide(desired=4, policy=POLICY, history=history(*[100] * 7, ready=4), now=6, wake_pending=False) is None


def test_scale_down_waits_for_the_longer_delay():
    h = history(*[1] * 20, ready=3)
    assert decide(desired=3, policy=POLICY, history=h, now=19, wake_pending=False) is None  # only 19 s of quiet
    h = history(*[1] * 32, ready=3)
    target, reason = decide(desired=3, policy=POLICY, history=h, now=31, wake_pending=False)
    assert target == 1 and "scale down" in reason


def test_decisions_wait_until_the_replicas_are_ready():
    assert decide(desired=3, policy=POLICY, history=history(*[100] * 7, ready=2), now=6, wake_pending=False) is None


def test_idle_scale_to_zero_and_wake_up():
    policy = Policy(
        min_replicas=0,
        max_replicas=1,
        scale_to_zero=True,
        target_in_flight=3,
        up_delay=5,
        down_delay=30,
        idle_seconds=60,
    )
    assert decide(desired=1, policy=policy, history=history(0, idle=59), now=0, wake_pending=False) is None
    target, reason = decide(desired=1, policy=policy, history=history(0, idle=61), now=0, wake_pending=False)
    assert target == 0 and "no request for 61 s" in reason
    assert decide(desired=0, policy=policy, history=History(), now=0, wake_pending=False) is None
    assert decide(desired=0, policy=policy, history=History(), now=0, wake_pending=True)[0] == 1


@pytest.mark.parametrize(
    ("size", "stz", "expected"),
    [
        ("Small", False, (1, 1)),
        ("Small", True, (0, 1)),
        ("Medium", False, (2, 4)),
        ("Large", False, (4, 16)),
        ("Large", True, (0, 16)),
    ],
)
def test_workload_sizes_map_to_replica_ranges(size, stz, expected):
    r = capacity.replica_range(workload_size=size, min_pc=None, max_pc=None, scale_to_zero=stz)
    assert (r.min_replicas, r.max_replicas) == expected


def test_provisioned_concurrency_maps_to_replicas():
    r = capacity.replica_range(workload_size="", min_pc=6, max_pc=13, scale_to_zero=False)
    assert (r.min_replicas, r.max_replicas) == (2, 4)
