"""The Kubernetes manifests of the control plane (deploy/kubernetes) against the Kubernetes API's
own schemas (kubernetes-validate bundles them: no network), and what they must say."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (a dev extra)")

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
KUBERNETES_VERSION = "1.30"  # the oldest minor release the manifests promise to fit


def documents() -> list[tuple[str, dict]]:
    docs = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return docs


@pytest.mark.parametrize(("where", "doc"), documents(), ids=[w for w, _ in documents()])
def test_each_manifest_is_valid_kubernetes(where, doc):
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_a_bad_manifest_is_refused():
    """The validation is real: a Deployment with a misspelt field fails it."""
    _, web = next((w, d) for w, d in documents() if d["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(web))
    broken["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_control_plane_is_web_worker_beat_and_runtime_with_external_database_and_redis():
    deployments = {d["metadata"]["name"]: d for _, d in documents() if d["kind"] == "Deployment"}
    assert set(deployments) == {"modelfleet-web", "modelfleet-worker", "modelfleet-beat", "modelfleet-runtime"}
    kinds = {d["kind"] for _, d in documents()}
    assert "StatefulSet" not in kinds  # PostgreSQL and Redis are external services
    for deployment in deployments.values():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            sources = {next(iter(s)) + ":" + next(iter(s.values()))["name"] for s in container["envFrom"]}
            assert sources == {"configMapRef:modelfleet-config", "secretRef:modelfleet-secrets"}
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    for name in ("modelfleet-beat", "modelfleet-runtime"):  # never two at once
        assert deployments[name]["spec"]["replicas"] == 1
        assert deployments[name]["spec"]["strategy"]["type"] == "Recreate"
    config = next(d for _, d in documents() if d["kind"] == "ConfigMap")["data"]
    assert config["MODELFLEET_BACKEND"] == "ray" and config["MODELFLEET_RAY_ADDRESS"].startswith("ray://")
    assert config["MLFLOW_DISABLE_TELEMETRY"] == "true" and config["DO_NOT_TRACK"] == "true"
    assert config["RAY_USAGE_STATS_ENABLED"] == "0"
    assert not any(k in config for k in ("DATABASE_URL", "REDIS_URL", "MODELFLEET_SECRET_KEY"))
