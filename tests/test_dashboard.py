"""``bnn-tune dashboard``: real optuna-dashboard on the BNN-Tune PostgreSQL database, checked
over HTTP (and in headless Chromium when it is installed). The database URL, with a password,
is given through the environment: it must appear neither in the output nor on any command
line (``ps``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import optuna
import pytest

from service.cli.processes import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

BNN_TUNE = str(Path(sys.executable).parent / "bnn-tune")
PASSWORD = "s3cret-dashboard-pw"  # the test server trusts every local login and ignores it
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def study_db(postgres_url: str) -> tuple[str, str]:
    """The session database with one Optuna study of three finished trials."""
    name = f"bnn-tune-dashboard-{time.time_ns()}"
    study = optuna.create_study(storage=postgres_url, study_name=name, direction="maximize")
    gamma = optuna.distributions.FloatDistribution(1e-6, 1e-1, log=True)
    for accuracy in (0.91, 0.94, 0.62):
        trial = study.ask({"gamma": gamma})
        study.tell(trial, accuracy)
    return postgres_url, name


def _finished_digits_study(url: str, name: str, **changes: object) -> None:
    """A BNN-Tune study created as the API does and trained by the real worker (4 tiny trials)."""
    from sqlalchemy.orm import Session

    from service.db import make_engine
    from service.spec import parse_spec
    from service.studies import create_study, make_optuna_storage
    from worker.loop import run_study
    from worker.settings import WorkerSettings

    spec = parse_spec(
        {
            "name": name,
            "optimizer": "bop",
            "model": "mlp",
            "dataset": "digits",
            "epochs": 2,
            "batch_size": 50,
            "max_train_samples": 600,
            "n_trials": 4,
            **changes,
        }
    )
    engine = make_engine(url)
    storage = make_optuna_storage(url)
    with Session(engine) as session:
        study_id = create_study(session, storage, spec).id
    storage.engine.dispose()
    engine.dispose()
    settings = WorkerSettings(database_url=url, device="cpu", poll_interval_s=0.1, once=True)
    run_study(study_id, settings)


@pytest.fixture(scope="module")
def bnn_studies(study_db: tuple[str, str]) -> tuple[str, str]:
    """Two finished digits studies: one objective, and val_accuracy + flip_ratio."""
    pytest.importorskip("torch")
    url, _ = study_db
    stamp = time.time_ns() % 10**9
    single, pareto = f"dash-digits-{stamp}", f"dash-pareto-{stamp}"
    _finished_digits_study(url, single)
    _finished_digits_study(
        url, pareto, objectives=["val_accuracy", "flip_ratio"], pruner={"name": "none"}
    )
    return single, pareto


@pytest.fixture(scope="module")
def dashboard(study_db: tuple[str, str]) -> Iterator[tuple[str, subprocess.Popen, str]]:
    url, name = study_db
    with_password = url.replace("://postgres@", f"://postgres:{PASSWORD}@", 1)
    assert PASSWORD in with_password
    port = free_port()
    process = subprocess.Popen(
        [BNN_TUNE, "dashboard", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "BNN_TUNE_DATABASE_URL": with_password},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{base}/api/studies", process)
        yield base, process, name
    finally:
        process.terminate()
        process.wait(timeout=15)


def _wait_for(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"dashboard exited {process.returncode}: {output[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout}s")


def test_prints_the_url_without_the_password(
    dashboard: tuple[str, subprocess.Popen, str],
) -> None:
    base, process, _ = dashboard
    assert process.stdout is not None
    first = process.stdout.readline() + process.stdout.readline()
    assert f"{base}/dashboard/" in first
    assert "optuna-dashboard on postgresql+psycopg://postgres:***@127.0.0.1" in first
    assert PASSWORD not in first


def test_no_command_line_holds_the_password(
    dashboard: tuple[str, subprocess.Popen, str],
) -> None:
    """What `ps` shows of the dashboard process and of any child it started."""
    _, process, _ = dashboard
    pids = [process.pid]
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for pid in pids:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        assert "dashboard" in argv or pid != process.pid
        assert PASSWORD not in argv and "postgres" not in argv, argv


def test_lists_the_study(dashboard: tuple[str, subprocess.Popen, str]) -> None:
    base, _, name = dashboard
    response = httpx.get(f"{base}/api/studies", headers={"Accept-Encoding": "gzip"}, timeout=10)
    assert response.status_code == 200
    studies = {s["study_name"]: s for s in response.json()["study_summaries"]}
    assert name in studies
    detail = httpx.get(f"{base}/api/studies/{studies[name]['study_id']}", timeout=10)
    assert detail.status_code == 200
    assert len(detail.json()["trials"]) == 3


def test_serves_the_page_and_bundle(dashboard: tuple[str, subprocess.Popen, str]) -> None:
    base, _, _ = dashboard
    page = httpx.get(f"{base}/dashboard", timeout=10)
    assert page.status_code == 200 and "Optuna Dashboard" in page.text
    # optuna-dashboard needs Accept-Encoding for its bundle (KeyError -> 500 without it).
    bundle = httpx.get(f"{base}/static/bundle.js", headers={"Accept-Encoding": "gzip"}, timeout=30)
    assert bundle.status_code == 200


def _study_ids(base: str) -> dict[str, int]:
    summaries = httpx.get(f"{base}/api/studies", timeout=10).json()["study_summaries"]
    return {s["study_name"]: s["study_id"] for s in summaries}


def test_bnn_studies_tell_their_story(
    dashboard: tuple[str, subprocess.Popen, str], bnn_studies: tuple[str, str]
) -> None:
    """What optuna-dashboard reads of a BNN-Tune study: listed under the spec's name, the spec
    in its note, metric names, per-trial numbers it can sort and plot, the Pareto front."""
    base, _, _ = dashboard
    single, pareto = bnn_studies
    ids = _study_ids(base)
    assert single in ids and pareto in ids  # named after the spec, not bnn-tune-<id>
    detail = httpx.get(f"{base}/api/studies/{ids[single]}", params={"after": 0}, timeout=30)
    study = detail.json()
    assert study["objective_names"] == ["val_accuracy"]
    assert f"## {single}" in study["note"]["body"] and "optimizer: bop" in study["note"]["body"]
    sortable = {a["key"] for a in study["union_user_attrs"] if a["sortable"]}
    assert {"flip_ratio", "epochs_run", "seconds"} <= sortable
    keys = {a["key"] for a in study["union_user_attrs"]}
    assert {"worker", "worker_id", "epochs"} <= keys  # what the API and CLI read stays
    two = httpx.get(f"{base}/api/studies/{ids[pareto]}", params={"after": 0}, timeout=30).json()
    assert two["objective_names"] == ["val_accuracy", "flip_ratio"]
    assert two["directions"] == ["maximize", "minimize"] and two["best_trials"]


def _chromium(url: str, *args: str) -> subprocess.CompletedProcess:
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--window-size=1400,1000",
                "--virtual-time-budget=10000",
                *args,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/test.sh does it)")
def test_bnn_study_pages_in_headless_chromium(
    dashboard: tuple[str, subprocess.Popen, str], bnn_studies: tuple[str, str], tmp_path: Path
) -> None:
    """The pages a user opens, rendered: the spec's name on the study list and page, the note
    with the spec, the trial page with its numbers, the Pareto front. PNGs go to
    ``$BNN_TUNE_SCREENSHOT_DIR`` when set (to look at them), else to a temporary folder."""
    base, _, _ = dashboard
    single, pareto = bnn_studies
    ids = _study_ids(base)
    out = Path(os.environ.get("BNN_TUNE_SCREENSHOT_DIR") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    pages = {
        "study-list": ("/dashboard/", [single, pareto]),
        "study-home": (f"/dashboard/studies/{ids[single]}", [single, "History"]),
        "study-note": (f"/dashboard/studies/{ids[single]}/note", ["BNN-Tune study", "optimizer"]),
        "trial": (f"/dashboard/studies/{ids[single]}/trials", ["flip_ratio", "epochs_run"]),
        "pareto": (f"/dashboard/studies/{ids[pareto]}", ["Pareto Front", "flip_ratio"]),
    }
    for name, (path, words) in pages.items():
        dom = _chromium(f"{base}{path}", "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        for word in words:
            assert word in dom.stdout, (name, word)
        shot = out / f"dashboard-{name}.png"
        result = _chromium(f"{base}{path}", f"--screenshot={shot}")
        assert result.returncode == 0, result.stderr[-2000:]
        assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 30_000


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/test.sh does it)")
def test_screenshot_in_headless_chromium(
    dashboard: tuple[str, subprocess.Popen, str], tmp_path: Path
) -> None:
    base, _, name = dashboard
    study_id = {
        s["study_name"]: s["study_id"]
        for s in httpx.get(f"{base}/api/studies", timeout=10).json()["study_summaries"]
    }[name]
    shot = tmp_path / "dashboard.png"
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--window-size=1280,900",
                "--virtual-time-budget=8000",
                f"--screenshot={shot}",
                f"{base}/dashboard/studies/{study_id}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG")
    # A rendered page with plots is far larger than a blank 1280x900 PNG (a few KB).
    assert len(data) > 30_000, len(data)
