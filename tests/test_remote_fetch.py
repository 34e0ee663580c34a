"""A remote workspace's sweep reads its endpoints' metrics exports and logs concurrently (issue 16
part 6), stops starting calls after a 429 or past its deadline, and keeps each answer apart."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from endpoints_app.models import Endpoint
from endpoints_app.monitoring import remote
from endpoints_app.remote.transport import RateLimited


class FakeServing:
    def __init__(self, *, delay: float = 0.0, limited: str | None = None, failing: str | None = None) -> None:
        self.delay, self.limited, self.failing = delay, limited, failing
        self.calls: list[tuple[str, str]] = []
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()

    def _call(self, what: str, name: str) -> None:
        with self.lock:
            self.calls.append((what, name))
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            time.sleep(self.delay)
            if name == self.limited:
                raise RateLimited(30.0)
            if name == self.failing and what == "logs":
                raise OSError("connection reset")
        finally:
            with self.lock:
                self.in_flight -= 1

    def export_metrics(self, name: str) -> SimpleNamespace:
        self._call("export", name)
        return SimpleNamespace(contents=SimpleNamespace(read=lambda: f"# export of {name}\n".encode()))

    def logs(self, name: str, entity: str) -> SimpleNamespace:
        self._call("logs", name)
        return SimpleNamespace(logs=f"server {name}/{entity}")

    def build_logs(self, name: str, entity: str) -> SimpleNamespace:
        self._call("build", name)
        return SimpleNamespace(logs=f"build {name}/{entity}")


def endpoints(n: int) -> list[tuple[Endpoint, list[str]]]:
    return [(Endpoint(id=f"e{i:02d}", name=f"ep-{i:02d}"), ["m-1"]) for i in range(n)]


def test_calls_overlap_and_each_answer_is_its_endpoints():
    serving = FakeServing(delay=0.05, failing="ep-03")
    started = time.monotonic()
    answers = remote.fetch_answers(SimpleNamespace(serving_endpoints=serving), endpoints(16), time.monotonic() + 60)
    elapsed = time.monotonic() - started
    assert len(serving.calls) == 16 * 3
    assert serving.most_in_flight > 1 and elapsed < 16 * 3 * 0.05 / 2
    for i in range(16):
        answer = answers[f"e{i:02d}"]
        assert answer.export == f"# export of ep-{i:02d}\n" and answer.limited is None and not answer.past_deadline
        assert answer.logs[("m-1", "build")] == f"build ep-{i:02d}/m-1"
        if i == 3:
            assert isinstance(answer.logs[("m-1", "server")], OSError)  # one failed call: kept, not raised
        else:
            assert answer.logs[("m-1", "server")] == f"server ep-{i:02d}/m-1"


def test_no_call_starts_after_a_429():
    serving = FakeServing(delay=0.02, limited="ep-00")
    answers = remote.fetch_answers(SimpleNamespace(serving_endpoints=serving), endpoints(40), time.monotonic() + 60)
    assert isinstance(answers["e00"].limited, RateLimited)
    assert len(serving.calls) < 40 * 3 / 2
    stopped = [eid for eid, a in answers.items() if a.limited is not None]
    assert len(stopped) > 20


def test_past_the_deadline_no_call_starts():
    serving = FakeServing()
    answers = remote.fetch_answers(SimpleNamespace(serving_endpoints=serving), endpoints(5), time.monotonic() - 1)
    assert serving.calls == [] and all(a.past_deadline for a in answers.values())
