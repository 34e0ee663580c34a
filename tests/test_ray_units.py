"""The ray backend's pieces that need no cluster: what a replica asks for, the capacity check
against reported Ray nodes, and how a node takes a model (digest, unsafe archives)."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest
from django.utils import timezone

from endpoints_app import capacity
from endpoints_app.errors import InvalidParameterValue
from endpoints_app.runtime import ray_replica
from endpoints_app.validation import parse_core_config

pytestmark = pytest.mark.django_db


@pytest.fixture
def ray_settings(settings):
    settings.SERVING_BACKEND = "ray"
    settings.RAY_RESOURCE_SCALE = 0.1
    settings.REPLICA_CONCURRENCY = 4
    return settings


def node(address: str, cpus: int, memory_mb: int, gpus: list[dict] | None = None) -> None:
    from endpoints_app.models import RuntimeHost

    RuntimeHost.objects.create(
        agent_id=f"ray:{address}", cpus=cpus, memory_mb=memory_mb, gpus=gpus or [], heartbeat_at=timezone.now()
    )


def config(**entity) -> object:
    return parse_core_config(
        {"served_entities": [{"entity_name": "m", "entity_version": "1", "scale_to_zero_enabled": False, **entity}]}
    )


def test_a_replica_asks_one_cpu_and_4_gb_per_request_it_takes_scaled(settings):
    settings.RAY_RESOURCE_SCALE = 1.0
    assert capacity.ray_replica_resources("CPU") == capacity.ReplicaResources(4.0, 16384)  # Small: 4 CPU, 16 GB
    settings.RAY_RESOURCE_SCALE = 0.1
    small = capacity.ray_replica_resources(None)
    assert (small.cpus, small.memory_mb, small.gpus) == (0.4, 1638, 0)
    assert capacity.ray_replica_resources("MULTIGPU_MEDIUM").gpus == 4
    assert capacity.ray_replica_resources("GPU_SMALL").accelerator == "T4"


def test_configs_that_fit_the_reported_nodes_pass(ray_settings):
    node("10.0.0.1", 0, 20000)  # a head without CPUs
    node("10.0.0.2", 1, 4096)
    node("10.0.0.3", 1, 4096)
    capacity.check_fits(config(workload_size="Medium"))  # 2 replicas of 0.4 CPU
    capacity.check_fits(config(min_provisioned_concurrency=16, max_provisioned_concurrency=16))  # 4


def test_large_on_small_nodes_is_refused_naming_what_is_missing(ray_settings):
    node("10.0.0.2", 1, 2048)  # one replica's memory each
    node("10.0.0.3", 1, 2048)
    capacity.check_fits(config(workload_size="Medium"))  # 2 replicas
    with pytest.raises(InvalidParameterValue) as refused:
        capacity.check_fits(config(workload_size="Large"))  # 4 replicas
    message = refused.value.message
    assert "Not enough room in the Ray cluster" in message
    assert "starts 4 replica(s) of 0.4 CPU, 1638 MB memory each" in message
    assert "only 2 fit on the 2 node(s)" in message
    assert "is missing 1228 MB memory" in message


def test_a_gpu_workload_on_cpu_nodes_is_refused_naming_the_gpu(ray_settings):
    node("10.0.0.2", 8, 65536)
    with pytest.raises(InvalidParameterValue) as refused:
        capacity.check_fits(config(workload_size="Small", workload_type="GPU_MEDIUM"))
    assert "1 A10G GPU" in refused.value.message
    node("10.0.0.4", 8, 65536, gpus=[{"index": "0", "name": "A10G", "memory_mb": 0}])
    capacity.check_fits(config(workload_size="Small", workload_type="GPU_MEDIUM"))


def test_without_reported_nodes_nothing_is_refused(ray_settings):
    capacity.check_fits(config(workload_size="Large"))


def test_a_model_reaches_a_node_by_digest_and_is_cached(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "MLmodel").write_text("flavors: {}\n")
    data, digest = ray_replica.pack_model(model)
    assert digest == hashlib.sha256(data).hexdigest()
    cache = tmp_path / "cache"
    placed = ray_replica.unpack_model(data, digest, cache)
    assert (placed / "MLmodel").read_text() == "flavors: {}\n"
    # Cached: the bytes are not even looked at again.
    assert ray_replica.unpack_model(b"", digest, cache) == placed


def test_a_model_whose_digest_does_not_match_is_refused(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "MLmodel").write_text("x")
    data, digest = ray_replica.pack_model(model)
    tampered = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(ray_replica.ArtifactError, match="digest mismatch"):
        ray_replica.unpack_model(tampered, digest, tmp_path / "cache")
    assert not (tmp_path / "cache" / digest).exists()


@pytest.mark.parametrize("kind", ["symlink", "escape", "device"])
def test_an_archive_with_links_devices_or_escaping_paths_is_refused(tmp_path, kind):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("evil")
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/shadow"
        elif kind == "device":
            info.type = tarfile.CHRTYPE
        else:
            info.name = "../../escaped"
            payload = b"x"
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
            info = None
        if info is not None:
            tar.addfile(info)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    with pytest.raises((ray_replica.ArtifactError, tarfile.TarError)):
        ray_replica.unpack_model(data, digest, tmp_path / "cache")
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "cache" / digest).exists()


# --- nothing phones home: the traces' check, the node launcher, the compose profile ----------------


def test_the_trace_check_passes_the_cluster_and_loopback_and_shows_anything_else():
    from tests.ray_cluster import outside_connects

    inside = [
        '1 connect(6, {sa_family=AF_INET, sin_port=htons(6380), sin_addr=inet_addr("10.77.0.2")}, 16) = 0',
        "2 connect(7, {sa_family=AF_INET6, sin6_port=htons(6380), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "
        '"::ffff:10.77.0.3", &sin6_addr), sin6_scope_id=0}, 28) = -1 EINPROGRESS',
        '3 connect(8, {sa_family=AF_INET, sin_port=htons(9), sin_addr=inet_addr("127.0.0.1")}, 16) = -1 ECONNREFUSED',
        '4 connect(9, {sa_family=AF_INET6, sin6_port=htons(80), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "::1", '
        "&sin6_addr), sin6_scope_id=0}, 28) = 0",
        '5 connect(3, {sa_family=AF_UNIX, sun_path="/tmp/ray/session/sockets/raylet"}, 110) = 0',
    ]
    outside = [
        '6 connect(14, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("8.8.8.8")}, 16) = -1 ENETUNREACH',
        "7 connect(14, {sa_family=AF_INET6, sin6_port=htons(53), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "
        '"2001:4860:4860::8888", &sin6_addr), sin6_scope_id=0}, 28) = -1 ENETUNREACH',
        '8 connect(23, {sa_family=AF_INET, sin_port=htons(80), sin_addr=inet_addr("169.254.169.254")}, 16) = -1',
        '9 connect(23, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.77.1.2")}, 16) = -1',
        "10 connect(5, {sa_family=AF_INET, sa_data=unexpected}, 16) = 0",  # not understood: shown
    ]
    assert outside_connects("\n".join(inside + outside)) == outside


def test_the_node_launcher_wants_the_nodes_address(capsys):
    from endpoints_app.runtime import ray_node

    assert ray_node.main(["start", "--head", "--port", "6380"]) == 2
    assert "--node-ip-address" in capsys.readouterr().err
    assert ray_node.main([]) == 2
    assert ray_node.node_ip(["start", "--node-ip-address", "10.0.0.5"]) == "10.0.0.5"
    assert ray_node.node_ip(["start", "--node-ip-address=10.0.0.6", "--head"]) == "10.0.0.6"


def test_the_launcher_answers_the_nodes_address_without_probing(monkeypatch):
    """In `ray start`'s own process, "this node's address" is the one given, not a UDP connect to 8.8.8.8."""
    import ray
    import ray._private.services as services

    from endpoints_app.runtime import ray_node

    monkeypatch.setattr(services, "get_node_ip_address", services.get_node_ip_address)  # restored after
    monkeypatch.setattr(ray.util, "get_node_ip_address", ray.util.get_node_ip_address)

    def probe(address=None):  # noqa: ANN001, ANN202
        raise AssertionError(f"probed {address or '8.8.8.8'}")

    monkeypatch.setattr(services, "node_ip_address_from_perspective", probe)
    ray_node.answer_node_ip("10.77.0.9")
    assert services.get_node_ip_address() == "10.77.0.9"
    assert ray.util.get_node_ip_address() == "10.77.0.9"
    with pytest.raises(AssertionError, match="10.77.0.2:6380"):  # towards the head: Ray's own (in-cluster) probe
        services.get_node_ip_address("10.77.0.2:6380")


def test_rays_switches_the_launcher_relies_on_do_what_it_says(tmp_path, monkeypatch):
    """The installed Ray: with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 its node-address lookup answers
    loopback without probing; with ~/ray_bootstrap_config.yaml its usage module asks no cloud
    metadata server; RAY_USAGE_STATS_REPORT_URL moves the "disabled" report."""
    import os
    import subprocess
    import sys

    from endpoints_app.runtime import ray_node

    script = (
        "import ray._private.services as s\n"
        "def probe(address=None): raise SystemExit('probed')\n"
        "s.node_ip_address_from_perspective = probe\n"
        "print(s.get_node_ip_address())\n"
    )
    env = {**os.environ, ray_node.NO_IP_PROBE[0]: ray_node.NO_IP_PROBE[1]}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "127.0.0.1", run.stdout + run.stderr

    environ = {"HOME": str(tmp_path)}
    bootstrap = ray_node.prepare(environ)
    assert bootstrap == tmp_path / "ray_bootstrap_config.yaml" and bootstrap.exists()
    assert environ["RAY_USAGE_STATS_ENABLED"] == "0"
    from ray._common.usage import usage_lib

    def metadata() -> str:
        raise AssertionError("asked a cloud metadata server")

    monkeypatch.setattr(usage_lib, "get_cloud_from_metadata_requests", metadata)
    assert usage_lib.get_cluster_config_to_report(str(bootstrap)).cloud_provider is None
    monkeypatch.setenv("RAY_USAGE_STATS_REPORT_URL", environ["RAY_USAGE_STATS_REPORT_URL"])
    assert usage_lib._usage_stats_report_url().startswith("http://127.0.0.1:")
    bootstrap.write_text("kept: true\n")
    ray_node.prepare(environ)
    assert bootstrap.read_text() == "kept: true\n"  # an existing one (e.g. an autoscaler's) is kept


def test_the_compose_ray_profile_starts_a_quiet_head_and_workers_from_the_same_image():
    """docker-compose.yml's ray profile, structurally (no Docker here): both nodes from the product's
    image through the launcher, with valid `ray start` options for the installed Ray."""
    import shlex
    from pathlib import Path

    import yaml
    from ray.scripts.scripts import start

    root = Path(__file__).resolve().parent.parent
    compose = yaml.safe_load((root / "docker-compose.yml").read_text())
    services = compose["services"]
    head, worker = services["ray-head"], services["ray-worker"]
    assert compose["x-modelfleet"]["image"] == head["image"] == worker["image"]
    assert "MODELFLEET_EXTRAS" in compose["x-modelfleet"]["build"]["args"]
    assert (
        'pip install --no-cache-dir "${wheel}${MODELFLEET_EXTRAS:+[$MODELFLEET_EXTRAS]}"'
        in (root / "Dockerfile").read_text()
    )
    for name, service in services.items():  # the profile is opt-in: nothing else starts Ray
        assert ("ray" in service.get("profiles", [])) == name.startswith("ray-"), name
    for service in (head, worker):
        env = service["environment"]
        assert env["RAY_USAGE_STATS_ENABLED"] == "0"
        assert env["RAY_USAGE_STATS_REPORT_URL"].startswith("http://127.0.0.1:")
        assert env["MLFLOW_DISABLE_TELEMETRY"] == "true" and env["DO_NOT_TRACK"] == "true"
        assert "volumes" not in service  # no shared disk: nothing of the control plane's data
    assert worker["depends_on"] == {"ray-head": {"condition": "service_healthy"}}
    assert head["healthcheck"]["test"][:2] == ["CMD", "ray"]

    def argv(service: dict) -> list[str]:
        shell, dash_c, line = service["command"]
        assert (shell, dash_c) == ("sh", "-c")
        words = shlex.split(line.replace("$$(hostname -i | cut -d' ' -f1)", "10.0.0.5"))
        assert words[:5] == ["exec", "python", "-m", "endpoints_app.runtime.ray_node", "start"], words
        start.make_context("start", words[5:])  # every option is one of the installed `ray start`'s
        return words[5:]

    head_args, worker_args = argv(head), argv(worker)
    for args in (head_args, worker_args):
        assert args[args.index("--node-ip-address") + 1] == "10.0.0.5"
        assert "--disable-usage-stats" in args and "--block" in args
    assert "--head" in head_args and head_args[head_args.index("--port") + 1] == "6380"  # Valkey keeps 6379
    assert head_args[head_args.index("--include-dashboard") + 1] == "false"
    assert head_args[head_args.index("--num-cpus") + 1] == "0"  # the head holds no replicas
    assert head_args[head_args.index("--ray-client-server-port") + 1] == "10001"
    assert worker_args[worker_args.index("--address") + 1] == "ray-head:6380"
    pyproject = (root / "pyproject.toml").read_text()
    assert "\nray = [" in pyproject
