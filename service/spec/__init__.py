"""The study spec: what a user asks BNN-Tune to tune, validated once, read by API and worker.

Contract:

* :class:`StudySpec` (``study``) is the one schema of a study; the API's request body, the CLI's
  spec files and the worker all use it. Its names (families, models, datasets, ...) come from
  :mod:`service.vocabulary`, its numeric ceilings from :mod:`service.limits`.
* New specs: :func:`parse_spec` (data) / :func:`load_spec` (files); both raise
  :class:`SpecError` whose ``errors`` name each field (``errors``).
* Stored specs: only through :func:`stored_spec` (``io``).
* The search space (fixed / range / choices / schedule per parameter) is :mod:`.params`; EMA
  rates given as cutoff frequencies are :mod:`.cutoffs`.
* The example specs are ``examples/*.yaml`` (``examples``); ``SPEC_EXAMPLES`` maps each family
  to its first example file.

Modules: ``fields`` (bounded strings and numbers), ``params`` (search space), ``cutoffs``
(rate <-> cutoff for the spec's checks), ``study``
(StudySpec and its cross-field checks), ``errors`` (error shape), ``examples``, ``io``.
"""

from __future__ import annotations

from typing import Any

from service.spec.errors import SpecError, spec_errors
from service.spec.examples import examples_dir, family_examples, spec_examples
from service.spec.io import RETIRED_FIELDS, check_limits, load_spec, parse_spec, stored_spec
from service.spec.params import (
    BOOL_PARAMS,
    DEFAULT_SEARCH_SPACES,
    FAMILY_PARAMS,
    PARAM_ALIASES,
    SCHEDULE_PARAMS,
    STRING_PARAMS,
    ZERO_CHOICE_PARAMS,
    ChoiceSpec,
    ParamSpec,
    RangeSpec,
    ScheduleSpec,
)
from service.spec.study import (
    DATA_SUBDIR_PATTERN,
    INCOMPATIBLE_MODEL_DATASETS,
    PrunerSpec,
    SamplerSpec,
    StudySpec,
)
from service.vocabulary import (
    DATASET_NAMES,
    MODEL_NAMES,
    OBJECTIVE_DIRECTIONS,
    OPTIMIZER_FAMILIES,
    SCHEDULE_KINDS,
)

__all__ = [
    "OPTIMIZER_FAMILIES",
    "MODEL_NAMES",
    "DATASET_NAMES",
    "SCHEDULE_KINDS",
    "OBJECTIVE_DIRECTIONS",
    "BOOL_PARAMS",
    "STRING_PARAMS",
    "FAMILY_PARAMS",
    "SCHEDULE_PARAMS",
    "ZERO_CHOICE_PARAMS",
    "PARAM_ALIASES",
    "DEFAULT_SEARCH_SPACES",
    "DATA_SUBDIR_PATTERN",
    "INCOMPATIBLE_MODEL_DATASETS",
    "RETIRED_FIELDS",
    "SPEC_EXAMPLES",
    "RangeSpec",
    "ChoiceSpec",
    "ScheduleSpec",
    "ParamSpec",
    "SamplerSpec",
    "PrunerSpec",
    "StudySpec",
    "SpecError",
    "spec_errors",
    "check_limits",
    "load_spec",
    "load_spec_file",
    "parse_spec",
    "stored_spec",
    "examples_dir",
    "spec_examples",
    "family_examples",
]

# The name the CLI uses for reading a spec file.
load_spec_file = load_spec


def __getattr__(name: str) -> Any:
    """``SPEC_EXAMPLES``: family -> first example spec, read from ``examples/`` on first use."""
    if name == "SPEC_EXAMPLES":
        return family_examples()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
