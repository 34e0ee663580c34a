"""Bounded load and fault tests on loopback (issue: autoscaling, scale-to-zero, resilience).

1. 20 config updates while a client sends steady traffic → zero failed requests.
2. kill -9 of a replica under load → under 0.5 % failed, and the replica back within 10 s.
3. N wake-ups from zero (default 100) → every first request succeeds.
4. An entity that crashes at load → DEPLOYMENT_FAILED, and the previous config still serving.
Usage: python benchmarks/bench_faults.py [--wakeups 100]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import entity, start_stack  # noqa: E402


class Traffic:
    """Clients querying an endpoint in a loop until stopped; counts outcomes."""

    def __init__(self, stack, name: str, clients: int) -> None:  # type: ignore[no-untyped-def]
        self.stack, self.name = stack, name
        self.ok = 0
        self.failed: list[str] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(clients)]
        self.lock = threading.Lock()

    def _run(self) -> None:
        session = requests.Session()
        while not self.stopping.is_set():
            try:
                r = self.stack.query(self.name, session)
                good = r.status_code == 200
                detail = f"{r.status_code} {r.text[:120]}"
            except requests.RequestException as exc:
                good, detail = False, f"{type(exc).__name__}: {exc}"
            with self.lock:
                if good:
                    self.ok += 1
                else:
                    self.failed.append(detail)

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join()

    @property
    def total(self) -> int:
        return self.ok + len(self.failed)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--wakeups", type=int, default=int(os.environ.get("BENCH_WAKEUPS", "100")))
    parser.add_argument("--updates", type=int, default=20)
    args = parser.parse_args()
    stack = start_stack(MODELFLEET_SCALE_TO_ZERO_IDLE_SECONDS="1")
    rows: list[tuple[str, str, str, bool]] = []
    try:
        from endpoints_app.models import Replica, ReplicaState

        # 1. Config updates under steady traffic.
        stack.create("faults-update", entity("1"))
        started = time.monotonic()
        with Traffic(stack, "faults-update", 4) as traffic:
            outcomes = [stack.update("faults-update", entity("2" if i % 2 == 0 else "1")) for i in range(args.updates)]
        ok = not traffic.failed and all(o == "NOT_UPDATING" for o in outcomes)
        rows.append(
            (
                f"{args.updates} config updates under steady traffic",
                f"{traffic.total} requests, {len(traffic.failed)} failed, {time.monotonic() - started:.0f} s",
                "0 failed",
                ok,
            )
        )
        if traffic.failed:
            print("  first failures:", traffic.failed[:3])

        # 2. kill -9 of a replica under load.
        stack.create("faults-kill", entity("1", size="Medium"))
        with Traffic(stack, "faults-kill", 8) as traffic:
            time.sleep(3)
            victim = Replica.objects.filter(deployment__endpoint__name="faults-kill", state=ReplicaState.READY).first()
            os.kill(victim.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            recovered = None
            while time.monotonic() - killed_at < 20:
                if (
                    Replica.objects.filter(deployment__endpoint__name="faults-kill", state=ReplicaState.READY)
                    .exclude(id=victim.id)
                    .count()
                    >= 2
                ):
                    recovered = time.monotonic() - killed_at
                    break
                time.sleep(0.1)
            time.sleep(2)
        share = 100 * len(traffic.failed) / max(1, traffic.total)
        back = f"{recovered:.1f} s" if recovered is not None else "never"
        ok = share < 0.5 and recovered is not None and recovered <= 10
        rows.append(
            (
                "kill -9 of a replica under load (8 clients, Medium)",
                f"{len(traffic.failed)}/{traffic.total} failed ({share:.2f} %), back in {back}",
                "< 0.5 %, ≤ 10 s",
                ok,
            )
        )

        # 3. Wake-ups from zero.
        stack.create("faults-zero", entity("1", stz=True))
        firsts: list[float] = []
        failures = 0
        for _ in range(args.wakeups):
            seconds, status = stack.timed_wake_up("faults-zero")
            firsts.append(seconds)
            failures += status != 200
        rows.append(
            (
                f"{args.wakeups} wake-ups from zero",
                f"{args.wakeups - failures}/{args.wakeups} first requests "
                f"succeeded; cold start median {statistics.median(firsts):.2f} s, max {max(firsts):.2f} s",
                "all succeed",
                failures == 0,
            )
        )

        # 4. A model that crashes at load.
        broken_dir = Path(tempfile.mkdtemp()) / "broken"
        from endpoints_app import registry
        from tests.model_fixtures import save_broken_model

        registry.register_model_dir(save_broken_model(broken_dir), "main.default.broken")
        outcome = stack.update(
            "faults-update",
            {
                "entity_name": "main.default.broken",
                "entity_version": "1",
                "workload_size": "Small",
                "scale_to_zero_enabled": False,
            },
        )
        served = stack.query("faults-update")
        ok = outcome == "UPDATE_FAILED" and served.status_code == 200
        rows.append(
            (
                "an entity that crashes at load",
                f"update {outcome}; previous config answered {served.status_code}",
                "UPDATE_FAILED, still serving",
                ok,
            )
        )
    finally:
        stack.stop()
    print()
    print("| fault test | measured | target | result |")
    print("|---|---|---|---|")
    for name, measured, target, ok in rows:
        print(f"| {name} | {measured} | {target} | {'PASS' if ok else 'FAIL'} |")
    return 0 if all(r[3] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
