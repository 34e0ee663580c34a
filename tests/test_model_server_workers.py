"""A replica of several processes (runtime/model_server/workers.py): which models get them, and
that the agent still sees one replica (/health, /metrics, a stop signal, a worker that dies)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from endpoints_app.runtime.model_server import workers
from endpoints_app.runtime.model_server.metrics import Metrics
from endpoints_app.runtime.model_server.workers import Board, WorkerSlot, planned_workers
from tests.model_fixtures import _save_pyfunc, save_constant_model, save_iris_model, save_slow_model
from tests.test_model_server import AUTH, ServerProcess, metric_value, start_server, wait_ready


@pytest.fixture
def two_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: {0, 1})


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


# -- which models get more than one process -------------------------------------------------------


def test_a_custom_pyfunc_that_is_not_batched_gets_one_process_per_cpu(tmp_path: Path, two_cpus: None) -> None:
    count, why = planned_workers(0, save_constant_model(tmp_path / "m", "v1"), environ={})

    assert count == 2 and "custom python_model" in why


def test_a_library_model_keeps_one_process(tmp_path: Path, two_cpus: None) -> None:
    assert planned_workers(0, save_iris_model(tmp_path / "iris"), environ={})[0] == 1


def test_a_custom_pyfunc_declared_row_wise_gets_them_too(tmp_path: Path, two_cpus: None) -> None:
    from tests.model_fixtures import ConstantModel

    path = _save_pyfunc(tmp_path / "rowwise", ConstantModel("v1"), None)
    meta = path / "MLmodel"
    meta.write_text(meta.read_text() + "metadata:\n  modelfleet:\n    batchable: true\n")

    # Batched or not, its predict is Python holding the GIL: each worker batches its own requests.
    assert planned_workers(0, path, environ={})[0] == 2


def test_one_cpu_or_a_gpu_keeps_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_constant_model(tmp_path / "m", "v1")
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: {0})
    assert planned_workers(0, path, environ={})[0] == 1

    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert planned_workers(0, path, environ={"CUDA_VISIBLE_DEVICES": "0"})[0] == 1


def test_workers_on_the_command_line_win(tmp_path: Path) -> None:
    assert planned_workers(3, save_iris_model(tmp_path / "iris"), environ={}) == (3, "--workers")


# -- the board ------------------------------------------------------------------------------------


def test_the_board_sums_every_workers_counters_and_is_ready_only_when_all_are() -> None:
    board = Board(2)
    first, second = WorkerSlot(board, 0), WorkerSlot(board, 1)
    for slot, statuses in ((first, [200, 200, 404]), (second, [200, 500])):
        metrics = Metrics.for_replica(name="m", replica_id=0)
        for status in statuses:
            metrics.observe(status, 3.0)
        slot.publish_request(metrics, 0, time.monotonic())
    first.cells[workers.STATE] = workers.READY

    assert board.state() == "loading"
    second.cells[workers.STATE] = workers.READY
    assert board.state() == "ready"
    summed = board.summed_metrics(Metrics.for_replica(name="m", replica_id=0))
    assert (summed.request_count, summed.request_4xx_count, summed.request_5xx_count) == (5, 1, 1)
    assert summed.latency_sum_ms == 15.0 and sum(summed.latency_buckets) == 5
    second.cells[workers.STATE] = workers.FAILED
    assert board.state() == "failed"


# -- a replica of two processes -------------------------------------------------------------------


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[ServerProcess]:
    server = start_server(
        save_constant_model(tmp_path / "constant", "v1"), tmp_path, name="two-1", extra_args=("--workers", "2")
    )
    try:
        yield server
    finally:
        server.stop()


def test_two_workers_answer_as_one_replica(two_workers: ServerProcess) -> None:
    wait_ready(two_workers)
    answered_by = set()
    for _ in range(40):
        # A new connection each time, so that both workers get some.
        response = requests.post(
            f"{two_workers.url}/invocations",
            json={"inputs": [1, 2]},
            headers={**AUTH, "Connection": "close"},
            timeout=10,
        )
        assert response.json() == {"predictions": ["v1", "v1"]}
        health = requests.get(f"{two_workers.url}/health", headers={**AUTH, "Connection": "close"}, timeout=5)
        answered_by.add(health.json()["pid"])
    time.sleep(0.1)
    metrics = requests.get(f"{two_workers.url}/metrics", headers=AUTH, timeout=5).text
    health = requests.get(f"{two_workers.url}/health", headers=AUTH, timeout=5).json()

    assert len(_children(two_workers.process.pid)) == 1
    assert answered_by == {two_workers.process.pid}  # the replica's pid, whichever worker answers
    assert metric_value(metrics, "request_count_total") == 40
    assert health["requests"] == 40 and health["in_flight"] == 0 and health["status"] == "ready"
    assert "worker 1] model loaded" in two_workers.log()


def test_a_stop_signal_stops_every_worker_after_its_request_in_flight(tmp_path: Path) -> None:
    server = start_server(
        save_slow_model(tmp_path / "slow", 1.5), tmp_path, name="slow-2", extra_args=("--workers", "2")
    )
    try:
        wait_ready(server)
        children = _children(server.process.pid)
        import threading

        answers: list[requests.Response] = []
        calls = [
            threading.Thread(
                target=lambda: answers.append(
                    requests.post(
                        f"{server.url}/invocations",
                        json={"inputs": [1]},
                        headers={**AUTH, "Connection": "close"},
                        timeout=30,
                    )
                )
            )
            for _ in range(4)
        ]
        for call in calls:
            call.start()
        time.sleep(0.5)
        in_flight = requests.get(f"{server.url}/health", headers=AUTH, timeout=5).json()["in_flight"]
        server.process.send_signal(signal.SIGTERM)
        returncode = server.process.wait(timeout=30)
        for call in calls:
            call.join(timeout=30)
    finally:
        server.stop()

    assert in_flight == 4
    assert returncode == 0
    assert [answer.status_code for answer in answers] == [200] * 4
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]
    assert "worker 1] stopped" in server.log()


def test_a_worker_that_dies_takes_the_replica_down(two_workers: ServerProcess) -> None:
    wait_ready(two_workers)
    (child,) = _children(two_workers.process.pid)
    os.kill(child, signal.SIGKILL)

    assert two_workers.process.wait(timeout=30) == 6
    assert f"worker process {child} exited with code -9" in two_workers.log()
