"""N trials of one architecture trained at once as one grouped network (issue 5)."""

from .memory import choose_slots, estimate_slot_bytes, measure_slot_bytes
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
    "choose_slots",
    "estimate_slot_bytes",
    "measure_slot_bytes",
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
