"""README.md stays true: the quick start's two commands are the scripts CI runs, the spec
examples validate, and the CLI and API tables name things that exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    """The text under ``## title`` up to the next heading of level 2 or 3."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^##{{1,2}} )", README, re.M | re.S)
    assert match, f"README has no section '## {title}'"
    return match.group(1)


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.M | re.S)


def _commands(block: str) -> list[str]:
    lines = [line.split("#")[0].strip() for line in block.splitlines()]
    return [line for line in lines if line]


def test_quick_start_is_exactly_the_two_scripts() -> None:
    commands = [c for block in _blocks(_section("Quick start"), "bash") for c in _commands(block)]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]


def test_scripts_exist_and_parse() -> None:
    for path in ("scripts/demo.sh", "scripts/test.sh", ".ci/run"):
        result = subprocess.run(["bash", "-n", str(ROOT / path)], capture_output=True, text=True)
        assert result.returncode == 0, f"{path}: {result.stderr}"


def test_demo_script_installs_pinned_torch_then_runs_the_demo() -> None:
    text = (ROOT / "scripts" / "demo.sh").read_text()
    assert "torch==2.13.0" in text
    assert "-e '.[train,dev]'" in text
    assert re.search(r"^exec \.venv/bin/bnn-tune demo", text, re.M)


def test_test_script_runs_the_whole_suite_and_ruff() -> None:
    text = (ROOT / "scripts" / "test.sh").read_text()
    assert "set -euo pipefail" in text
    assert "torch==2.13.0" in text and "-e '.[train,dev]'" in text
    assert "python -m pytest -q" in text
    assert "ruff check ." in text
    assert '"$status" -eq 5' in text  # no tests collected is a failure
    for package in ("dataset-fashion-mnist", "docker-compose", "chromium"):
        assert package in text
    assert "--no-install-recommends" in text
    assert "pg_ctlcluster --skip-systemctl-redirect" in text


def test_ci_runs_the_test_script() -> None:
    text = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in text
    assert 'cd "$(dirname "$0")/.."' in text
    assert re.search(r"^bash scripts/test\.sh", text, re.M)


def test_spec_examples_in_readme_validate() -> None:
    from service.spec import OPTIMIZER_FAMILIES, load_spec, parse_spec

    blocks = _blocks(_section("Study spec"), "yaml")
    families = set()
    for block in blocks:
        data = yaml.safe_load(block)
        spec = parse_spec(data)
        families.add(spec.optimizer)
        # Each README example is the file of the same name in examples/ (minus comments).
        example = load_spec(ROOT / "examples" / f"{spec.name}.yaml")
        assert example.optimizer == spec.optimizer
        assert example.search_space == spec.search_space
    assert families == set(OPTIMIZER_FAMILIES)


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_file_validates(path: Path) -> None:
    from service.spec import load_spec

    assert load_spec(path).name


def test_cli_table_names_real_commands() -> None:
    from service.cli import build_parser

    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    named = set(re.findall(r"^\| `bnn-tune (\w+)", _section("CLI"), re.M))
    assert named == set(subcommands)


def test_api_table_names_real_routes() -> None:
    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(database_url="sqlite://"))
    routes = {
        (method.upper(), path.replace("{study_id}", "{id}"))
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    rows = re.findall(r"^\| `(GET|POST|DELETE)` \| `([^`?]+)", _section("REST API"), re.M)
    assert len(rows) >= 9
    for method, path in rows:
        assert (method, path) in routes, f"{method} {path} is not a route"


def test_linked_files_exist() -> None:
    for target in re.findall(r"\]\(((?:examples|docker|benchmarks|scripts)/[^)]+)\)", README):
        assert (ROOT / target).exists(), target
    for script in re.findall(r"`(benchmarks/\w+\.py)`", README):
        assert (ROOT / script).is_file(), script
    assert (ROOT / "docker-compose.yml").is_file()
