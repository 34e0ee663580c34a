"""Autoscaling decisions: how many replicas a deployment should have, and why.

Inputs are samples of the deployment's ready replicas taken about once a second by the agent:
requests in flight (summed over replicas) and the time since the last request. The rules:

1. Wake-up: a scaled-to-zero deployment with a pending wake request (a query is waiting in the
   gateway) goes to max(1, min) replicas at once.
2. Scale to zero: with scale-to-zero on, no request in flight and none for the idle window on
   any replica, every replica is stopped.
3. Follow the load: the replicas needed for the in-flight requests at the target per replica,
   between the bounds. Up only when every sample of the up-delay window wants more; down only
   when every sample of the (longer) down-delay window wants fewer. Short bursts change nothing.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sample:
    at: float  # monotonic seconds
    ready: int
    in_flight: float
    idle_seconds: float


@dataclass(frozen=True)
class Policy:
    min_replicas: int
    max_replicas: int
    scale_to_zero: bool
    target_in_flight: float
    up_delay: float
    down_delay: float
    idle_seconds: float


@dataclass
class History:
    samples: deque[Sample] = field(default_factory=lambda: deque(maxlen=4000))

    def add(self, sample: Sample) -> None:
        self.samples.append(sample)

    def window(self, now: float, seconds: float) -> list[Sample]:
        return [s for s in self.samples if s.at >= now - seconds]

    def covers(self, now: float, seconds: float) -> bool:
        return bool(self.samples) and self.samples[0].at <= now - seconds


def wanted(sample: Sample, policy: Policy) -> int:
    need = math.ceil(sample.in_flight / policy.target_in_flight) if sample.in_flight > 0 else 0
    return max(max(1, policy.min_replicas), min(policy.max_replicas, need))


def decide(*, desired: int, policy: Policy, history: History, now: float, wake_pending: bool) -> tuple[int, str] | None:
    """The new desired replica count and the reason, or None to keep ``desired``."""
    floor = max(1, policy.min_replicas)
    if desired == 0:
        if wake_pending:
            return floor, "woken up by a query waiting in the gateway"
        return None
    latest = history.samples[-1] if history.samples else None
    if latest is None or latest.ready < desired:
        return None  # still starting or recovering: decide on a settled deployment only
    if (
        policy.scale_to_zero
        and policy.min_replicas == 0
        and latest.in_flight == 0
        and latest.idle_seconds >= policy.idle_seconds
    ):
        return 0, f"scale to zero: no request for {latest.idle_seconds:.0f} s (idle window {policy.idle_seconds:.0f} s)"
    if history.covers(now, policy.up_delay):
        window = history.window(now, policy.up_delay)
        want = min(wanted(s, policy) for s in window)
        if want > desired:
            peak = min(s.in_flight for s in window)
            return want, (
                f"scale up: at least {peak:g} requests in flight for {policy.up_delay:.0f} s "
                f"(target {policy.target_in_flight:g} per replica)"
            )
    if history.covers(now, policy.down_delay):
        window = history.window(now, policy.down_delay)
        want = max(wanted(s, policy) for s in window)
        if want < desired:
            peak = max(s.in_flight for s in window)
            return want, (
                f"scale down: at most {peak:g} requests in flight for {policy.down_delay:.0f} s "
                f"(target {policy.target_in_flight:g} per replica)"
            )
    return None
