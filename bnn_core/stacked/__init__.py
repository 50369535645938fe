"""N trials of one architecture trained at once as one grouped network (issue 5).

Why: at the Bop recipe's batch of 50 a single BinaryNet trial is launch-bound and leaves an
H100 mostly idle; raising the batch would change what the study measures. Instead N trials,
each with its own weights, batches, seed and hyperparameters, run as one network whose
convolutions are grouped (``groups=N``), linears batched (``bmm``) and BatchNorms widened to
``N*C`` channels (performance.md 2.2, 2.6). On CUDA the trainer times the grouped binary
convolutions against N separate ones and keeps the faster (``choose_conv_impl``).

For the worker (the one caller)::

    from bnn_core.stacked import StackedTrainer, choose_slots, is_stackable

    if is_stackable(config):               # any family of STACKABLE_FAMILIES
        n = choose_slots(config.model, dataset.input_shape, config.batch_size,
                         device, max_slots=32, family=config.optimizer.name)
        trainer = StackedTrainer(n, dataset=dataset)    # dataset: bnn_core.data.Dataset
        trainer.run(next_trial, on_trial_end=tell)

* ``next_trial() -> (TrainConfig, on_epoch_end | None) | None``: called whenever a slot is
  free (N times at the start, then after each epoch in which trials finished). All configs
  must share ``SHARED_FIELDS`` (model, dataset, batch_size, val_fraction, max_train_samples,
  augment, device, precision, channels_last, compile, optimizer.name) with the first one,
  else ``ConfigError(field)``; epochs, seed and every hyperparameter/schedule may differ.
  Return ``None`` when there is nothing to hand out (it is not asked again).
* ``on_epoch_end(EpochMetrics)``: as in ``bnn_core.train.train``; truthy = stop/prune this
  trial, its slot is refilled in place with the next trial.
* ``on_trial_end(TrainResult, error)``: called when a trial completes, is stopped, or
  diverges (``error`` is a ``bnn_core.train.TrainingDiverged``, else ``None``).
* ``run`` returns all ``TrainResult``s in hand-out order. A CUDA OOM halves N and parks the
  dropped trials until a slot frees up (``trainer.oom_backoffs`` counts it). Once
  ``next_trial`` is exhausted, N shrinks to a power of two over the busy slots.

``train_stacked(configs, callbacks)`` is the one-shot form (same epochs required). Lower
level: ``stack_models`` / ``unstack`` / ``StackedNetwork.export_trial`` (a finished trial as
a plain single model) and ``StackedOptimizer`` (per-trial Bop, Bop2ndOrder, CEMA, or
latent-weight Adam/AdamW, SGD/SGDW, each + Adam on the real parameters).

Families (``STACKABLE_FAMILIES``): the flip optimizers ``BINARY_FAMILIES`` (bop, bop2,
filter; +-1 weights) and the latent-weight baselines ``LATENT_FAMILIES`` (latent-adam,
latent-sgd). A latent trial is built as ``bnn_core.train`` builds it (seed, ``build_model``,
``use_latent_weights(model, latent_init_scale)`` on its device), its stacked layers run
``ste_sign`` of the latent weight, and its per-trial lr (with schedule), weight_decay,
momentum, latent_weight_clip, decoupled_weight_decay (Adam vs AdamW, SGD vs SGDW) and
latent_lr_scaling ("none"/"xavier"; the multipliers are per layer) may all differ within a
stack. ``flip_ratio`` counts changes of ``w >= 0`` across a step, as ``FlipCounter`` does for
latent layers; ``hyperparameters`` are the solo ones (``lr``, ``real_lr``).

Numerics: in fp32 a stacked trial computes what it computes alone (same forward, gradients
up to summation order, the same flips given the same gradients: tests/core/test_stacked.py;
for the latent families the same latent weights, optimizer state and flips, bit-identical on
the test CPU after 6 steps: tests/core/test_stacked_latent.py).
Summation order is not the same (batched vs single matmuls and convs): gradients agree to about
1e-9, and where such a difference decides a borderline flip the trajectory drifts the way a
different random stream would. Measured on CPU: Bop on digits stays bit-identical to solo for
two epochs, while Bop2ndOrder on the full-width mlp ends epoch 2 at train loss 0.571 alone and
0.573 / 0.569 in two identical slots. Latent Adam has its own amplifier: a weight whose
gradient is 0 analytically (its input is constant over the batch, e.g. a blank border pixel,
and a BatchNorm follows) gets +-1e-9 of summation noise, which Adam normalises into steps of
~lr/10 with the noise's sign; on plain digits a latent-adam trial (Xavier lr, no weight decay)
ends epoch 2 at flip ratio 0.00607 stacked vs 0.00611 alone, while with no constant pixel every
latent trial flips exactly the same weights (coupled weight decay also masks the noise).
Compare stacked and solo trials as runs, not bit for bit.
With ``precision="bf16"`` on CUDA the convs and matmuls run under bf16 autocast (exact for
+-1 x +-1 products; the first layer sees real pixels and stays fp32), parameters,
gradients and all optimizer state stay fp32, and no grad scaler is used (bf16 has fp32's
exponent range, so nothing needs unscaling before Bop's threshold test).
"""

from .memory import choose_slots, estimate_slot_bytes, measure_slot_bytes
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
from .trainer import SHARED_FIELDS, StackedTrainer, check_stackable, is_stackable, train_stacked
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
