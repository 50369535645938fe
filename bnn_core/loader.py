"""A device-resident loader: a whole split on the device, batches without host round trips.

``DeviceLoader`` puts a split on the device once; each epoch draws its order (and, for
CIFAR-10, its pad/crop/flip augmentation) on the host in one copy, slices batches by index and
normalises on the device, so a training step makes no host round trip.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from .augment import AUGMENT_PAD, crop_flip, epoch_draws, normalize

__all__ = ["DeviceLoader"]


class DeviceLoader:
    """Batches of a uint8 split that lives on ``device``.

    Iterating yields ``(x, y)`` with ``x`` normalised to [-1, 1] (float32, or ``channels_last``
    if asked). With ``shuffle`` (and ``augment``) each epoch's order (and pad-4/crop/flip draws)
    come from ``generator``, a CPU generator, through ``augment.epoch_draws``, which the
    stacked trainer shares; they reach the device in one copy per epoch. With ``drop_last`` the
    trailing partial batch is dropped (Keras ``steps_per_epoch = N // batch_size``).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        device: torch.device,
        *,
        shuffle: bool = False,
        augment: bool = False,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
        channels_last: bool = False,
    ) -> None:
        self.x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        self.y = torch.from_numpy(np.ascontiguousarray(labels)).to(device)
        self.batch_size = batch_size
        self.device = device
        self.shuffle = shuffle
        self.augment = augment
        self.drop_last = drop_last and len(self.y) >= batch_size
        self.generator = generator
        self.channels_last = channels_last

    @property
    def num_samples(self) -> int:
        return int(self.y.shape[0])

    def __len__(self) -> int:
        n, bs = self.num_samples, self.batch_size
        return n // bs if self.drop_last else -(-n // bs)

    def _prepare(self, x: Tensor) -> Tensor:
        x = normalize(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n, bs = self.num_samples, self.batch_size
        order = offsets = flips = None
        if self.shuffle or self.augment:
            # Drawn as the stacked trainer draws a slot's epoch (same calls, same sizes).
            generator = self.generator or torch.default_generator
            draws = epoch_draws(n, len(self) * min(bs, n), generator, self.augment)
            order = draws.order.to(self.device) if self.shuffle else None
            if draws.offsets is not None and draws.flips is not None:
                offsets, flips = draws.offsets.to(self.device), draws.flips.to(self.device)
        for i in range(len(self)):
            if order is None:
                x, y = self.x[i * bs : (i + 1) * bs], self.y[i * bs : (i + 1) * bs]
            else:
                index = order[i * bs : (i + 1) * bs]
                x, y = self.x[index], self.y[index]
            if offsets is not None and flips is not None:
                part = slice(i * bs, i * bs + len(y))
                x = crop_flip(x, offsets[0, part], offsets[1, part], flips[part], AUGMENT_PAD)
            yield self._prepare(x), y
