"""Fixtures shared by the bnn_core tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from bnn_core.data import Dataset, load_dataset


@pytest.fixture(scope="session")
def noisy_digits() -> Dataset:
    """digits with a little pixel noise, so that no pixel is constant within a batch.

    A pixel constant over a batch (the blank borders of plain digits) feeds a BatchNorm'd
    unit: its weights' gradient is 0 analytically but +-1e-9 of summation noise numerically,
    and that noise differs between a batched (stacked) and a single matmul. Adam divides it by
    sqrt(v) + 1e-8, so those latent weights take steps of ~lr/10 with the noise's sign: a few
    of them flip differently alone and stacked (measured on plain digits: a latent-adam
    trial with Xavier lr and no weight decay ends epoch 2 at flip ratio 0.00607 stacked vs
    0.00611 alone). Without constant pixels each trial flips exactly the same weights.
    """
    data = load_dataset("digits")
    noise = np.random.default_rng(0).integers(0, 64, size=data.x_train.shape)
    noisy = np.clip(data.x_train.astype(np.int64) + noise, 0, 255).astype(np.uint8)
    return dataclasses.replace(data, x_train=noisy)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for a module's tests: on the shared 2-core machines tiny nets run
    several times faster on one thread than on two competing with other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
