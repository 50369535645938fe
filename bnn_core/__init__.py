"""bnn_core: a pure PyTorch library for training binary neural networks.

Layers, models, binary optimizers (Bop, Bop2ndOrder, the cascaded-EMA filter of Quist et al.,
latent-weight baselines), schedules, data and the training loop. It knows nothing of Optuna,
SQL or HTTP.
"""

from .config import ConfigError, EpochMetrics, OptimizerConfig, Schedule, TrainConfig, TrainResult

__all__ = [
    "ConfigError",
    "EpochMetrics",
    "OptimizerConfig",
    "Schedule",
    "TrainConfig",
    "TrainResult",
]
