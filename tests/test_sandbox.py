"""Replicas are sandboxed: a hostile model, served by the real stack, reaches nothing of the control plane.

The model below is what an attacker with the ``editor`` role would register: its predict tries
every read and connection listed in issue 11 (the secrets key, Django's key, the database, the
admin credentials, the runtime agent's environment and memory, Redis, PostgreSQL, the gateway
and another replica's port, listing DATA_DIR) and answers with what it got.  Each must be
refused, while its own model files and its scratch folder keep working.  A replica also answers
only requests that carry its credential.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import cloudpickle
import mlflow.pyfunc
import pytest
import requests
from databricks.sdk.service.serving import EndpointCoreConfigInput, ServedEntityInput
from django.conf import settings
from django.test import Client
from django.urls import reverse

from endpoints_app import encryption, registry
from endpoints_app.models import Replica, ReplicaState
from endpoints_app.services import secrets
from tests.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("e2e_token")]

MODEL = "main.default.prober"
ENDPOINT = "sandbox-probe"
SECRET_VALUE = "sk-the-models-own-api-key"


class ProbeModel(mlflow.pyfunc.PythonModel):
    """Hostile model code: tries each probe of the request's ``spec`` and reports the outcome."""

    def load_context(self, context) -> None:  # type: ignore[no-untyped-def]
        self.own_file = context.artifacts["weights"]

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        import ctypes
        import json
        import os
        import socket
        import tempfile

        spec = json.loads(model_input["spec"].iloc[0])

        def attempt(action):  # type: ignore[no-untyped-def]
            try:
                return {"ok": True, "got": repr(action())[:200]}
            except Exception as exc:  # the outcome is the answer
                return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:200]}

        def read(path):  # type: ignore[no-untyped-def]
            with open(path, "rb") as fh:
                return fh.read(64)

        def write(path):  # type: ignore[no-untyped-def]
            with open(path, "ab") as fh:
                return fh.write(b"overwritten by another deployment's model")

        def connect_unix(path):  # type: ignore[no-untyped-def]
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(path)
                s.sendall(b"PING\r\n")
                return s.recv(16)

        def connect_tcp(host, port, protocol=0):  # type: ignore[no-untyped-def]
            # protocol 262 is MPTCP, which falls back to TCP with a TCP server
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM, protocol) as s:
                s.settimeout(2)
                s.connect((socket.gethostbyname(host), port))
                return s.getpeername()

        def scratch():  # type: ignore[no-untyped-def]
            path = os.path.join(tempfile.gettempdir(), "scratch.txt")
            with open(path, "w") as fh:
                fh.write("written")
            with open(path) as fh:
                return (path, fh.read())

        results = {}
        for name, path in spec["files"].items():
            results[f"read {name}"] = attempt(lambda p=path: read(p))
        for pid in (os.getppid(), *spec["pids"]):
            results[f"environ of {pid}"] = attempt(lambda p=pid: read(f"/proc/{p}/environ"))
            results[f"mem of {pid}"] = attempt(lambda p=pid: read(f"/proc/{p}/mem"))
        for name, path in spec["unix_sockets"].items():
            results[f"unix {name}"] = attempt(lambda p=path: connect_unix(p))
        for name, (host, port) in spec["tcp"].items():
            results[f"tcp {name}"] = attempt(lambda h=host, p=port: connect_tcp(h, p))
            results[f"mptcp {name}"] = attempt(lambda h=host, p=port: connect_tcp(h, p, 262))
        for name, path in spec.get("writes", {}).items():
            results[f"write {name}"] = attempt(lambda p=path: write(p))

        def udp(port):  # type: ignore[no-untyped-def]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                return s.sendto(b"leak", ("127.0.0.1", port))

        def user_namespace():  # type: ignore[no-untyped-def]
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            return "a user namespace of its own"

        if "udp" in spec:
            results["udp"] = attempt(lambda: udp(spec["udp"]))
        results["user namespace"] = attempt(user_namespace)
        results["signal the agent"] = attempt(lambda: os.kill(os.getppid(), 0))
        results["list DATA_DIR"] = attempt(lambda: os.listdir(spec["data_dir"]))
        results["own model file"] = attempt(lambda: read(self.own_file))
        results["scratch"] = attempt(scratch)
        results["environment"] = {name: os.environ.get(name) for name in spec.get("env", [])}
        return [json.dumps(results)]


def save_probe_model(path: Path) -> Path:
    """Save ProbeModel by value (the model server cannot import this test module) with one artifact."""
    weights = path.parent / "weights.txt"
    weights.write_text("the model's own weights")
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    try:
        mlflow.pyfunc.save_model(
            str(path),
            python_model=ProbeModel(),
            artifacts={"weights": str(weights)},
            pip_requirements=[f"cloudpickle=={cloudpickle.__version__}"],
        )
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    return path


@pytest.fixture(scope="module")
def probe_model(registered_models, tmp_path_factory) -> str:  # type: ignore[no-untyped-def]
    if not registry.list_registered_models(MODEL):
        registry.register_model_dir(save_probe_model(tmp_path_factory.mktemp("prober") / "model"), MODEL)
    return MODEL


@pytest.fixture
def listener():  # type: ignore[no-untyped-def]
    """A TCP server on loopback standing in for another replica; records whether anyone connected."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[object] = []

    def accept() -> None:
        try:
            conn, _ = server.accept()
            accepted.append(conn)
        except OSError:
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    server.close()


@pytest.fixture
def udp_listener():  # type: ignore[no-untyped-def]
    """A UDP socket on loopback (the reviewer's 127.0.0.1:9 probe); yields its port and what it received."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(0.5)

    def received() -> list[bytes]:
        got = []
        try:
            while True:
                got.append(server.recv(64))
        except OSError:
            return got

    yield server.getsockname()[1], received
    server.close()


@pytest.fixture
def other_deployment() -> dict[str, str]:
    """Another deployment's log and model, as the agent lays them out, for the model to read and overwrite."""
    directory = Path(settings.RUNTIME_DIR) / "deployments" / "987654"
    (directory / "model").mkdir(parents=True, exist_ok=True)
    (directory / "model" / "MLmodel").write_text("another tenant's model")
    (directory / "server.log").write_text("another tenant's log")
    return {
        "another deployment's log": str(directory / "server.log"),
        "another deployment's model": str(directory / "model" / "MLmodel"),
        "the standby's log": str(Path(settings.RUNTIME_DIR) / "standby.log"),
    }


@pytest.fixture
def sandboxed_endpoint(stack: Stack, sdk, probe_model: str, django_user_model) -> Replica:  # type: ignore[no-untyped-def]
    """One endpoint serving the probe; its environment refers to a secret, which the agent resolves."""
    from datetime import timedelta

    admin = django_user_model.objects.get(username="e2e-admin")
    secrets.create_scope(actor=admin, scope="sandbox")
    secrets.put_secret(actor=admin, scope="sandbox", key="api-key", string_value=SECRET_VALUE)
    sdk.serving_endpoints.create_and_wait(
        name=ENDPOINT,
        config=EndpointCoreConfigInput(
            name=ENDPOINT,
            served_entities=[
                ServedEntityInput(
                    entity_name=probe_model,
                    entity_version="1",
                    workload_size="Small",
                    scale_to_zero_enabled=False,
                    environment_vars={"API_KEY": "{{secrets/sandbox/api-key}}", "PLAIN": "plain value"},
                )
            ],
        ),
        timeout=timedelta(minutes=3),
    )
    return Replica.objects.get(deployment__endpoint__name=ENDPOINT, state=ReplicaState.READY)


def _cli_profile() -> Path:
    profile = Path.home() / ".modelfleetcfg-sandbox-probe"
    profile.write_text("[DEFAULT]\nhost = http://127.0.0.1:1\ntoken = mf-not-a-real-token\n")
    profile.chmod(0o600)
    return profile


def control_plane_targets(stack: Stack, other_replica_port: int) -> dict:
    """Everything of the control plane the model must not reach, named as issue 11 names it."""
    data_dir = Path(settings.DATA_DIR)
    encryption.encrypt(b"make sure the secrets key file exists")
    canary = data_dir / "canary.txt"
    canary.write_text("control-plane data")
    files = {
        "secrets_key": data_dir / "secrets_key",
        "secret_key": data_dir / "secret_key",
        "admin-credentials.json": data_dir / "admin-credentials.json",
        "a file in DATA_DIR": canary,
        # The CLI profile holds a token in the user's home directory (~/.modelfleetcfg, as
        # ~/.databrickscfg does for the Databricks CLI): a stand-in with the same mode.
        "the CLI profile in the home directory": _cli_profile(),
    }
    database = settings.DATABASES["default"]
    tcp = {"the gateway": ("127.0.0.1", urlparse(stack.url).port), "another replica": ("127.0.0.1", other_replica_port)}
    if database["ENGINE"].endswith("sqlite3"):
        files["the database"] = Path(database["NAME"])
    else:
        tcp["PostgreSQL"] = (database.get("HOST") or "127.0.0.1", int(database.get("PORT") or 5432))
    redis = urlparse(os.environ["REDIS_URL"])
    unix_sockets = {}
    if redis.scheme == "unix":
        unix_sockets["Redis"] = redis.path
    else:
        tcp["Redis"] = (redis.hostname, redis.port or 6379)
    return {
        "files": {name: str(path) for name, path in files.items() if path.exists()},
        "pids": [stack.process.pid],  # the supervisor; the agent is the replica's parent
        "unix_sockets": unix_sockets,
        "tcp": tcp,
        "data_dir": str(data_dir),
        "env": ["API_KEY", "PLAIN", "DATABASE_URL", "MODELFLEET_SECRET_KEY", "MODELFLEET_REPLICA_CREDENTIAL"],
    }


def test_a_hostile_model_reaches_nothing_of_the_control_plane(  # type: ignore[no-untyped-def]
    stack, sandboxed_endpoint, listener, udp_listener, other_deployment
):
    port, accepted = listener
    spec = control_plane_targets(stack, port)
    assert {"secrets_key", "secret_key", "a file in DATA_DIR", "the CLI profile in the home directory"} <= set(
        spec["files"]
    )  # real targets
    spec["files"].update(other_deployment)
    # Writes: another deployment's files, and /dev/shm, which every process of the host shares.
    spec["writes"] = {**other_deployment, "/dev/shm": "/dev/shm/modelfleet-replica-channel"}
    spec["udp"], udp_received = udp_listener
    spec["env"].append("JOBLIB_MULTIPROCESSING")
    response = requests.post(
        f"{stack.url}/serving-endpoints/{ENDPOINT}/invocations",
        json={"dataframe_records": [{"spec": json.dumps(spec)}]},
        headers={"Authorization": f"Bearer {stack.token}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    results = json.loads(response.json()["predictions"][0])

    environment = results.pop("environment")
    reached = {name: r for name, r in results.items() if r["ok"] and name not in ("own model file", "scratch")}
    assert reached == {}
    for name, result in results.items():
        if name not in ("own model file", "scratch"):
            assert "Permission denied" in result["error"] or "not permitted" in result["error"], (name, result)
    assert accepted == []  # nothing connected to the other replica's port
    assert udp_received() == []  # nor sent a datagram
    assert {"udp", "user namespace", "signal the agent", "write /dev/shm", "write another deployment's log"} <= set(
        results
    )
    assert Path(other_deployment["another deployment's log"]).read_text() == "another tenant's log"
    assert not Path("/dev/shm/modelfleet-replica-channel").exists()
    assert results["own model file"] == {"ok": True, "got": repr(b"the model's own weights")}
    assert results["scratch"]["ok"] and "written" in results["scratch"]["got"]
    assert str(Path(settings.RUNTIME_DIR) / "scratch") in results["scratch"]["got"]  # TMPDIR is its own
    # Its environment: its own variables, the secret resolved by the agent; nothing of the control plane.
    assert environment == {
        "API_KEY": SECRET_VALUE,
        "PLAIN": "plain value",
        "DATABASE_URL": None,
        "MODELFLEET_SECRET_KEY": None,
        "MODELFLEET_REPLICA_CREDENTIAL": None,
        "JOBLIB_MULTIPROCESSING": "0",  # multiprocessing has no /dev/shm: joblib uses threads, without a warning
    }
    # The admin credentials are not on disk at all.
    assert not (Path(settings.DATA_DIR) / "admin-credentials.json").exists()


def test_the_replica_answers_only_with_its_credential_and_reports_its_isolation(  # type: ignore[no-untyped-def]
    stack, sandboxed_endpoint, django_user_model
):
    replica = sandboxed_endpoint
    url = f"http://{replica.host}:{replica.port}"
    body = {"dataframe_records": [{"spec": json.dumps(control_plane_targets(stack, 1))}]}

    without = requests.post(f"{url}/invocations", json=body, timeout=30)
    wrong = requests.post(f"{url}/invocations", json=body, headers={"Authorization": "Bearer guess"}, timeout=30)
    health = requests.get(f"{url}/health", timeout=5)
    right = requests.post(
        f"{url}/invocations", json=body, headers={"Authorization": f"Bearer {replica.credential}"}, timeout=30
    )

    assert [without.status_code, wrong.status_code, health.status_code] == [401, 401, 401]
    assert without.json()["error_code"] == "UNAUTHENTICATED"
    assert right.status_code == 200 and "predictions" in right.json()
    assert len(replica.credential) >= 43
    assert replica.isolation.startswith("landlock-abi") and "seccomp" in replica.isolation
    log = (Path(settings.RUNTIME_DIR) / "deployments" / str(replica.deployment_id) / "server.log").read_text()
    assert f"isolation: {replica.isolation}" in log
    admin = django_user_model.objects.get(username="e2e-admin")
    client = Client()
    client.force_login(admin)
    page = client.get(reverse("endpoint_detail", args=[ENDPOINT]))
    assert page.status_code == 200
    assert f"sandbox: {replica.isolation}" in page.content.decode()
