"""The example specs of ``examples/*.yaml``: the OpenAPI examples and the tests' fixtures.

The YAML files are the only copy; nothing restates them. They are found in the first of:

1. ``<repository>/examples`` next to the ``service`` package (a source checkout, an editable
   install, the CI);
2. ``<prefix>/share/bnn-tune/examples``, where ``pip install .`` puts them (``data-files`` in
   pyproject.toml; the API image installs the package this way, so ``/docs`` shows the same
   examples there).

Where neither exists (a wheel built without them), the OpenAPI simply has no examples.
"""

from __future__ import annotations

import functools
import sysconfig
from pathlib import Path
from typing import Any

import yaml

__all__ = ["examples_dir", "spec_examples", "family_examples", "add_schema_examples"]


def examples_dir() -> Path | None:
    """The folder holding the example specs, or None when none is installed."""
    candidates = [
        Path(__file__).resolve().parents[2] / "examples",
        Path(sysconfig.get_path("data")) / "share" / "bnn-tune" / "examples",
    ]
    for folder in candidates:
        if folder.is_dir() and any(folder.glob("*.yaml")):
            return folder
    return None


@functools.cache
def spec_examples() -> dict[str, dict[str, Any]]:
    """File stem -> the example spec as plain data, in file-name order."""
    folder = examples_dir()
    if folder is None:
        return {}
    out = {}
    for path in sorted(folder.glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            out[path.stem] = data
    return out


@functools.cache
def family_examples() -> dict[str, dict[str, Any]]:
    """Optimizer family -> its first example in file-name order (``SPEC_EXAMPLES``)."""
    out: dict[str, dict[str, Any]] = {}
    for data in spec_examples().values():
        out.setdefault(str(data.get("optimizer")), data)
    return out


def add_schema_examples(schema: dict[str, Any]) -> None:
    """``json_schema_extra`` of StudySpec: every example file, read when the schema is built."""
    if examples := list(spec_examples().values()):
        schema["examples"] = examples
