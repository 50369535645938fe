r"""The optimizers as gradient filters: EMA rates, cutoff frequencies and frequency responses.

One EMA stage :math:`y_t = (1-r)\,y_{t-1} + r\,x_t` (Bop's :math:`m` with :math:`r=\gamma`,
the cascaded filter's two stages :math:`\gamma` then :math:`\alpha`) is the first-order
low-pass

.. math::
    H_r(e^{j\omega}) = \frac{r}{1 - (1-r)e^{-j\omega}}, \qquad
    |H_r|^2 = \frac{r^2}{1 - 2(1-r)\cos\omega + (1-r)^2},

with unit gain at DC. Frequencies here are in cycles per step, :math:`f = \omega / 2\pi`,
from 0 to the Nyquist frequency 1/2.

Cutoff: :math:`|H_r|^2 = 1/2` at :math:`\cos\omega_c = 1 - r^2/(2(1-r))`, computed as
:math:`\omega_c = 2\arcsin\!\big(r / (2\sqrt{1-r})\big)` (the same equation, without the
cancellation of ``arccos(1 - tiny)``). It exists only for :math:`0 < r \le 2\sqrt2 - 2
\approx 0.8284` (``MAX_RATE_WITH_CUTOFF``): above it the gain at Nyquist,
:math:`r/(2-r)`, stays above :math:`1/\sqrt2` and the stage attenuates no frequency by 3 dB.
The inverse, for :math:`0 < f \le 1/2`: with :math:`c = 1 - \cos\omega_c`,
:math:`r = -c + \sqrt{c^2 + 2c} = 2c / (c + \sqrt{c^2+2c})`. For small :math:`r`,
:math:`f_c \approx r / 2\pi`. A cutoff is also given as a period, :math:`1/f_c` steps, and
:math:`1/(f_c\,S)` epochs for :math:`S` steps per epoch.

Families (``optimizer_response``/``filter_summary``):

* ``bop``: one stage, :math:`\gamma`; ``bop2``: its first-moment stage :math:`\gamma`
  (the second moment :math:`v` is an EMA of :math:`g^2` with rate :math:`\sigma`, reported as a
  rate and cutoff; it normalises, it does not filter :math:`g` linearly);
* ``filter``: the cascade :math:`H_\gamma H_\alpha`, a second-order low-pass, with
  :math:`\alpha` taken from its schedule at the given step (a scheduled filter is
  time-varying: its response is the frozen one at that step);
* ``latent-sgd``: the equivalent cascade of ``bnn_core.optim.sgd_to_filter`` (decoupled weight
  decay: :math:`\gamma = 1-\mu`, :math:`\alpha_t = \eta_t\lambda`; coupled L2: the roots of
  :math:`z^2 - (1-\mu+\eta\lambda)z + \eta\lambda`), i.e. the response from the gradient to
  :math:`x = -\lambda(1-\mu)\theta` (resp. :math:`-\lambda\theta`), with the scheduled lr at
  the given step (exact for decoupled decay; for coupled L2 under a changing lr, the frozen
  response is an approximation). Without weight decay the latent weight is a pure integrator
  and there is no filter view;
* ``latent-adam``: none. Adam divides by :math:`\sqrt{\hat v}`, a per-weight, time-varying,
  data-dependent gain, so the map from gradients to latent weights is not a linear
  time-invariant filter and has no frequency response.

``order_is_symmetric`` says when the two stages of ``filter`` may be swapped.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .config import OptimizerConfig
from .optim.latent import sgd_to_filter
from .schedules import schedule_value

__all__ = [
    "MAX_RATE_WITH_CUTOFF",
    "rate_to_cutoff",
    "cutoff_to_rate",
    "cutoff_period_steps",
    "cutoff_period_epochs",
    "ema_response",
    "cascade_response",
    "latent_sgd_response",
    "filter_rates",
    "optimizer_response",
    "response_cutoff",
    "filter_summary",
    "order_is_symmetric",
]

MAX_RATE_WITH_CUTOFF = 2.0 * math.sqrt(2.0) - 2.0  # 0.828...; r/(2-r) = 1/sqrt(2) at Nyquist
NYQUIST = 0.5


def _check_rate(rate: float, name: str = "rate") -> float:
    if not (isinstance(rate, int | float) and math.isfinite(rate) and 0.0 < rate <= 1.0):
        raise ValueError(f"Invalid {name}: {rate!r} (an EMA rate must be in (0, 1])")
    return float(rate)


def rate_to_cutoff(rate: float) -> float:
    """The -3 dB cutoff (cycles per step) of the EMA with ``rate``.

    Raises ``ValueError`` for a rate outside (0, 1], and for ``rate > MAX_RATE_WITH_CUTOFF``
    (2 sqrt 2 - 2 = 0.8284...), where no frequency up to Nyquist is attenuated by 3 dB.
    """
    rate = _check_rate(rate)
    if rate > MAX_RATE_WITH_CUTOFF:
        raise ValueError(
            f"Invalid rate: {rate!r} has no -3 dB cutoff; an EMA has one only for rates in "
            f"(0, {MAX_RATE_WITH_CUTOFF:.6f}] (2*sqrt(2) - 2), its gain at Nyquist being "
            f"r / (2 - r) = {rate / (2.0 - rate):.4f} > 1/sqrt(2)"
        )
    half_sine = min(rate / (2.0 * math.sqrt(1.0 - rate)), 1.0)  # rounding at the boundary
    return 2.0 * math.asin(half_sine) / (2.0 * math.pi)


def cutoff_to_rate(cutoff: float) -> float:
    """The EMA rate whose -3 dB cutoff is ``cutoff`` cycles per step, for ``0 < cutoff <= 0.5``
    (``ValueError`` outside; 0.5, Nyquist, gives ``MAX_RATE_WITH_CUTOFF``)."""
    if not (isinstance(cutoff, int | float) and math.isfinite(cutoff) and 0 < cutoff <= NYQUIST):
        raise ValueError(
            f"Invalid cutoff: {cutoff!r} cycles per step (must be in (0, 0.5], 0.5 = Nyquist)"
        )
    c = 2.0 * math.sin(math.pi * cutoff) ** 2  # 1 - cos(2 pi f)
    return 2.0 * c / (c + math.sqrt(c * c + 2.0 * c))


def cutoff_period_steps(rate: float) -> float:
    """The period of the cutoff frequency, ``1 / rate_to_cutoff(rate)`` steps."""
    return 1.0 / rate_to_cutoff(rate)


def cutoff_period_epochs(rate: float, steps_per_epoch: int) -> float:
    """The period of the cutoff frequency in epochs of ``steps_per_epoch`` steps."""
    if steps_per_epoch < 1:
        raise ValueError(f"Invalid steps_per_epoch: {steps_per_epoch!r} (must be >= 1)")
    return cutoff_period_steps(rate) / steps_per_epoch


def ema_response(rate: float, freqs: Any) -> np.ndarray:
    """Complex response ``r / (1 - (1 - r) exp(-2j pi f))`` at ``freqs`` (cycles per step)."""
    rate = _check_rate(rate)
    z_inv = np.exp(-2j * np.pi * np.asarray(freqs, dtype=np.float64))
    return rate / (1.0 - (1.0 - rate) * z_inv)


def cascade_response(alpha: float, gamma: float, freqs: Any) -> np.ndarray:
    """The cascaded filter: the product of its gamma and alpha stages."""
    return ema_response(gamma, freqs) * ema_response(alpha, freqs)


def latent_sgd_response(
    lr: float, momentum: float, weight_decay: float, decoupled: bool, freqs: Any
) -> np.ndarray:
    """Latent SGD's response through its equivalent cascade (``sgd_to_filter``; ValueError
    where none exists, e.g. ``weight_decay == 0``)."""
    alpha, gamma = sgd_to_filter(lr, momentum, weight_decay, decoupled)
    return cascade_response(alpha, gamma, freqs)


def filter_rates(
    config: OptimizerConfig, step: int = 0, steps_per_epoch: int = 1, epochs: int | None = None
) -> dict[str, float] | None:
    """The EMA rates of ``config``'s gradient filter at global ``step`` (schedules applied),
    in cascade order: {"gamma": ...} (bop, bop2), {"gamma", "alpha"} (filter, latent-sgd).
    None for a family without a filter view (latent-adam, latent-sgd without weight decay).
    ``epochs`` (the run's length) is needed to evaluate a schedule at ``step > 0``."""
    if step > 0 and epochs is None:
        raise ValueError("epochs: needed to evaluate the schedules at step > 0")
    total = steps_per_epoch * (epochs or 1)

    def at(name: str) -> float:
        base = getattr(config, name)
        return schedule_value(
            base, getattr(config, f"{name}_schedule"), step, steps_per_epoch, total
        )

    if config.name in ("bop", "bop2"):
        return {"gamma": at("gamma")}
    if config.name == "filter":
        return {"gamma": config.gamma, "alpha": at("alpha")}  # gamma is never scheduled
    if config.name == "latent-sgd" and config.weight_decay > 0:
        alpha, gamma = sgd_to_filter(
            at("lr"), config.momentum, config.weight_decay, config.decoupled_weight_decay
        )
        return {"gamma": gamma, "alpha": alpha}
    return None


def optimizer_response(
    config: OptimizerConfig,
    freqs: Any,
    step: int = 0,
    steps_per_epoch: int = 1,
    epochs: int | None = None,
) -> np.ndarray | None:
    """Complex response of ``config``'s gradient filter at ``step``; None without a filter view."""
    rates = filter_rates(config, step, steps_per_epoch, epochs)
    if rates is None:
        return None
    response = np.ones(np.shape(freqs), dtype=np.complex128)
    for rate in rates.values():
        response = response * ema_response(rate, freqs)
    return response


def response_cutoff(rates: list[float]) -> float | None:
    """The -3 dB frequency (cycles per step) of a cascade of EMAs with ``rates``; None when the
    gain at Nyquist stays above 1/sqrt(2). Each stage's gain falls monotonically from 1 at DC
    to Nyquist, so the product crosses 1/2 in power exactly once (found by bisection)."""

    def power(f: float) -> float:
        return float(np.prod([abs(ema_response(r, f)) ** 2 for r in rates]))

    if power(NYQUIST) > 0.5:
        return None
    low, high = 0.0, NYQUIST
    for _ in range(200):
        mid = 0.5 * (low + high)
        if power(mid) > 0.5:
            low = mid
        else:
            high = mid
        if high - low <= 1e-15 * high:
            break
    return 0.5 * (low + high)


def _stage(name: str, rate: float, steps_per_epoch: int) -> dict[str, Any]:
    cutoff = rate_to_cutoff(rate) if rate <= MAX_RATE_WITH_CUTOFF else None
    return {"name": name, "rate": rate, **_periods(cutoff, steps_per_epoch)}


def _periods(cutoff: float | None, steps_per_epoch: int) -> dict[str, float | None]:
    if cutoff is None:
        return {"cutoff": None, "period_steps": None, "period_epochs": None}
    return {
        "cutoff": cutoff,
        "period_steps": 1.0 / cutoff,
        "period_epochs": 1.0 / cutoff / steps_per_epoch,
    }


def _round(value: float) -> float:
    return float(f"{value:.6g}")


def filter_summary(
    optimizer_config: OptimizerConfig,
    steps_per_epoch: int,
    step: int = 0,
    n_points: int = 64,
    epochs: int | None = None,
) -> dict[str, Any] | None:
    """A compact, JSON-able view of ``optimizer_config``'s gradient filter at ``step``.

    ``{"family", "step", "steps_per_epoch", "stages": [{"name", "rate", "cutoff" (cycles per
    step), "period_steps", "period_epochs"}, ...], "cutoff", "period_steps", "period_epochs"
    (of the whole filter), "freqs" (log-spaced, cycles per step, up to Nyquist), "magnitude"
    (|H| at freqs)}`` plus ``"second_moment"`` (the sigma stage) for bop2. Cutoffs that do not
    exist are None. Floats have 6 significant digits (under 4 KB with the default 64 points).
    None for families without a filter view (latent-adam; latent-sgd without weight decay).
    """
    if steps_per_epoch < 1:
        raise ValueError(f"Invalid steps_per_epoch: {steps_per_epoch!r} (must be >= 1)")
    if not 2 <= n_points <= 1024:
        raise ValueError(f"Invalid n_points: {n_points!r} (must be in [2, 1024])")
    rates = filter_rates(optimizer_config, step, steps_per_epoch, epochs)
    if rates is None:
        return None
    stages = [_stage(name, rate, steps_per_epoch) for name, rate in rates.items()]
    # From well below the slowest stage's cutoff (gain ~1) up to Nyquist.
    lowest = max(min(rates.values()) / (2.0 * math.pi) / 100.0, 1e-12)
    freqs = np.logspace(math.log10(lowest), math.log10(NYQUIST), n_points)
    magnitude = np.ones(n_points)
    for rate in rates.values():
        magnitude = magnitude * np.abs(ema_response(rate, freqs))
    summary: dict[str, Any] = {
        "family": optimizer_config.name,
        "step": step,
        "steps_per_epoch": steps_per_epoch,
        "stages": stages,
        **_periods(response_cutoff(list(rates.values())), steps_per_epoch),
        "freqs": freqs,
        "magnitude": magnitude,
    }
    if optimizer_config.name == "bop2":
        sigma = optimizer_config.sigma
        if step > 0:
            sigma = schedule_value(
                sigma, optimizer_config.sigma_schedule, step, steps_per_epoch,
                steps_per_epoch * (epochs or 1),
            )  # fmt: skip
        summary["second_moment"] = _stage("sigma", sigma, steps_per_epoch)
    return _plain(summary)


def _plain(value: Any) -> Any:
    """Rounded plain floats, lists and dicts (JSON-able)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(item) for item in value]
    if isinstance(value, float | np.floating):
        return _round(float(value))
    return value


def order_is_symmetric(config: OptimizerConfig) -> bool:
    """Whether swapping the cascaded filter's two rates (alpha <-> gamma) trains identically.

    Two linear time-invariant stages commute, so with a constant alpha (gamma is never
    scheduled) CEMA(alpha, gamma) and CEMA(gamma, alpha) produce the same filter state and the
    same flips, and a search may keep only alpha <= gamma. With a scheduled alpha the stages
    are time-varying and do not commute: swapped pairs train differently and both must be
    tried. False for every other family (there is no pair of rates to swap).
    """
    return config.name == "filter" and config.alpha_schedule.kind == "constant"
