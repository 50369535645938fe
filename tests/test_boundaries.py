"""Package boundaries (docs/ARCHITECTURE.md), checked in fresh interpreters.

* ``bnn_core`` and every submodule: pure PyTorch, never optuna/sqlalchemy/fastapi/pydantic/
  service/worker.
* ``service`` and every submodule (and ``service.app``): never torch/bnn_core/worker, so the API
  image needs no torch.
* ``service.cli`` (the ``bnn-tune`` entry point, in ``service``): no torch or bnn_core for
  ``bnn-tune --help`` or the client commands, which the API image runs; its ``worker`` and
  ``train`` commands come from ``worker.commands`` through an entry point.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    package = importlib.import_module({package!r})
    failed = []
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name.endswith((".migrations.env", ".__main__")):  # alembic-only; entry points
            continue
        try:
            importlib.import_module(info.name)
        except Exception as exc:  # reported, not hidden
            failed.append(f"{{info.name}}: {{type(exc).__name__}}: {{exc}}")
    for extra in {extra!r}:
        importlib.import_module(extra)
    forbidden = {forbidden!r}
    loaded = sorted(
        name for name in sys.modules
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    )
    print(json.dumps({{"loaded": loaded, "failed": failed}}))
    """
)


def _probe(package: str, forbidden: list[str], extra: tuple[str, ...] = ()) -> dict:
    code = PROBE.format(package=package, forbidden=forbidden, extra=list(extra))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _top_level(names: list[str]) -> list[str]:
    return sorted({name.split(".")[0] for name in names})


def test_bnn_core_is_pure_pytorch() -> None:
    report = _probe(
        "bnn_core", ["optuna", "sqlalchemy", "fastapi", "pydantic", "service", "worker"]
    )
    assert report["failed"] == [], report["failed"]
    assert _top_level(report["loaded"]) == [], (
        f"importing bnn_core loaded {_top_level(report['loaded'])}"
    )


def test_service_never_imports_torch() -> None:
    report = _probe("service", ["torch", "bnn_core", "worker"], extra=("service.app",))
    assert report["failed"] == [], report["failed"]
    assert _top_level(report["loaded"]) == [], (
        f"importing service loaded {_top_level(report['loaded'])}"
    )


def test_the_worker_never_imports_the_api_process_modules() -> None:
    report = _probe("worker", ["service.api", "service.app", "service.reaper"])
    assert report["failed"] == [], report["failed"]
    assert report["loaded"] == [], f"importing worker loaded {report['loaded']}"


STORAGE_LAYER = (
    "service.db",
    "service.errors",
    "service.lifecycle",
    "service.migrate",
    "service.models",
    "service.schemas",
    "service.settings",
    "service.spec",
    "service.studies",
    "service.vocabulary",
    "service.workers",
)


def test_the_storage_layer_never_imports_torch() -> None:
    code = textwrap.dedent(
        f"""
        import importlib, json, sys
        for name in {list(STORAGE_LAYER)!r}:
            importlib.import_module(name)
        forbidden = ("torch", "bnn_core", "worker", "fastapi", "service.api", "service.app")
        print(json.dumps(sorted(
            m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in forbidden)
        )))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == [], f"the storage layer loaded {loaded}"


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["serve", "--help"],
        ["submit", "--help"],
        ["status", "--help"],
        ["workers", "--help"],
    ],
    ids=lambda a: " ".join(a),
)
def test_cli_runs_without_torch(argv: list[str]) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from service.cli import main
        try:
            main({argv!r})
        except SystemExit:
            pass
        bad = sorted({{m.split('.')[0] for m in sys.modules}} & {{'torch', 'bnn_core'}})
        print('LOADED', bad)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOADED []" in result.stdout, result.stdout[-2000:]
