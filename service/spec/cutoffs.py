r"""EMA rates given as cutoff frequencies: the spec's ``<name>_cutoff`` parameters.

Every EMA rate of a binary family (``gamma`` of bop and bop2, ``sigma`` of bop2, ``alpha`` and
``gamma`` of filter) may be given instead as ``<name>_cutoff``: the -3 dB cutoff of the EMA
``y <- (1 - r) y + r x`` in cycles per step, fixed, as a (log) range or as choices -- never both
the rate and its cutoff. The worker samples the cutoff (the Optuna parameter is
``<name>_cutoff``) and trains with the rate ``bnn_core.filters.cutoff_to_rate`` derives.

The relation is :math:`\cos(2\pi f) = 1 - r^2 / (2(1 - r))`. A cutoff exists for rates up to
``2*sqrt(2) - 2`` (above it the gain at Nyquist stays over 1/sqrt(2)), and that largest rate has
its cutoff at Nyquist, 0.5 cycles per step: a cutoff must lie in (0, 0.5]. Lower cutoff, lower
rate (both directions are monotone), so the filter's ``alpha <= gamma`` holds in cutoff terms
exactly when it holds in rates.

The service cannot import ``bnn_core`` (torch), so this module keeps the same closed form as
``bnn_core.filters`` for the spec's checks; one formula, and
``tests/service/test_service_spec_cutoffs.py`` asserts that both agree over a grid of rates and
cutoffs. The worker converts with ``bnn_core.filters`` itself.
"""

from __future__ import annotations

import math

__all__ = [
    "CUTOFF_PARAMS",
    "MAX_RATE_WITH_CUTOFF",
    "MAX_CUTOFF",
    "cutoff_to_rate",
    "rate_to_cutoff",
]

# ``<name>_cutoff`` -> the EMA rate it sets.
CUTOFF_PARAMS: dict[str, str] = {
    "gamma_cutoff": "gamma",
    "sigma_cutoff": "sigma",
    "alpha_cutoff": "alpha",
}
MAX_RATE_WITH_CUTOFF = 2.0 * math.sqrt(2.0) - 2.0


def rate_to_cutoff(rate: float) -> float | None:
    """The cutoff (cycles per step) of an EMA with ``0 < rate <= 1``; None above
    ``MAX_RATE_WITH_CUTOFF`` (no frequency is attenuated by 3 dB)."""
    if rate > MAX_RATE_WITH_CUTOFF:
        return None
    half_sine = min(rate / (2.0 * math.sqrt(1.0 - rate)), 1.0)
    return math.asin(half_sine) / math.pi


def cutoff_to_rate(cutoff: float) -> float:
    """The EMA rate whose cutoff is ``0 < cutoff <= MAX_CUTOFF`` cycles per step."""
    c = 2.0 * math.sin(math.pi * cutoff) ** 2  # 1 - cos(2 pi f)
    return 2.0 * c / (c + math.sqrt(c * c + 2.0 * c))


# The cutoff of the largest rate that has one: Nyquist, 0.5 cycles per step.
MAX_CUTOFF: float = rate_to_cutoff(MAX_RATE_WITH_CUTOFF) or 0.5
