"""N trials of one architecture trained at once as one grouped network (issue 5)."""

from .network import (
    StackedBinaryConv2d,
    StackedBinaryLinear,
    StackedLinear,
    StackedNetwork,
    StackingError,
    stack_models,
    trial_view,
    unstack,
    verify_stacking,
)
from .optim import BINARY_FAMILIES, StackedOptimizer
from .trainer import SHARED_FIELDS, StackedTrainer, check_stackable, train_stacked

__all__ = [
    "BINARY_FAMILIES",
    "SHARED_FIELDS",
    "StackedTrainer",
    "check_stackable",
    "train_stacked",
    "StackedBinaryConv2d",
    "StackedBinaryLinear",
    "StackedLinear",
    "StackedNetwork",
    "StackedOptimizer",
    "StackingError",
    "stack_models",
    "trial_view",
    "unstack",
    "verify_stacking",
]
