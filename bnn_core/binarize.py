"""Sign functions with straight-through gradients.

Both functions are written with the detach trick instead of a custom ``autograd.Function``:
it costs no Python-level autograd node per call, works under ``torch.func.vmap`` and
``torch.compile``, and gives exactly the larq gradients.

* ``ste_sign`` (Courbariaux et al. 2016; larq ``ste_sign``):
  forward ``sign(x)`` with ``sign(0) = +1``; backward ``dy * 1{|x| <= 1}``.
* ``approx_sign`` (Bi-Real Net, Liu et al. 2018; larq ``approx_sign``):
  forward ``sign(x)`` with ``sign(0) = +1``; backward ``dy * (2 - 2|x|) * 1{|x| <= 1}``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sign", "ste_sign", "approx_sign", "ACTIVATION_QUANTIZERS"]


def sign(x: Tensor) -> Tensor:
    """Strict sign: +1 where ``x >= 0``, -1 elsewhere (``torch.sign`` maps 0 to 0)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def ste_sign(x: Tensor) -> Tensor:
    """Sign forward, hard-tanh straight-through estimator backward."""
    clipped = x.clamp(-1.0, 1.0)
    return clipped + (sign(x) - clipped).detach()


def approx_sign(x: Tensor) -> Tensor:
    """Sign forward, piecewise-quadratic (Bi-Real) surrogate gradient backward.

    The surrogate ``2x - x|x|`` on ``[-1, 1]`` has derivative ``2 - 2|x|``.
    """
    clipped = x.clamp(-1.0, 1.0)
    surrogate = 2.0 * clipped - clipped * clipped.abs()
    return surrogate + (sign(x) - surrogate).detach()


ACTIVATION_QUANTIZERS = {"ste_sign": ste_sign, "approx_sign": approx_sign}
