"""The ray backend on a real three-node Ray cluster on this machine (tests/ray_cluster.py).

A head and two workers, each in its own network namespace with its own address, the workers as
an unprivileged user that cannot read the control plane's data directory; the whole product
(``modelfleet up``) with MODELFLEET_BACKEND=ray on the machine's own namespace. One cluster and
one stack for the module (they take about a minute to start on two cores).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from django.conf import settings

from endpoints_app.models import Deployment, Replica, ReplicaState, RuntimeHost, ScalingDecision
from tests import ray_cluster
from tests.model_fixtures import IRIS_COLUMNS
from tests.stack import Stack

_why_not = ray_cluster.available()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("e2e_token"),
    pytest.mark.skipif(_why_not is not None, reason=_why_not or ""),
]

ROW = [5.1, 3.5, 1.4, 0.2]
# Each worker offers 1 CPU and 4 GB to Ray; at this scale a replica asks 0.4 CPU and 1638 MB, so a
# worker holds two replicas and the cluster four.
SCALE = "0.1"


# strace records every connect() of the nodes' processes (test_nothing_left_the_cluster_addresses).
STRACE = shutil.which("strace")


@pytest.fixture(scope="module")
def cluster():
    running = ray_cluster.start(trace_connects=STRACE is not None)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def stack(cluster, django_db_setup, django_db_blocker, registered_models, tmp_path_factory):
    """`modelfleet up` on the ray backend (overrides conftest's local one for this module)."""
    from django.db import connection

    from tests.stack import database_url, start_stack

    with django_db_blocker.unblock():
        db = database_url(connection.settings_dict)
    running = start_stack(
        database=db,
        token="",
        log_path=tmp_path_factory.mktemp("ray-stack") / "stack.log",
        extra_env={
            "MODELFLEET_BACKEND": "ray",
            "MODELFLEET_RAY_ADDRESS": cluster.client_address,
            "MODELFLEET_RAY_RESOURCE_SCALE": SCALE,
            "MODELFLEET_RUNTIME_STANDBY": "false",
            # Scaling on conftest's test time scale (tests/stack.py: scale up after 2 s of load, down
            # after 4 s without, to zero after 4 s idle); the placement tests use fixed sizes.
        },
    )
    try:
        yield running
    finally:
        running.stop()
        print("\n".join(line for line in running.log().splitlines() if line.startswith("runtime"))[-8000:])


def query(stack: Stack, endpoint: str, session: requests.Session | None = None) -> requests.Response:
    return (session or requests).post(
        f"{stack.url}/serving-endpoints/{endpoint}/invocations",
        json={"dataframe_split": {"columns": IRIS_COLUMNS, "data": [ROW]}},
        headers={"Authorization": f"Bearer {stack.token}"},
        timeout=30,
    )


def api(stack: Stack, method: str, path: str, body: dict | None = None) -> requests.Response:
    return requests.request(
        method, f"{stack.url}/api/2.0{path}", json=body, headers={"Authorization": f"Bearer {stack.token}"}, timeout=30
    )


def wait_until(condition, seconds: float, what: str) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if condition():
            return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(f"not within {seconds:.0f}s: {what}")


def two_replicas(name: str, entity: str, version: str = "1", **extra) -> dict:
    return {
        "name": name,
        "config": {
            "served_entities": [
                {
                    "entity_name": entity,
                    "entity_version": version,
                    "min_provisioned_concurrency": 8,
                    "max_provisioned_concurrency": 8,
                    "scale_to_zero_enabled": False,
                    **extra,
                }
            ]
        },
    }


def ready_hosts(endpoint: str) -> list[str]:
    return sorted(
        Replica.objects.filter(deployment__endpoint__name=endpoint, state=ReplicaState.READY).values_list(
            "host", flat=True
        )
    )


def test_the_workers_cannot_read_the_control_planes_data(cluster):
    data_dir = str(settings.DATA_DIR)
    probe = subprocess.run(
        ["ip", "netns", "exec", cluster.workers[0].netns, "runuser", "-u", ray_cluster.USER, "--", "ls", data_dir],
        capture_output=True,
        text=True,
    )
    assert probe.returncode != 0, probe.stdout
    # The nodes have no route beyond the cluster's subnet: nothing they run reaches another address.
    routes = subprocess.run(
        ["ip", "netns", "exec", cluster.workers[0].netns, "ip", "route"], capture_output=True, text=True
    ).stdout
    assert "default" not in routes


def test_an_80_20_update_under_steady_load_loses_nothing(stack, registered_models):
    iris = registered_models["iris"]
    small = {"workload_size": "Small", "scale_to_zero_enabled": False}
    body = {"name": "ray-split", "config": {"served_entities": [{"entity_name": iris, "entity_version": "1", **small}]}}
    assert api(stack, "POST", "/serving-endpoints", body).status_code == 200
    wait_until(
        lambda: api(stack, "GET", "/serving-endpoints/ray-split").json()["state"]["ready"] == "READY", 180, "READY"
    )
    results: list[int] = []
    stop = threading.Event()

    def load() -> None:
        session = requests.Session()
        while not stop.is_set():
            try:
                results.append(query(stack, "ray-split", session).status_code)
            except requests.RequestException:
                results.append(0)
            time.sleep(0.05)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        update = {
            "served_entities": [
                {"entity_name": iris, "entity_version": "1", **small},
                {"entity_name": iris, "entity_version": "2", **small},
            ],
            "traffic_config": {
                "routes": [
                    {"served_model_name": "iris-1", "traffic_percentage": 80},
                    {"served_model_name": "iris-2", "traffic_percentage": 20},
                ]
            },
        }
        assert api(stack, "PUT", "/serving-endpoints/ray-split/config", update).status_code == 200
        wait_until(
            lambda: (
                api(stack, "GET", "/serving-endpoints/ray-split").json()["state"]["config_update"] == "NOT_UPDATING"
            ),
            180,
            "the update done",
        )
        time.sleep(2)
    finally:
        stop.set()
        thread.join()
    print(f"ray 80/20 update: {len(results)} queries, {sum(r != 200 for r in results)} failed")
    assert results and all(r == 200 for r in results), [r for r in results if r != 200]
    assert len(ready_hosts("ray-split")) == 2
    assert api(stack, "DELETE", "/serving-endpoints/ray-split").status_code == 200
    wait_until(lambda: not ready_hosts("ray-split"), 60, "its replicas stopped")


def serving(stack: Stack, endpoint: str) -> bool:
    """READY and not updating: what the SDK's create_and_wait waits for."""
    state = api(stack, "GET", f"/serving-endpoints/{endpoint}").json()["state"]
    return state["ready"] == "READY" and state["config_update"] == "NOT_UPDATING"


def decisions(endpoint: str) -> list[str]:
    return list(
        ScalingDecision.objects.filter(deployment__endpoint__name=endpoint)
        .order_by("at")
        .values_list("reason", flat=True)
    )


def delete(stack: Stack, endpoint: str) -> None:
    assert api(stack, "DELETE", f"/serving-endpoints/{endpoint}").status_code == 200
    wait_until(lambda: not ready_hosts(endpoint), 60, f"the replicas of {endpoint} stopped")


def test_an_idle_entity_scales_to_zero_on_ray_and_the_next_queries_wake_it(stack, cluster, registered_models):
    """The local backend's scale to zero (tests/test_e2e_scaling.py) on Ray: idle for the test-sized
    4 s, the replica's actor goes; queries at zero are held while a new one is placed, none fails."""
    entity = {"entity_name": registered_models["iris"], "entity_version": "1", "workload_size": "Small"}
    body = {"name": "ray-zero", "config": {"served_entities": [{**entity, "scale_to_zero_enabled": True}]}}
    assert api(stack, "POST", "/serving-endpoints", body).status_code == 200
    wait_until(lambda: serving(stack, "ray-zero"), 120, "READY")
    assert ready_hosts("ray-zero")[0] in {w.address for w in cluster.workers}
    assert query(stack, "ray-zero").status_code == 200
    wait_until(lambda: Deployment.objects.get(endpoint__name="ray-zero").desired_replicas == 0, 30, "scale to zero")
    wait_until(lambda: not ready_hosts("ray-zero"), 30, "no replica left after scale to zero")
    got = api(stack, "GET", "/serving-endpoints/ray-zero").json()
    assert got["state"]["ready"] == "READY"
    assert got["config"]["served_entities"][0]["scaled_to_zero"] is True

    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: query(stack, "ray-zero"), range(4)))
    cold = time.monotonic() - started
    print(f"ray wake-up from zero: {cold:.1f}s")
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers if a.status_code != 200]
    assert all(a.json() == {"predictions": [0]} for a in answers)
    assert cold < 30
    assert ready_hosts("ray-zero")[0] in {w.address for w in cluster.workers}  # placed on Ray again
    reasons = decisions("ray-zero")
    assert any("scale to zero" in r for r in reasons) and any("woken up" in r for r in reasons), reasons
    # The endpoint's metrics count the wake-up as on the local backend (the charts read them).
    from endpoints_app.monitoring.metrics import parse_prometheus

    text = api(stack, "GET", "/serving-endpoints/ray-zero/metrics").text
    samples = {name: value for name, _labels, value in parse_prometheus(text)}
    assert samples["cold_starts_total"] >= 2  # the first start, and the wake-up
    assert 0 < samples["cold_start_duration_seconds"] < 30
    delete(stack, "ray-zero")


def test_replicas_follow_the_load_on_ray(stack, cluster, registered_models):
    """The local backend's autoscaling on Ray: a second replica is placed under load (2 s of more
    than 3 requests in flight per replica) and drained after it (4 s)."""
    body = two_replicas("ray-scale", registered_models["slow"])
    body["config"]["served_entities"][0].update(min_provisioned_concurrency=4, max_provisioned_concurrency=8)
    assert api(stack, "POST", "/serving-endpoints", body).status_code == 200
    wait_until(lambda: serving(stack, "ray-scale"), 120, "READY")
    assert len(ready_hosts("ray-scale")) == 1
    stop = threading.Event()
    failures: list[int] = []

    def client() -> None:
        session = requests.Session()
        while not stop.is_set():
            answer = session.post(
                f"{stack.url}/serving-endpoints/ray-scale/invocations",
                json={"inputs": [[1.0]]},
                headers={"Authorization": f"Bearer {stack.token}"},
                timeout=60,
            )
            if answer.status_code != 200:
                failures.append(answer.status_code)

    clients = [threading.Thread(target=client) for _ in range(8)]
    for c in clients:
        c.start()
    try:
        scaled = wait_until(lambda: len(ready_hosts("ray-scale")) == 2, 60, "a second replica under load")
    finally:
        stop.set()
        for c in clients:
            c.join()
    print(f"ray scale up: the second replica ready after {scaled:.1f}s of load")
    assert failures == []
    assert ready_hosts("ray-scale") == sorted(w.address for w in cluster.workers)  # spread over both
    wait_until(lambda: len(ready_hosts("ray-scale")) == 1, 60, "back to one replica after the load")
    reasons = decisions("ray-scale")
    assert "scale up" in reasons[0] and "scale down" in reasons[-1], reasons
    delete(stack, "ray-scale")


def test_two_replicas_land_on_both_workers_serve_and_survive_a_node_loss(stack, cluster, registered_models):
    created = api(stack, "POST", "/serving-endpoints", two_replicas("ray-iris", registered_models["iris"]))
    assert created.status_code == 200, created.text
    wait_until(lambda: len(ready_hosts("ray-iris")) == 2, 180, "two ready replicas")
    wait_until(
        lambda: api(stack, "GET", "/serving-endpoints/ray-iris").json()["state"]["ready"] == "READY", 60, "READY"
    )
    workers = sorted(w.address for w in cluster.workers)
    assert ready_hosts("ray-iris") == workers  # one on each worker: spread
    # The Ray nodes are reported (the API's capacity check reads them); the head offers no CPU.
    expected = {"ray:10.77.0.2": 0, "ray:10.77.0.3": 1, "ray:10.77.0.4": 1}
    wait_until(
        lambda: {h.agent_id: h.cpus for h in RuntimeHost.objects.filter(agent_id__startswith="ray:")} == expected,
        30,
        "the Ray nodes reported",
    )

    answer = query(stack, "ray-iris")
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == [0]
    # The replicas' logs came back from the nodes through the backend.
    deployment = Deployment.objects.get(endpoint__name="ray-iris")
    logs = api(stack, "GET", f"/serving-endpoints/ray-iris/served-models/{deployment.served_entity_name}/logs")
    assert logs.status_code == 200, logs.text
    assert "isolation: landlock" in logs.json()["logs"] or "starting: model" in logs.json()["logs"]

    # A Large config does not fit beside it: refused before anything changes, naming what is missing.
    large = api(
        stack,
        "PUT",
        "/serving-endpoints/ray-iris/config",
        {
            "served_entities": [
                {
                    "entity_name": registered_models["iris"],
                    "entity_version": "2",
                    "workload_size": "Large",
                    "scale_to_zero_enabled": False,
                }
            ]
        },
    )
    assert large.status_code == 400, large.text
    assert "Not enough room in the Ray cluster" in large.json()["message"]
    assert "CPU" in large.json()["message"]
    gpu = api(
        stack,
        "POST",
        "/serving-endpoints",
        two_replicas("ray-gpu", registered_models["iris"], workload_type="GPU_SMALL"),
    )
    assert gpu.status_code == 400, gpu.text
    assert "T4 GPU" in gpu.json()["message"]
    assert ready_hosts("ray-iris") == workers

    # Kill every process of one worker under steady load.
    results: list[int] = []
    stop = threading.Event()

    def load() -> None:
        session = requests.Session()
        while not stop.is_set():
            try:
                results.append(query(stack, "ray-iris", session).status_code)
            except requests.RequestException:
                results.append(0)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(3)
        victim, survivor = cluster.workers
        victim.kill_all()
        killed_at = time.monotonic()
        replaced = wait_until(
            lambda: ready_hosts("ray-iris") == [survivor.address, survivor.address], 60, "a replacement on the survivor"
        )
        time.sleep(3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    failed = [r for r in results if r != 200]
    print(f"ray node loss: {len(results)} queries, {len(failed)} failed, replacement ready after {replaced:.1f}s")
    assert len(results) > 50
    assert len(failed) / len(results) < 0.01, failed
    assert replaced < 30
    assert time.monotonic() - killed_at > replaced
    # The endpoint stayed READY throughout (one replica lived).
    state = api(stack, "GET", "/serving-endpoints/ray-iris").json()["state"]
    assert state["ready"] == "READY"
    lost = Replica.objects.filter(deployment=deployment, host=victim.address).exclude(state=ReplicaState.READY)
    assert lost.exists()
    assert "replica lost" in Path(settings.RUNTIME_DIR, "deployments", str(deployment.id), "server.log").read_text()


def test_the_control_planes_ray_client_connects_nowhere_else(cluster):
    """The runtime's own connection to the cluster (ray_agent.connect, Ray Client), traced from the
    machine's namespace, where a default route exists: no connect() outside the cluster's subnet and
    loopback (Ray's node-address probe, a UDP connect to 8.8.8.8, included)."""
    if STRACE is None:
        pytest.skip("strace is not installed")
    trace = Path(cluster.root) / "client.trace"
    # Ray's client proxy starts a server per client; on a loaded machine that start can fail
    # ("Starting Ray client server failed"): a second try, as the runtime's own reconnect does.
    script = (
        "import time, django; django.setup()\n"
        "from endpoints_app.runtime.ray_agent import connect, cluster_nodes\n"
        "for attempt in range(3):\n"
        "    try:\n"
        f"        ray = connect({cluster.client_address!r})\n"
        "        break\n"
        "    except ConnectionAbortedError:\n"
        "        import ray as half_connected\n"
        "        half_connected.shutdown()\n"
        "        if attempt == 2:\n"
        "            raise\n"
        "        time.sleep(3)\n"
        "print(len(cluster_nodes(ray)))\n"
        "ray.shutdown()\n"
    )
    run = subprocess.run(
        [STRACE, "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect", "-o", str(trace), sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=settings.BASE_DIR,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "dashboard.settings"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert int(run.stdout.split()[-1]) >= 2  # it did reach the cluster: the head and a live worker or two
    text = trace.read_text()
    assert f'{cluster.head.address}"' in text  # the trace saw its connection (IPv4, or IPv4-mapped IPv6)
    assert ray_cluster.outside_connects(text) == []


def test_nothing_left_the_cluster_addresses(cluster):
    """Last in the module: over everything above (start, placements, scaling, a node's loss), no
    process of any Ray node called connect() to an address outside the cluster's subnet and
    loopback: no 8.8.8.8 probe, no cloud metadata server, no usage-stats report, no DNS."""
    if STRACE is None:
        pytest.skip("strace is not installed")
    traces = sorted(Path(cluster.root).glob("*.connects.*"))
    assert {p.name.split(".")[0] for p in traces} == {"head", "w1", "w2"}
    assert sum(p.read_text().count("AF_INET") for p in traces) > 20  # the traces did see the cluster's traffic
    assert cluster.outside_connects() == []
