"""Every list of names a study spec or the API accepts, defined once.

Contract:

* This module is the ONE place where the service and the worker read which optimizer families,
  models, datasets, schedule kinds, samplers, pruners, objectives, plot kinds, devices and
  precisions exist. ``service.spec``, ``service.plots``, ``service.api``, ``worker.objective`` and
  ``service.cli`` import these names; none of them keeps a copy.
* Each vocabulary is a ``Literal`` type (what pydantic validates and what the OpenAPI schema
  shows) and a tuple derived from it with ``typing.get_args`` (what code iterates over), so the
  two cannot disagree.
* ``bnn_core`` keeps its own lists (``bnn_core.models.MODEL_NAMES``,
  ``bnn_core.data.DATASET_NAMES``, ``bnn_core.config.SCHEDULE_KINDS``,
  ``bnn_core.config.LATENT_LR_SCALINGS``,
  ``bnn_core.config.EVAL_PROTOCOLS``, ``bnn_core.stacked.STACKABLE_FAMILIES``,
  ``bnn_core.optim.REAL_ADAM_EPS``) because the service must not import torch. The test module
  ``tests/test_vocabulary.py`` asserts that each list here equals bnn_core's, so adding a model
  or a dataset on one side only fails the tests.
* Devices are only those a worker can take: ``auto``, ``cpu``, ``cuda`` and ``cuda:N`` with
  ``0 <= N <= MAX_CUDA_INDEX`` (no ``mps``: ``bnn_core.devices.resolve_device`` rejects it, so
  a study asking for it would never run).
* Pure Python, no third-party imports: the worker, the CLI and the API image all load it.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

__all__ = [
    "OptimizerFamily",
    "OPTIMIZER_FAMILIES",
    "BINARY_FAMILIES",
    "LATENT_FAMILIES",
    "ModelName",
    "MODEL_NAMES",
    "DatasetName",
    "DATASET_NAMES",
    "ScheduleKind",
    "SCHEDULE_KINDS",
    "LatentLrScaling",
    "LATENT_LR_SCALINGS",
    "EvalProtocol",
    "EVAL_PROTOCOLS",
    "SamplerName",
    "SAMPLERS",
    "PrunerName",
    "PRUNERS",
    "ObjectiveName",
    "OBJECTIVES",
    "OBJECTIVE_DIRECTIONS",
    "PlotKind",
    "PLOT_KINDS",
    "PlotFormat",
    "PLOT_FORMATS",
    "PLOT_MEDIA_TYPES",
    "Precision",
    "PRECISIONS",
    "MAX_CUDA_INDEX",
    "DEVICE_PATTERN",
    "DEVICE_DESCRIPTION",
    "is_device",
    "REAL_ADAM_EPS",
]

# Flip optimizers: the weights are +-1 and a step flips some of them.
BinaryFamily = Literal["bop", "bop2", "filter"]
BINARY_FAMILIES: tuple[str, ...] = get_args(BinaryFamily)
# Latent-weight baselines: real-valued latent weights binarized with sign() in the forward pass.
LatentFamily = Literal["latent-adam", "latent-sgd"]
LATENT_FAMILIES: tuple[str, ...] = get_args(LatentFamily)
OptimizerFamily = Literal["bop", "bop2", "filter", "latent-adam", "latent-sgd"]
OPTIMIZER_FAMILIES: tuple[str, ...] = get_args(OptimizerFamily)

ModelName = Literal["binarynet", "resnet", "mlp", "conv-small"]
MODEL_NAMES: tuple[str, ...] = get_args(ModelName)

DatasetName = Literal["digits", "fashion-mnist", "mnist", "cifar10"]
DATASET_NAMES: tuple[str, ...] = get_args(DatasetName)

ScheduleKind = Literal["constant", "staircase", "linear", "cosine", "linear-epoch", "polynomial"]
SCHEDULE_KINDS: tuple[str, ...] = get_args(ScheduleKind)

# Per-layer latent learning-rate multipliers of the latent families.
LatentLrScaling = Literal["none", "xavier"]
LATENT_LR_SCALINGS: tuple[str, ...] = get_args(LatentLrScaling)

# Where "val" metrics are measured: a held-out part of the training set (the default), or the
# test set after training on all of it (a paper's protocol reproduced; tuning on it is leakage).
EvalProtocol = Literal["holdout", "test"]
EVAL_PROTOCOLS: tuple[str, ...] = get_args(EvalProtocol)

SamplerName = Literal["tpe", "random", "cmaes", "grid", "qmc"]
SAMPLERS: tuple[str, ...] = get_args(SamplerName)

PrunerName = Literal["none", "median", "hyperband"]
PRUNERS: tuple[str, ...] = get_args(PrunerName)

ObjectiveName = Literal["val_accuracy", "flip_ratio", "time"]
OBJECTIVES: tuple[str, ...] = get_args(ObjectiveName)
OBJECTIVE_DIRECTIONS: dict[str, str] = {
    "val_accuracy": "maximize",
    "flip_ratio": "minimize",
    "time": "minimize",
}

PlotKind = Literal["params", "curves", "flips", "importance", "pareto", "filter", "layer-flips"]
PLOT_KINDS: tuple[str, ...] = get_args(PlotKind)
PlotFormat = Literal["png", "svg"]
PLOT_FORMATS: tuple[str, ...] = get_args(PlotFormat)
PLOT_MEDIA_TYPES: dict[str, str] = {"png": "image/png", "svg": "image/svg+xml"}

# fp32 everywhere, or bf16 autocast of the forward pass on CUDA (parameters stay fp32).
Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

# Highest CUDA index a spec or worker may name: more GPUs than this in one host does not exist
# in practice, and the bound keeps the field a short, fixed-size string.
MAX_CUDA_INDEX = 63
_CUDA_INDEX = r"(?:[0-9]|[1-5][0-9]|6[0-3])"  # 0..MAX_CUDA_INDEX, no leading zeros
DEVICE_PATTERN = rf"^(?:auto|cpu|cuda(?::{_CUDA_INDEX})?)$"
DEVICE_DESCRIPTION = f"auto, cpu, cuda or cuda:N (0 <= N <= {MAX_CUDA_INDEX})"
_DEVICE_RE = re.compile(DEVICE_PATTERN)

# eps of the Adam that trains the real-valued parameters (batch-norm, biases, the last layer)
# next to every binary optimizer; the stacked and the per-trial trainers must use the same one.
REAL_ADAM_EPS = 1e-7


def is_device(name: object) -> bool:
    """Whether ``name`` is a device a worker can take (see :data:`DEVICE_PATTERN`)."""
    return isinstance(name, str) and _DEVICE_RE.fullmatch(name) is not None
