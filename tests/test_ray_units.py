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
