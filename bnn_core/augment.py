"""Batched, device-side image augmentation and normalisation (no per-sample Python loop).

The Bop paper's CIFAR-10 pipeline: zero-pad 4 px on the raw uint8 image,
random crop back to the original size, random horizontal flip, then ``x / 127.5 - 1``.
Crop and flip are one gather: every output pixel reads ``padded[b, :, oy + i, ox + j]`` (or
``ox + W - 1 - j`` when the sample is flipped).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["EpochDraws", "epoch_draws", "normalize", "random_crop_flip", "crop_flip"]

AUGMENT_PAD = 4  # the Bop recipe's zero padding


def normalize(x: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 [0, 255] -> [-1, 1] (``x / 127.5 - 1``)."""
    return x.to(dtype) / 127.5 - 1.0


def crop_flip(x: Tensor, offsets_y: Tensor, offsets_x: Tensor, flip: Tensor, pad: int) -> Tensor:
    """Zero-pad ``x`` (B, C, H, W) by ``pad`` and take per-sample crops of size (H, W).

    ``offsets_y``/``offsets_x`` are (B,) ints in [0, 2 * pad]; ``flip`` is a (B,) bool mask of
    samples to mirror horizontally. Works on any dtype (uint8 included) and device.
    """
    batch, _, height, width = x.shape
    padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
    rows = offsets_y[:, None] + torch.arange(height, device=x.device)  # (B, H)
    cols = torch.arange(width, device=x.device)
    cols = torch.where(flip[:, None], width - 1 - cols, cols) + offsets_x[:, None]  # (B, W)
    index = torch.arange(batch, device=x.device)[:, None, None]
    # advanced indices on dims 0, 2, 3 -> result (B, H, W, C)
    out = padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


class EpochDraws(NamedTuple):
    """One epoch's randomness of a training split: batch order and augmentation draws."""

    order: Tensor  # (n,) permutation of the split
    offsets: Tensor | None  # (2, draws) crop offsets in [0, 2 * pad], or None without augment
    flips: Tensor | None  # (draws,) bool


def epoch_draws(
    n: int, draws: int, generator: torch.Generator, augment: bool, pad: int = AUGMENT_PAD
) -> EpochDraws:
    """Draw an epoch's order and ``draws`` crop/flip samples from a host ``generator``.

    The solo loader and the stacked trainer both call this, in this order, from a CPU
    generator seeded with the trial's seed: so a trial sees the same batches and the same
    augmentation alone or stacked, on any device. One host-to-device copy per epoch follows;
    nothing is drawn per step.
    """
    order = torch.randperm(n, generator=generator)
    if not augment:
        return EpochDraws(order, None, None)
    offsets = torch.randint(0, 2 * pad + 1, (2, draws), generator=generator)
    flips = torch.rand(draws, generator=generator) < 0.5
    return EpochDraws(order, offsets, flips)


def random_crop_flip(x: Tensor, pad: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """Random ``pad``-px translation (zero padding) and random horizontal flip, batched."""
    batch = x.shape[0]
    offsets = torch.randint(
        0, 2 * pad + 1, (2, batch), device=x.device, generator=generator, dtype=torch.long
    )
    flip = torch.rand(batch, device=x.device, generator=generator) < 0.5
    return crop_flip(x, offsets[0], offsets[1], flip, pad)
