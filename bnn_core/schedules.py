"""Hyperparameter schedules evaluated on the global optimizer step.

Keras evaluates ``LearningRateSchedule`` objects at ``optimizer.iterations``, the number of
steps already taken, and the Bop and Bop2ndOrder recipes schedule gamma and tau that way, per
step and not per epoch. ``step`` here is that counter: 0 for the first update. The list of
kinds and their parameters is ``bnn_core.config.Schedule``'s.
"""

from __future__ import annotations

import math

from .config import Schedule

__all__ = ["schedule_value"]


def schedule_value(
    base: float, schedule: Schedule, step: int, steps_per_epoch: int, total_steps: int
) -> float:
    """The value of a hyperparameter with initial value ``base`` at global step ``step``.

    * ``constant``: ``base``.
    * ``staircase``: ``base * factor ** floor(step / (every_epochs * steps_per_epoch))``
      (Keras ``ExponentialDecay(staircase=True)``).
    * ``linear``: ``end + (base - end) * (1 - min(step, total) / total)`` (Keras
      ``PolynomialDecay``, power 1); stays at ``end`` after ``total_steps``.
    * ``cosine``: ``end + (base - end) * (1 + cos(pi * min(step, total) / total)) / 2``.
    * ``linear-epoch``: ``end + (base - end) * (1 - epoch / epochs)`` with
      ``epoch = step // steps_per_epoch`` and ``epochs = total_steps // steps_per_epoch``:
      piecewise constant per epoch, the alpha decay of Quist et al.'s code (``end`` = 0 there).
    * ``polynomial``: ``end + (base - end) * (1 - min(step, total) / total) ** power`` (Keras
      ``PolynomialDecay(power=...)``, without cycling).
    """
    _check_arguments(step, steps_per_epoch, total_steps)
    if schedule.kind == "constant":
        return base
    if schedule.kind == "staircase":
        stairs = step // (schedule.every_epochs * steps_per_epoch)
        return base * schedule.factor**stairs
    if schedule.kind == "linear-epoch":
        epochs = max(total_steps // steps_per_epoch, 1)
        progress = min(step // steps_per_epoch, epochs) / epochs
        return _interpolate(base, schedule.end_value, 1.0 - progress)
    progress = min(step, total_steps) / total_steps
    if schedule.kind == "linear":
        return _interpolate(base, schedule.end_value, 1.0 - progress)
    if schedule.kind == "polynomial":
        return _interpolate(base, schedule.end_value, (1.0 - progress) ** schedule.power)
    if schedule.kind == "cosine":
        return _interpolate(base, schedule.end_value, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"schedule.kind: unknown {schedule.kind!r}")


def _interpolate(base: float, end: float, weight: float) -> float:
    """``base`` at weight 1, ``end`` at weight 0, both exactly (also when ``end > base``)."""
    return base * weight + end * (1.0 - weight)


def _check_arguments(step: int, steps_per_epoch: int, total_steps: int) -> None:
    if step < 0:
        raise ValueError(f"Invalid step: {step!r} (must be >= 0)")
    if steps_per_epoch < 1:
        raise ValueError(f"Invalid steps_per_epoch: {steps_per_epoch!r} (must be >= 1)")
    if total_steps < 1:
        raise ValueError(f"Invalid total_steps: {total_steps!r} (must be >= 1)")
