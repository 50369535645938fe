"""Hard ceilings of every number and string a client can send, defined once.

Contract:

* These are the largest values the code itself supports (database column types, numpy seeds,
  memory per request). They appear in the OpenAPI schema (``le=``/``max_length=`` of
  :class:`service.spec.StudySpec` and of the API's path and query parameters), so a client
  sees them before it sends anything.
* The operator's own limits, which are usually lower, live in :class:`service.settings.Settings`
  (``max_trials``, ``max_epochs``, ``max_batch_size``, ``max_trials_per_gpu``,
  ``max_request_bytes``); a settings value can never exceed the ceiling here.
* Pure constants: ``service.settings`` and ``service.spec`` both import this module.
"""

from __future__ import annotations

__all__ = [
    "INT32_MAX",
    "SEED_LIMIT",
    "MAX_N_TRIALS",
    "MAX_EPOCHS",
    "MAX_BATCH_SIZE",
    "MAX_TRIALS_PER_GPU",
    "MAX_RETRIES",
    "MAX_TRAIN_SAMPLES",
    "MAX_TIMEOUT_S",
    "MAX_PRUNER_STEPS",
    "MAX_REDUCTION_FACTOR",
    "MAX_CHOICES",
    "MAX_CHOICE_CHARS",
    "MAX_NAME_CHARS",
    "MAX_OWNER_CHARS",
    "MAX_DESCRIPTION_CHARS",
    "MAX_REQUEST_BYTES",
]

# Ids, counters and offsets are 32-bit INTEGER columns in bnn_studies and Optuna's tables.
INT32_MAX = 2**31 - 1
# numpy's and Optuna's samplers take seeds in [0, 2**32).
SEED_LIMIT = 2**32

MAX_N_TRIALS = 1_000_000
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 1 << 20
MAX_TRIALS_PER_GPU = 1024
MAX_RETRIES = 100
MAX_TRAIN_SAMPLES = 1_000_000_000
MAX_TIMEOUT_S = 10 * 366 * 24 * 3600.0  # ten years
MAX_PRUNER_STEPS = 1_000_000
MAX_REDUCTION_FACTOR = 100
# Optuna stores a categorical's choices once per trial, so a long list multiplies storage.
MAX_CHOICES = 256
MAX_CHOICE_CHARS = 64
MAX_NAME_CHARS = 63
MAX_OWNER_CHARS = 128
MAX_DESCRIPTION_CHARS = 2000
# A spec is a few kilobytes; no request body of this API needs more than a few hundred.
MAX_REQUEST_BYTES = 16 << 20
