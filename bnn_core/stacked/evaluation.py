"""Per-trial loss and accuracy of a ``StackedNetwork`` over rows of the data.

``index`` is ``[V, N]``: row ``v`` of trial ``n`` is image ``index[v, n]``, so every trial is
scored on its own validation split (or all on the test set) in one pass. Chunks hold at most
``EVAL_IMAGES`` images over all trials; a CUDA out-of-memory error halves the chunk and
retries, down to one row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..augment import normalize
from ..devices import autocast
from .network import StackedNetwork

__all__ = ["EVAL_BATCH_SIZE", "EVAL_IMAGES", "evaluate", "evaluate_chunks"]

EVAL_BATCH_SIZE = 1000  # rows per trial, capped so that one chunk holds <= EVAL_IMAGES images
EVAL_IMAGES = 2048


@torch.no_grad()
def evaluate(
    network: StackedNetwork, index: Tensor, x_all: Tensor, y_all: Tensor, precision: str
) -> tuple[Tensor, Tensor]:
    """Per-trial ``(mean cross-entropy, accuracy)`` as ``[N]`` device tensors (no host sync);
    ``network`` is in eval mode meanwhile and back in train mode afterwards."""
    chunk = max(1, min(EVAL_BATCH_SIZE, EVAL_IMAGES // network.n_trials))
    network.eval()
    try:
        while True:
            out_of_memory = False
            try:
                return evaluate_chunks(network, index, x_all, y_all, chunk, precision)
            except torch.cuda.OutOfMemoryError:
                if chunk == 1:
                    raise
                out_of_memory = True
            if out_of_memory:  # outside the except block: the traceback pins no tensors
                chunk //= 2
                torch.cuda.empty_cache()
    finally:
        network.train()


@torch.no_grad()
def evaluate_chunks(
    network: StackedNetwork,
    index: Tensor,
    x_all: Tensor,
    y_all: Tensor,
    chunk: int,
    precision: str,
) -> tuple[Tensor, Tensor]:
    """One pass over ``index`` in chunks of ``chunk`` rows."""
    n = network.n_trials
    device = x_all.device
    loss = torch.zeros(n, device=device)
    hits = torch.zeros(n, dtype=torch.int64, device=device)
    for lo in range(0, index.shape[0], chunk):
        rows = index[lo : lo + chunk]
        x, y = normalize(x_all[rows]), y_all[rows]
        with autocast(device, precision):
            logits = network(x)
        ce = F.cross_entropy(logits.float().permute(0, 2, 1), y, reduction="none")
        loss += ce.sum(0)
        hits += (logits.argmax(-1) == y).sum(0)
    count = max(index.shape[0], 1)
    return loss / count, hits.double() / count
