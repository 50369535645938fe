"""deploy/k8s: rendered with ``kubectl kustomize`` (the kustomize built into kubectl) and every
object validated offline against the Kubernetes JSON schemas (``kubernetes-validate``, strict:
unknown fields fail); then what the deployment promises: one GPU per worker pod, a grace
period longer than an epoch, secrets only from the Secret, probes, scrape annotations."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"  # the oldest release we claim; newer ones accept these objects

kubectl = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(
    kubectl is None,
    reason="kubectl not installed (scripts/test.sh installs Debian's kubernetes-client as root)",
)


def _render(folder: Path) -> subprocess.CompletedProcess:
    assert kubectl is not None
    return subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The manifests rendered with a secrets.env made from the example (dummy values)."""
    if kubectl is None:
        pytest.skip("kubectl not installed")
    folder = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, folder)
    example = (folder / "secrets.env.example").read_text()
    filled = example.replace("POSTGRES_PASSWORD=\n", "POSTGRES_PASSWORD=pw\n").replace(
        "BNN_TUNE_API_KEY=\n", "BNN_TUNE_API_KEY=key\n"
    )
    (folder / "secrets.env").write_text(filled.replace("PASSWORD@", "pw@"))
    result = _render(folder)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name)]
    assert len(found) == 1, (kind, name)
    return found[0]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["containers"][0]


@needs_kubectl
def test_render_fails_without_secrets() -> None:
    """No secrets.env, no deployment: a missing password is never silently defaulted."""
    assert not (K8S / "secrets.env").exists() or pytest.skip("a local secrets.env exists")
    result = _render(K8S)
    assert result.returncode != 0
    assert "secrets.env" in result.stderr


def test_every_object_is_valid_against_the_schemas(objects: list[dict[str, Any]]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {exc.path}")


def test_resource_list(objects: list[dict[str, Any]]) -> None:
    kinds = sorted(f"{o['kind']}/{o['metadata']['name'].split('-')[0]}" for o in objects)
    assert {
        "Namespace/bnn",
        "Secret/bnn",
        "StatefulSet/postgres",
        "Job/bnn",
        "ConfigMap/bnn",
        "PersistentVolumeClaim/bnn",
    } <= set(kinds)
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for kind, name in [
        ("Deployment", "bnn-tune-api"),
        ("Deployment", "bnn-tune-worker"),
        ("Deployment", "bnn-tune-dashboard"),
        ("Deployment", "pgbouncer"),
        ("Service", "api"),
        ("Service", "dashboard"),
        ("Service", "postgres"),
        ("Service", "pgbouncer"),
        ("Job", "bnn-tune-migrate"),
    ]:
        assert (kind, name) in names
    assert all(
        o["metadata"].get("namespace") == "bnn-tune" for o in objects if o["kind"] != "Namespace"
    )


def test_worker_pod(objects: list[dict[str, Any]]) -> None:
    worker = _one(objects, "Deployment", "bnn-tune-worker")
    pod = worker["spec"]["template"]["spec"]
    container = _container(worker)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["terminationGracePeriodSeconds"] >= 300
    assert "preStop" in container["lifecycle"]
    assert "--gpus" not in container["args"]  # one GPU per pod: the pod is the unit
    assert "worker.healthcheck" in " ".join(container["livenessProbe"]["exec"]["command"])
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/data"]["readOnly"] is True and "/cache" in mounts
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9100"


def test_secrets_only_through_the_secret(objects: list[dict[str, Any]]) -> None:
    secret = _one(objects, "Secret", "bnn-tune-secrets")
    rendered = yaml.safe_dump([o for o in objects if o["kind"] != "Secret"])
    assert "postgresql+psycopg://" not in rendered and "pw@" not in rendered
    assert set(secret["data"]) >= {
        "POSTGRES_PASSWORD",
        "BNN_TUNE_API_KEY",
        "BNN_TUNE_DATABASE_URL",
    }
    secret_name = secret["metadata"]["name"]  # kustomize's hash suffix, references follow it
    api = _container(_one(objects, "Deployment", "bnn-tune-api"))
    assert api["envFrom"][0]["secretRef"]["name"] == secret_name
    dashboard = _container(_one(objects, "Deployment", "bnn-tune-dashboard"))
    assert not any("postgres" in part for part in dashboard["command"])


def test_api_probes_and_scrape(objects: list[dict[str, Any]]) -> None:
    api = _one(objects, "Deployment", "bnn-tune-api")
    container = _container(api)
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert api["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    config = _one(objects, "ConfigMap", "bnn-tune-prometheus-scrape")
    scrape = yaml.safe_load(config["data"]["scrape-bnn-tune.yml"])
    assert scrape["scrape_configs"][0]["kubernetes_sd_configs"][0]["role"] == "pod"


def test_pgbouncer_pools_transactions(objects: list[dict[str, Any]]) -> None:
    env = {
        e["name"]: e.get("value")
        for e in _container(_one(objects, "Deployment", "pgbouncer"))["env"]
    }
    assert env["POOL_MODE"] == "transaction"
    assert int(env["MAX_PREPARED_STATEMENTS"]) > 0  # psycopg prepares repeated statements
    image = _container(_one(objects, "Deployment", "pgbouncer"))["image"]
    major, minor = (int(p) for p in image.split(":v")[1].split(".")[:2])
    assert (major, minor) >= (1, 21)  # the first release with max_prepared_statements
