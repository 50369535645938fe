"""StudySpec: one tuning study, with the checks that span several fields.

A study tunes the hyperparameters of ONE binary-weight optimizer family on one model/dataset.
Unknown fields anywhere are rejected (``extra="forbid"``). Every string is length-limited and
free of control characters, every number finite and bounded (ceilings in
:mod:`service.limits`, shown in the OpenAPI schema; the operator's lower limits are applied by
:func:`service.spec.io.check_limits`).

``n_trials`` is the STUDY-WIDE budget (all workers together). ``objectives[0]`` is always
``val_accuracy`` (maximize); a second ``flip_ratio`` or ``time`` (both minimize) makes the
study multi-objective.

Data location belongs to the worker: a spec names a ``dataset`` and at most a ``data_subdir``,
one folder name under the worker's own data root (no ``/``, no ``..``, no absolute path), so a
spec can never make a worker read or create files elsewhere.

``latent_weight_clip`` (latent families; not listed: no clipping) clamps the latent weights to
[-clip, clip] after every update, the BinaryNet constraint of the Bop paper's Adam baseline
(clip 1). ``latent_lr_scaling`` (latent families; fixed ``"xavier"`` or
``{"choices": ["none", "xavier"]}``; not listed: ``"none"``) gives every binary layer its own
latent learning rate ``lr * m`` with BinaryConnect's Xavier multiplier
``m = 1 / sqrt(1.5 / (k * (n_in + n_out)))`` (``k`` the conv kernel area, 1 for dense layers);
an lr schedule is scaled per layer the same way.

``eval_protocol`` (``holdout`` by default) says where "val" is measured; ``test`` is the
reproduction mode of a paper's protocol (trains on all training images, reports the test set:
never tune on it). The study's public view shows it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from service import limits
from service.spec.errors import fail
from service.spec.examples import add_schema_examples
from service.spec.fields import bounded_int, finite_float, name_str, text_str
from service.spec.params import (
    FAMILY_PARAMS,
    PARAM_ALIASES,
    ParamSpec,
    check_alpha_le_gamma,
    check_param,
    check_rate_or_cutoff,
    default_space,
)
from service.vocabulary import (
    DEVICE_DESCRIPTION,
    DEVICE_PATTERN,
    OBJECTIVE_DIRECTIONS,
    DatasetName,
    EvalProtocol,
    ModelName,
    ObjectiveName,
    OptimizerFamily,
    Precision,
    PrunerName,
    SamplerName,
)

__all__ = [
    "DATA_SUBDIR_PATTERN",
    "INCOMPATIBLE_MODEL_DATASETS",
    "SamplerSpec",
    "PrunerSpec",
    "StudySpec",
]

# One folder name: starts with a letter or digit (so never "." or ".."), no separators.
DATA_SUBDIR_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

# Model/dataset pairs that cannot train (every trial would fail with the same ConfigError of
# bnn_core.models.build_model); tests/worker checks this table against bnn_core.
INCOMPATIBLE_MODEL_DATASETS: dict[tuple[str, str], str] = {
    ("binarynet", "digits"): "binarynet downsamples too often for the 8x8 digits images; use "
    "mlp, conv-small or resnet, or a 28x28/32x32 dataset (mnist, fashion-mnist, cifar10)",
}

_Seed = bounded_int(0, limits.SEED_LIMIT - 1)
_PrunerSteps = bounded_int(0, limits.MAX_PRUNER_STEPS)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SamplerSpec(_Strict):
    """Optuna sampler; ``seed`` makes sampling reproducible (per worker process)."""

    name: SamplerName = "tpe"
    seed: _Seed | None = None  # type: ignore[valid-type]


class PrunerSpec(_Strict):
    """Optuna pruner over per-epoch val_accuracy; single-objective studies only.

    ``median``: MedianPruner(n_startup_trials, n_warmup_steps, interval_steps).
    ``hyperband``: HyperbandPruner(min_resource, max_resource=epochs, reduction_factor).
    """

    name: PrunerName = "none"
    n_startup_trials: _PrunerSteps = 5  # type: ignore[valid-type]
    n_warmup_steps: _PrunerSteps = 1  # type: ignore[valid-type]
    interval_steps: bounded_int(1, limits.MAX_PRUNER_STEPS) = 1  # type: ignore[valid-type]
    min_resource: bounded_int(1, limits.MAX_PRUNER_STEPS) = 1  # type: ignore[valid-type]
    reduction_factor: bounded_int(2, limits.MAX_REDUCTION_FACTOR) = 3  # type: ignore[valid-type]


class WarmStartSpec(_Strict):
    """A finished study of the same family (its name, or its id as an integer) whose COMPLETE
    trials inform this study's sampler without using this study's budget. The service checks
    that it exists, is finished and shares family and search space (422 naming
    ``warm_start.study`` otherwise)."""

    study: (
        name_str(limits.MAX_NAME_CHARS, r"^[a-z0-9][a-z0-9_-]{0,62}$")  # type: ignore[valid-type]
        | bounded_int(1, limits.INT32_MAX)  # type: ignore[valid-type]
    )


class StudySpec(_Strict):
    """One tuning study (see the module docstring)."""

    model_config = ConfigDict(
        extra="forbid", allow_inf_nan=False, json_schema_extra=add_schema_examples
    )

    name: name_str(limits.MAX_NAME_CHARS, r"^[a-z0-9][a-z0-9_-]{0,62}$") = Field(  # type: ignore[valid-type]
        description="Unique slug: lowercase letters, digits, '-' and '_', at most 63 chars.",
    )
    description: text_str(limits.MAX_DESCRIPTION_CHARS) | None = None  # type: ignore[valid-type]
    owner: name_str(limits.MAX_OWNER_CHARS) | None = None  # type: ignore[valid-type]
    optimizer: OptimizerFamily
    search_space: dict[str, ParamSpec] | None = Field(
        None,
        description="Parameter -> fixed | range | choices (a <name>_schedule: a kind, a "
        "schedule object or kind choices). An EMA rate (gamma, sigma, alpha) may be given as "
        "<name>_cutoff instead, its -3 dB cutoff in cycles per step, in (0, 0.5]; never both. "
        "None: the family's default.",
    )
    model: ModelName = "mlp"
    dataset: DatasetName = "digits"
    data_subdir: name_str(64, DATA_SUBDIR_PATTERN) | None = Field(  # type: ignore[valid-type]
        None,
        description="One folder name under the worker's data root holding the data set "
        "(None: the data set's default folder). No '/', no '..', no absolute path.",
    )
    max_train_samples: bounded_int(1, limits.MAX_TRAIN_SAMPLES) | None = Field(  # type: ignore[valid-type]
        None, description="Cap for quick runs."
    )
    epochs: bounded_int(1, limits.MAX_EPOCHS) = 10  # type: ignore[valid-type]
    batch_size: bounded_int(1, limits.MAX_BATCH_SIZE) = 100  # type: ignore[valid-type]
    seed: _Seed = 0  # type: ignore[valid-type]
    n_trials: bounded_int(1, limits.MAX_N_TRIALS) = Field(  # type: ignore[valid-type]
        20, description="Study-wide trial budget."
    )
    timeout_s: finite_float(gt=0, le=limits.MAX_TIMEOUT_S) | None = Field(  # type: ignore[valid-type]
        None,
        description="Wall-clock budget of the study, counted from its first trial: then no "
        "trial starts and running ones stop within a few training steps.",
    )
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    warm_start: WarmStartSpec | None = Field(
        None, description="A finished study of the same family whose trials inform the sampler."
    )
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    objectives: list[ObjectiveName] = Field(
        default_factory=lambda: ["val_accuracy"], min_length=1, max_length=2
    )
    trials_per_gpu: bounded_int(1, limits.MAX_TRIALS_PER_GPU) = Field(  # type: ignore[valid-type]
        1, description="Trials stacked on one GPU."
    )
    max_retries: bounded_int(0, limits.MAX_RETRIES) | None = Field(  # type: ignore[valid-type]
        None, description="Retries of a failed/stale trial (None: settings.max_retries)."
    )
    device: name_str(8, DEVICE_PATTERN) = Field(  # type: ignore[valid-type]
        "auto", description=DEVICE_DESCRIPTION
    )
    precision: Precision = "fp32"
    eval_protocol: EvalProtocol = Field(
        "holdout",
        description="Where the 'val' metrics (and so the objective) are measured. 'holdout' "
        "(default): a held-out 10 % of the training set. 'test': REPRODUCTION MODE -- every "
        "trial trains on the whole training set and its 'val' metrics are the TEST set, as the "
        "papers report them; choosing hyperparameters on these numbers is tuning on the test "
        "set (leakage), so use it only to rerun a published protocol.",
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_aliases(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("search_space"), dict):
            return data
        space = dict(data["search_space"])
        family = FAMILY_PARAMS.get(str(data.get("optimizer")), ())
        for alias, target in PARAM_ALIASES.items():
            if alias in space and target in family:
                if target in space:
                    raise fail(f"search_space.{alias}", f"alias of {target}; give only one")
                space[target] = space.pop(alias)
        return {**data, "search_space": space}

    @field_validator("search_space")
    @classmethod
    def _check_family_params(
        cls, value: dict[str, Any] | None, info: ValidationInfo
    ) -> dict[str, Any] | None:
        """Unknown parameters of the family, reported even when other fields are invalid too
        (the model validator below only runs once every field is valid)."""
        family = info.data.get("optimizer")
        if value is None or family is None:
            return value
        allowed = FAMILY_PARAMS[family]
        unknown = [name for name in value if name not in allowed]
        if unknown:
            shown = [name[:64] for name in unknown[:5]]
            others = f" (nor are {', '.join(shown[1:])})" if len(shown) > 1 else ""
            raise fail(
                f"search_space.{shown[0]}",
                f"not a parameter of optimizer {family!r}{others}; allowed: {', '.join(allowed)}",
            )
        return value

    @field_validator("objectives")
    @classmethod
    def _check_objectives(cls, value: list[str]) -> list[str]:
        if value[0] != "val_accuracy":
            raise ValueError("the first objective must be 'val_accuracy'")
        if len(set(value)) != len(value):
            raise ValueError("objectives must be distinct")
        return value

    @model_validator(mode="after")
    def _check_space(self) -> StudySpec:
        if self.search_space is None:
            self.search_space = default_space(self.optimizer)
        check_rate_or_cutoff(self.search_space)
        for name, param in list(self.search_space.items()):
            self.search_space[name] = check_param(name, param, self.sampler.name)
        if self.optimizer == "filter":
            check_alpha_le_gamma(self.search_space)
        if len(self.objectives) > 1 and self.pruner.name != "none":
            raise fail("pruner.name", "pruning needs a single objective; use 'none'")
        return self

    @model_validator(mode="after")
    def _check_model_fits_dataset(self, info: ValidationInfo) -> StudySpec:
        """New specs only: stored ones (``context={"stored": True}``, ``stored_spec``) were
        valid when submitted and must stay readable."""
        if (info.context or {}).get("stored"):
            return self
        if reason := INCOMPATIBLE_MODEL_DATASETS.get((self.model, self.dataset)):
            raise fail("model", reason)
        return self

    @property
    def directions(self) -> list[str]:
        """Optuna study directions, one per objective."""
        return [OBJECTIVE_DIRECTIONS[o] for o in self.objectives]

    @property
    def is_multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def space(self) -> dict[str, Any]:
        """``search_space`` with the default filled in (never None after validation)."""
        return dict(self.search_space or {})
