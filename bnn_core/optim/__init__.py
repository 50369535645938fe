"""Optimizers for binary neural networks.

* Flip optimizers on +-1 weights: ``Bop`` (Helwegen et al. 2019), ``Bop2ndOrder``
  (Suarez-Ramirez et al. 2021) and ``CEMA`` (cascaded EMA filter, Quist et al. 2023).
* Latent-weight baselines: plain ``torch.optim`` Adam/AdamW/SGD on latent weights, ``SGDW``,
  the translation of latent SGD hyperparameters into filter rates (``sgd_to_filter``) and
  BinaryConnect's per-layer Xavier learning-rate multiplier (``xavier_lr_multiplier``).
* ``build_optimizer``: the binary optimizer of an ``OptimizerConfig`` plus Adam for the real
  parameters, with per-step schedules, as one ``BinaryOptimizerPair``.
"""

from ._base import BinaryOptimizer
from .bop import Bop, bop
from .bop2 import Bop2ndOrder, bop_2nd_order
from .cema import CEMA, CascadedEMA, cema
from .latent import (
    SGDW,
    FilterParameters,
    SGDParameters,
    filter_to_sgd,
    sgd_to_filter,
    xavier_lr_multiplier,
)
from .pair import REAL_ADAM_EPS, BinaryOptimizerPair, ScheduledHyperparameter, build_optimizer

__all__ = [
    "BinaryOptimizer",
    "Bop",
    "bop",
    "Bop2ndOrder",
    "bop_2nd_order",
    "CEMA",
    "CascadedEMA",
    "cema",
    "SGDW",
    "FilterParameters",
    "SGDParameters",
    "sgd_to_filter",
    "filter_to_sgd",
    "xavier_lr_multiplier",
    "BinaryOptimizerPair",
    "ScheduledHyperparameter",
    "build_optimizer",
    "REAL_ADAM_EPS",
]
