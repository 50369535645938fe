"""docker-compose.yml, .env.example and the images: valid for Debian's docker-compose v1
(offline, no daemon), required secrets, healthchecks, one worker container for every GPU, pinned
versions, and each service's command (and healthcheck command) run for real."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from service.cli import build_parser
from service.cli.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
PER_GPU = ROOT / "docker" / "compose.per-gpu.yml"
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"
SERVICES = {"db", "migrate", "api", "worker", "dashboard"}
BNN_TUNE = str(Path(sys.executable).parent / "bnn-tune")

needs_compose = pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose not installed (scripts/test.sh installs it: apt-get install "
    "--no-install-recommends docker-compose)",
)


def _compose(
    *args: str, password: str | None = "dummy-password", api_key: str | None = "dummy-key"
) -> subprocess.CompletedProcess:
    env = {
        k: v for k, v in os.environ.items() if k not in ("POSTGRES_PASSWORD", "BNN_TUNE_API_KEY")
    }
    if password is not None:
        env["POSTGRES_PASSWORD"] = password
    if api_key is not None:
        env["BNN_TUNE_API_KEY"] = api_key
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
def test_api_key_is_required() -> None:
    result = _compose("-f", str(COMPOSE), "config", "-q", api_key=None)
    assert result.returncode != 0
    assert "BNN_TUNE_API_KEY" in result.stderr


@needs_compose
def test_env_example_has_no_usable_secret() -> None:
    """.env.example copied as is must not start anything: the required-value guard fires."""
    result = _compose(
        "--env-file",
        str(ROOT / ".env.example"),
        "-f",
        str(COMPOSE),
        "config",
        "-q",
        password=None,
        api_key=None,
    )
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD in .env" in result.stderr or "BNN_TUNE_API_KEY" in result.stderr


def test_env_example_lists_every_variable(raw: dict[str, Any]) -> None:
    """Every ${VAR} the compose file reads is documented in .env.example (and vice versa)."""
    used = set(re.findall(r"\$\{([A-Z_]+)", COMPOSE.read_text()))
    example = {
        line.split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert used == example
    text = (ROOT / ".env.example").read_text()
    assert re.search(r"^POSTGRES_PASSWORD=$", text, re.M)
    assert re.search(r"^BNN_TUNE_API_KEY=$", text, re.M)


def test_per_gpu_override_is_gone() -> None:
    assert not PER_GPU.exists()
    assert "compose.per-gpu" not in COMPOSE.read_text()


def test_no_version_key_and_all_services(raw: dict[str, Any]) -> None:
    assert "version" not in raw
    assert set(raw["services"]) == SERVICES
    assert {"db-data", "torch-cache"} <= set(raw["volumes"])


def test_images_pinned_to_exact_versions(raw: dict[str, Any]) -> None:
    assert re.fullmatch(r"postgres:\d+\.\d+-\w+", raw["services"]["db"]["image"])
    for name in ("Dockerfile.api", "Dockerfile.worker"):
        bases = re.findall(r"^FROM (\S+)", (ROOT / "docker" / name).read_text(), re.M)
        assert bases and all(re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", b) for b in bases)


def test_db_has_volume_and_healthcheck(raw: dict[str, Any]) -> None:
    db = raw["services"]["db"]
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


def test_every_long_running_service_has_a_healthcheck(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert "127.0.0.1:8000/ready" in " ".join(services["api"]["healthcheck"]["test"])
    assert "worker.healthcheck" in " ".join(services["worker"]["healthcheck"]["test"])
    assert "127.0.0.1:8080/api/meta" in " ".join(services["dashboard"]["healthcheck"]["test"])


def test_api_gets_the_api_key(resolved: dict[str, Any]) -> None:
    assert resolved["services"]["api"]["environment"]["BNN_TUNE_API_KEY"] == "dummy-key"


def test_worker_uses_every_gpu_once(resolved: dict[str, Any]) -> None:
    """One container supervises one worker process per GPU: it reserves all GPUs and runs
    ``--gpus all`` (no per-GPU services, no replicas that would share GPU 0)."""
    worker = resolved["services"]["worker"]
    device = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["count"] == "all"
    assert "gpu" in device["capabilities"]
    command = worker["command"]
    assert command[command.index("--gpus") + 1] == "all"
    assert "container_name" not in worker and "ports" not in worker


def test_worker_grace_period_outlasts_an_epoch(resolved: dict[str, Any]) -> None:
    assert _seconds(resolved["services"]["worker"]["stop_grace_period"]) >= 300


def test_worker_data_and_compile_cache(resolved: dict[str, Any]) -> None:
    worker = resolved["services"]["worker"]
    volumes = list(map(_volume_text, worker["volumes"]))
    assert any(v.endswith(":/data:ro") for v in volumes)
    assert any(v.startswith("torch-cache:/cache") for v in volumes)
    assert worker["environment"]["BNN_TUNE_DATA_ROOT"] == "/data"
    dockerfile = (ROOT / "docker" / "Dockerfile.worker").read_text()
    assert "TORCHINDUCTOR_CACHE_DIR=/cache/inductor" in dockerfile
    assert "TRITON_CACHE_DIR=/cache/triton" in dockerfile


def test_dashboard_bound_to_localhost_without_url_in_argv(resolved: dict[str, Any]) -> None:
    dashboard = resolved["services"]["dashboard"]
    assert dashboard["ports"] and all(_host_ip(p) == "127.0.0.1" for p in dashboard["ports"])
    assert not any("postgresql" in part for part in dashboard["command"])


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
    assert "gcc" in worker and "g++" in worker  # torch.compile (Triton, Inductor) needs them
    assert "worker-entrypoint.sh" in worker


def test_constraints_cover_every_dependency() -> None:
    """Both images and scripts/test.sh install under requirements/constraints.txt, which pins
    every direct dependency (torch to the version CI and the CUDA image use)."""
    pinned = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pinned[canonicalize_name(name)] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    direct = list(project["dependencies"])
    for extra in ("train", "dev"):
        direct += project["optional-dependencies"][extra]
    missing = {Requirement(t).name for t in direct} - set(pinned)
    assert not {canonicalize_name(n) for n in missing}, "run requirements/freeze.py"
    assert pinned["torch"] == "2.13.0"
    for path in ("docker/Dockerfile.api", "docker/Dockerfile.worker", "scripts/test.sh"):
        assert "-c requirements/constraints.txt" in (ROOT / path).read_text(), path


def test_selfcheck_reports_a_missing_compiler(tmp_path: Path) -> None:
    """Without a C compiler on PATH the self-check says so (auto: WARNING, exit 0)."""
    pytest.importorskip("torch")
    env = {**os.environ, "PATH": str(tmp_path), "BNN_TUNE_COMPILE": "auto"}
    result = subprocess.run(
        [sys.executable, "-m", "worker.selfcheck", "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch.compile on cpu DOES NOT WORK" in result.stdout
    assert "C compiler               NONE" in result.stdout
    assert "WARNING: BNN_TUNE_COMPILE=auto falls back to eager" in result.stdout


def test_selfcheck_off_and_entrypoint() -> None:
    result = subprocess.run(
        ["sh", str(ROOT / "docker" / "worker-entrypoint.sh"), "echo", "worker started"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={
            **os.environ,
            "BNN_TUNE_COMPILE": "off",
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        },
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "selfcheck: BNN_TUNE_COMPILE=off, torch.compile not used",
        "worker started",
    ]


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
    assert " on cpu " in result.stderr  # its start line: worker <id> on cpu ...


def test_worker_command_help() -> None:
    result = subprocess.run([BNN_TUNE, "worker", "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--device" in result.stdout


@pytest.mark.postgres
def test_dashboard_command_answers_healthcheck(postgres_url: str) -> None:
    """The dashboard service's command (gunicorn + docker/dashboard_app.py, URL from the
    environment) answers its healthcheck's URL and serves the dashboard."""
    if shutil.which("gunicorn", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("gunicorn not installed (the API image installs it)")
    port = free_port()
    env = {**os.environ, "BNN_TUNE_DATABASE_URL": postgres_url, "PYTHONPATH": str(ROOT)}
    command = _service_command("dashboard")
    command[0] = str(Path(sys.executable).parent / "gunicorn")
    command[command.index("--chdir") + 1] = str(ROOT / "docker")
    command[command.index("--bind") + 1] = f"127.0.0.1:{port}"
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert _wait_for(f"http://127.0.0.1:{port}/api/meta", process).status_code == 200
        page = httpx.get(f"http://127.0.0.1:{port}/dashboard/", timeout=10)
        assert page.status_code == 200 and "<html" in page.text.lower()
    finally:
        process.terminate()
        process.wait(timeout=15)
    assert postgres_url.split("@")[0] not in " ".join(command)


def test_worker_healthcheck_command(fresh_sqlite_url: str) -> None:
    """The worker service's healthcheck: unhealthy before a worker registers, healthy while
    one polls, unhealthy again once it stopped (its row says ``stopped``)."""
    pytest.importorskip("torch")
    env = {**os.environ, "BNN_TUNE_DATABASE_URL": fresh_sqlite_url, "BNN_TUNE_DEVICE": "cpu"}

    def check(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "worker.healthcheck", *extra],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=60,
        )

    before = check()
    assert before.returncode == 1 and "0 live worker(s)" in before.stdout
    worker = subprocess.Popen(
        [BNN_TUNE, "worker", "--poll-interval", "0.2"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        assert worker.stderr is not None
        while " on cpu " not in (line := worker.stderr.readline()):
            assert line, "worker exited before polling"
        deadline = time.monotonic() + 30
        while (during := check()).returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert during.returncode == 0, during.stdout
        assert "healthy: 1 live worker(s)" in during.stdout
        assert check("--min-live", "2").returncode == 1
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    after = check()
    assert after.returncode == 1, after.stdout


def test_worker_healthcheck_without_database() -> None:
    env = {**os.environ, "BNN_TUNE_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    result = subprocess.run(
        [sys.executable, "-m", "worker.healthcheck"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stdout.startswith("unhealthy: database not reachable")


def _service_command(name: str) -> list[str]:
    return list(yaml.safe_load(COMPOSE.read_text())["services"][name]["command"])


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


def _seconds(duration: Any) -> float:
    """A compose duration (``10m``, ``1m30s``, ``600s``, or seconds) in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts, duration
    return sum(float(value) * units[unit] for value, unit in parts)


def _volume_text(volume: Any) -> str:
    if isinstance(volume, str):
        return volume
    mode = ":ro" if volume.get("read_only") else ""
    return f"{volume.get('source')}:{volume['target']}{mode}"


def _host_ip(port: Any) -> str:
    if isinstance(port, dict):
        return str(port.get("host_ip", ""))
    return str(port).split(":")[0]
