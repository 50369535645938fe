"""Where specs come from: request data, YAML/JSON files, and the database.

* :func:`parse_spec`: a new spec from plain data (+ the operator's limits of ``Settings``).
* :func:`load_spec`: a new spec from a ``.yaml``/``.yml``/``.json`` file (``bnn-tune submit``).
* :func:`stored_spec`: THE reader of a spec stored with a study; every reader (API, worker,
  plots) goes through it. It drops the fields that specs no longer have (``data_dir``,
  ``download``: the data location moved to the worker) and skips the checks added after a
  spec may have been stored, so old studies stay readable. A stored spec that is still invalid
  (one accepted by an older, laxer version, e.g. ``device: mps``) raises :class:`SpecError`
  naming its fields, like a new one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from service.settings import Settings
from service.spec.errors import SpecError, spec_errors
from service.spec.study import StudySpec

__all__ = ["RETIRED_FIELDS", "check_limits", "parse_spec", "stored_spec", "load_spec"]

# Fields older specs had; stored specs with them are read with the fields dropped.
RETIRED_FIELDS: frozenset[str] = frozenset({"data_dir", "download"})


def check_limits(spec: StudySpec, settings: Settings) -> list[dict[str, str]]:
    """The operator's limits (settings) a valid spec may still exceed; [] when within all."""
    errors = []
    for field, value, cap, setting in [
        ("n_trials", spec.n_trials, settings.max_trials, "max_trials"),
        ("epochs", spec.epochs, settings.max_epochs, "max_epochs"),
        ("batch_size", spec.batch_size, settings.max_batch_size, "max_batch_size"),
        ("trials_per_gpu", spec.trials_per_gpu, settings.max_trials_per_gpu, "max_trials_per_gpu"),
    ]:
        if cap is not None and value > cap:
            errors.append((field, f"{value} exceeds {setting}={cap}"))
    return [{"field": f, "message": m, "type": "limit_exceeded"} for f, m in errors]


def parse_spec(data: Any, settings: Settings | None = None) -> StudySpec:
    """Validate a spec from plain data; raise :class:`SpecError` (field paths) when invalid."""
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(spec_errors(exc)) from exc
    if settings is not None and (errors := check_limits(spec, settings)):
        raise SpecError(errors)
    return spec


def stored_spec(data: Any) -> StudySpec:
    """A spec read back from the database (see the module docstring)."""
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in RETIRED_FIELDS}
    try:
        return StudySpec.model_validate(data, context={"stored": True})
    except ValidationError as exc:
        raise SpecError(spec_errors(exc)) from exc


def load_spec(path: str | Path, settings: Settings | None = None) -> StudySpec:
    """Read a YAML or JSON spec file; raise :class:`SpecError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise SpecError([{"field": "<file>", "message": f"{path}: {exc}", "type": "io"}]) from exc
    if not isinstance(data, dict):
        raise SpecError([{"field": "<spec>", "message": "must be a mapping", "type": "type"}])
    return parse_spec(data, settings)
