"""docker-compose.yml: valid for Debian's docker-compose v1 (offline, no daemon), the services
and GPU reservation the deployment docs promise, and each service's command run for real."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from worker.cli import build_parser, free_port

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
PER_GPU = ROOT / "docker" / "compose.per-gpu.yml"
SERVICES = {"db", "migrate", "api", "worker", "dashboard"}
BNN_TUNE = str(Path(sys.executable).parent / "bnn-tune")

needs_compose = pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose not installed (scripts/test.sh installs it: apt-get install "
    "--no-install-recommends docker-compose)",
)


def _compose(*args: str, password: str | None = "dummy-password") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"}
    if password is not None:
        env["POSTGRES_PASSWORD"] = password
    return subprocess.run(
        ["docker-compose", "--project-directory", str(ROOT), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """The file as docker-compose itself resolves it (interpolation, anchors, merges)."""
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose not installed")
    result = _compose("-f", str(COMPOSE), "config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@needs_compose
def test_config_is_valid() -> None:
    result = _compose("-f", str(COMPOSE), "config", "-q")
    assert result.returncode == 0, result.stderr


@needs_compose
def test_password_is_required() -> None:
    result = _compose("-f", str(COMPOSE), "config", "-q", password=None)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


@needs_compose
def test_per_gpu_override_is_valid() -> None:
    result = _compose("-f", str(COMPOSE), "-f", str(PER_GPU), "config", "--services")
    assert result.returncode == 0, result.stderr
    assert {"worker-gpu0", "worker-gpu1"} <= set(result.stdout.split())


def test_no_version_key_and_all_services(raw: dict[str, Any]) -> None:
    assert "version" not in raw
    assert set(raw["services"]) == SERVICES
    assert "db-data" in raw["volumes"]


def test_db_has_volume_and_healthcheck(raw: dict[str, Any]) -> None:
    db = raw["services"]["db"]
    assert db["image"].startswith("postgres:16")
    assert any(v.startswith("db-data:") for v in db["volumes"])
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert "${POSTGRES_PASSWORD:?" in db["environment"]["POSTGRES_PASSWORD"]


def test_dependencies_wait_for_db_and_migration(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    for name in ("api", "worker", "dashboard"):
        depends = services[name]["depends_on"]
        assert depends["db"]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert "127.0.0.1:8000/health" in " ".join(services["api"]["healthcheck"]["test"])


def test_worker_reserves_gpus_and_scales(resolved: dict[str, Any]) -> None:
    worker = resolved["services"]["worker"]
    device = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    # --scale worker=N needs no fixed name and no host ports.
    assert "container_name" not in worker and "ports" not in worker
    assert any(v.endswith(":/data:ro") for v in map(_volume_text, worker["volumes"]))
    assert worker["environment"]["BNN_DATA_DIR"] == "/data"


def test_dashboard_bound_to_localhost(resolved: dict[str, Any]) -> None:
    ports = resolved["services"]["dashboard"]["ports"]
    assert ports and all(_host_ip(p) == "127.0.0.1" for p in ports)


def test_every_service_shares_one_database(resolved: dict[str, Any]) -> None:
    urls = {
        resolved["services"][name]["environment"]["BNN_TUNE_DATABASE_URL"]
        for name in ("migrate", "api", "worker", "dashboard")
    }
    assert urls == {"postgresql+psycopg://postgres:dummy-password@db:5432/bnn_tune"}


def test_service_commands_parse(raw: dict[str, Any]) -> None:
    """Every bnn-tune command in the compose file is one the CLI accepts."""
    for name, service in raw["services"].items():
        command = service.get("command")
        if isinstance(command, list) and command[0] == "bnn-tune":
            args = build_parser().parse_args(command[1:])
            assert args.command == command[1], name


def test_dockerfiles() -> None:
    api = (ROOT / "docker" / "Dockerfile.api").read_text()
    worker = (ROOT / "docker" / "Dockerfile.worker").read_text()
    assert "torch" not in "\n".join(
        line for line in api.splitlines() if not line.lstrip().startswith("#")
    ).replace("no torch", "")
    assert "TORCH_VERSION=2.13.0" in worker
    assert "download.pytorch.org/whl/cu128" in worker
    assert '".[train]"' in worker


@pytest.mark.postgres
def test_migrate_command(fresh_postgres_url: str) -> None:
    """The migrate service's command against a real PostgreSQL (idempotent: twice)."""
    env = {**os.environ, "BNN_TUNE_DATABASE_URL": fresh_postgres_url}
    for _ in range(2):
        result = subprocess.run(
            [BNN_TUNE, "migrate"], capture_output=True, text=True, env=env, timeout=120
        )
        assert result.returncode == 0, result.stderr
        assert "up to date" in result.stdout


@pytest.mark.postgres
def test_serve_command_answers_health(postgres_url: str) -> None:
    """The api service's command answers the healthcheck's URL."""
    port = free_port()
    env = {**os.environ, "BNN_TUNE_DATABASE_URL": postgres_url}
    process = subprocess.Popen(
        [BNN_TUNE, "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        response = _wait_for(f"http://127.0.0.1:{port}/health", process)
        assert response.status_code == 200
        ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5)
        assert ready.status_code == 200, ready.text
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_worker_command_runs(fresh_sqlite_url: str) -> None:
    """The worker service's command, for real: polls, finds no study, exits (--once)."""
    pytest.importorskip("torch")
    env = {**os.environ, "BNN_TUNE_DATABASE_URL": fresh_sqlite_url, "BNN_TUNE_DEVICE": "cpu"}
    result = subprocess.run(
        [BNN_TUNE, "worker", "--once"], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "polling" in result.stderr


def test_worker_command_help() -> None:
    result = subprocess.run([BNN_TUNE, "worker", "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--device" in result.stdout


def _wait_for(url: str, process: subprocess.Popen, timeout: float = 60) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            raise AssertionError(f"server exited {process.returncode}: {output[-2000:]}")
        try:
            return httpx.get(url, timeout=2)
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout}s")


def _volume_text(volume: Any) -> str:
    if isinstance(volume, str):
        return volume
    mode = ":ro" if volume.get("read_only") else ""
    return f"{volume.get('source')}:{volume['target']}{mode}"


def _host_ip(port: Any) -> str:
    if isinstance(port, dict):
        return str(port.get("host_ip", ""))
    return str(port).split(":")[0]
