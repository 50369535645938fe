"""N trials of one architecture trained at once as one grouped network.

N trials, each with its own weights, batches, seed and hyperparameters, run as one network
whose convolutions are grouped (``groups=N``), linears batched (``bmm``) and BatchNorms
widened to ``N*C`` channels, so small-batch trials fill a GPU without changing what each trial
computes. For the worker::

    from bnn_core.stacked import StackedTrainer, choose_slots, is_stackable

    if is_stackable(config):               # any family of STACKABLE_FAMILIES
        n = choose_slots(config.model, dataset.input_shape, config.batch_size,
                         device, max_slots=32, family=config.optimizer.name)
        trainer = StackedTrainer(n, dataset=dataset)    # dataset: bnn_core.data.Dataset
        trainer.run(next_trial, on_trial_end=tell)

Contract (details in ``trainer``):

* ``next_trial() -> (TrainConfig, on_epoch_end | None) | None`` is called whenever a slot is
  free. All configs share ``SHARED_FIELDS`` with the first one, else ``ConfigError(field)``;
  epochs, seed and every hyperparameter and schedule may differ. ``None``: nothing more to
  hand out (it is not asked again).
* ``on_epoch_end(EpochMetrics)`` as in ``bnn_core.train.train``: truthy = prune this trial.
  If the callback object has a ``should_stop()`` method it is polled every
  ``config.stop_check_steps`` steps: true ends the trial with its completed epochs and
  ``stopped_early=True``.
* ``on_trial_end(TrainResult, error)`` when a trial ends; ``error`` is a
  ``bnn_core.train.TrainingDiverged`` when its loss became non-finite, which ends that trial
  alone: the others continue exactly as beside a healthy trial.
* ``run`` returns every ``TrainResult`` in hand-out order. A CUDA out-of-memory error halves N
  and parks the dropped trials until a slot frees up (``trainer.oom_backoffs``); once
  ``next_trial`` is exhausted, N shrinks to a power of two over the busy slots.

``train_stacked(configs, callbacks)`` is the one-shot form (same epochs required).
``choose_slots`` picks N from free memory, or by measured throughput within memory
(``pick_slots``). With ``config.compile`` the network is compiled once per shape per process
(``compile_cache``); ``StackedTrainer(capture="graph")`` replays whole steps from a CUDA
graph (``capture``). Lower level: ``stack_models`` / ``unstack`` /
``StackedNetwork.export_trial`` and ``StackedOptimizer``.

Families (``STACKABLE_FAMILIES``): the flip optimizers ``BINARY_FAMILIES`` (bop, bop2, filter;
+-1 weights) and the latent-weight baselines ``LATENT_FAMILIES`` (latent-adam, latent-sgd),
each with Adam on the real parameters; a latent trial is built as ``bnn_core.train`` builds it
and its ``flip_ratio`` counts changes of ``w >= 0`` across a step.

Numerics: in fp32 a stacked trial computes what it computes alone: the same forward, the same
gradients up to summation order (batched against single matmuls and convolutions), the same
optimizer arithmetic. Where a summation-order difference decides a borderline flip, or Adam
normalises the summation noise of an analytically zero gradient, the trajectory drifts the
way a different random stream would: compare stacked and solo trials as runs. With
``precision="bf16"`` on CUDA the binary convolutions and matmuls run under bf16 autocast
(exact for +-1 x +-1 products; the first layer sees real pixels and stays fp32); parameters,
gradients and optimizer state stay fp32 and no grad scaler is needed (bf16 has fp32's
exponent range).
"""

from .capture import CAPTURE_MODES
from .memory import (
    choose_slots,
    estimate_slot_bytes,
    measure_slot_bytes,
    measure_step_seconds,
    pick_slots,
)
from .network import (
    CONV_IMPLS,
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
from .optim import BINARY_FAMILIES, LATENT_FAMILIES, STACKABLE_FAMILIES, StackedOptimizer
from .stackable import SHARED_FIELDS, check_stackable, is_stackable
from .trainer import StackedTrainer, train_stacked
from .tuning import choose_conv_impl, time_conv_impls

__all__ = [
    "BINARY_FAMILIES",
    "LATENT_FAMILIES",
    "STACKABLE_FAMILIES",
    "CONV_IMPLS",
    "choose_conv_impl",
    "time_conv_impls",
    "SHARED_FIELDS",
    "StackedTrainer",
    "check_stackable",
    "choose_slots",
    "pick_slots",
    "measure_step_seconds",
    "CAPTURE_MODES",
    "estimate_slot_bytes",
    "is_stackable",
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
