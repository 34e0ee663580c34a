"""A remote workspace's sweep reads its endpoints' metrics exports and logs concurrently (issue 16
part 6), stops starting calls after a 429 or past its deadline, and keeps each answer apart."""

from __future__ import annotations

import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from endpoints_app.egress import parse_allow_list
from endpoints_app.models import Endpoint
from endpoints_app.monitoring import remote
from endpoints_app.remote import client as remote_client
from endpoints_app.remote.transport import RateLimited, ResponseTooLarge


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
        return SimpleNamespace(contents=SimpleNamespace(read=lambda size=-1: f"# export of {name}\n".encode()))

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


def test_build_logs_are_read_only_for_the_endpoints_named():
    serving = FakeServing()
    answers = remote.fetch_answers(
        SimpleNamespace(serving_endpoints=serving), endpoints(4), time.monotonic() + 60, build={"e01"}
    )
    assert sorted(name for what, name in serving.calls if what == "build") == ["ep-01"]
    assert len([c for c in serving.calls if c[0] == "logs"]) == 4
    assert ("m-1", "build") in answers["e01"].logs and ("m-1", "build") not in answers["e02"].logs


def test_an_endpoints_build_logs_are_due_once_in_a_cycle_and_always_while_it_is_not_ready():
    ready = Endpoint(id="e-ready", remote_state={"ready": "READY", "config_update": "NOT_UPDATING"})
    start = datetime(2026, 12, 8, tzinfo=UTC)
    step = timedelta(seconds=remote.interval_seconds())
    cycle = [start + step * i for i in range(remote.BUILD_LOG_EVERY_SWEEPS)]
    assert sum(remote.build_logs_due(ready, now=now) for now in cycle) == 1
    for state in (
        {"ready": "NOT_READY", "config_update": "NOT_UPDATING"},
        {"ready": "READY", "config_update": "IN_PROGRESS"},
    ):
        updating = Endpoint(id="e-updating", remote_state=state)
        assert all(remote.build_logs_due(updating, now=now) for now in cycle)


@pytest.fixture
def endless_metrics(settings):
    """A hostile remote whose metrics export never ends (chunked, 64 KiB at a time)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    settings.EGRESS_ALLOW = parse_allow_list(f"127.0.0.1:{port}")
    sent = [0]

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            if b"/metrics" not in data:  # the SDK's discovery of the host's config
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return serve()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
            try:
                while sent[0] < 1024 * 1024 * 1024:
                    conn.sendall(chunk)
                    sent[0] += 65536
            except OSError:
                return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", sent
    listener.close()


def test_an_endless_metrics_export_is_cut_at_its_bound(endless_metrics):
    host, sent = endless_metrics
    client = remote_client.workspace_client(host=host, token="dapi-secret", for_poll=True)
    with pytest.raises(ResponseTooLarge):
        remote.export_text(client, Endpoint(id="e1", name="big"))
    assert sent[0] < 4 * remote.MAX_EXPORT_BYTES  # read up to the bound, not the gigabyte offered


def test_the_clients_session_skips_the_environment_but_keeps_its_ca_bundle(settings, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # never used: the adapter ignores proxies
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/company-ca.pem")
    settings.EGRESS_ALLOW = parse_allow_list("127.0.0.1:9")
    client = remote_client.workspace_client(host="http://127.0.0.1:9", token="dapi-x", for_poll=True)
    session = client.api_client._api_client._session
    assert session.trust_env is False and session.verify == "/etc/ssl/certs/company-ca.pem"
