"""Compile a stacked network once per shape and reuse it for the life of the process.

``torch.compile`` pays its cost (tracing, then Inductor code generation) per compiled module
and input shape. A worker builds a new group for every batch of trials of a study; without a
cache each build compiled the same network again. Here an idle compiled network, with its
compiled forward, is parked under a key of everything that fixes its graph (architecture and
model options, input shape, classes, N, batch, precision, memory format, device, optimizer
family, conv implementation setting) and checked out again by the next group of that key:
the new group loads its trials into the parked network's slots, so dynamo's guards still hold
and nothing is traced or compiled again. A group holds its network exclusively (check-out
removes it from the cache); one idle network is kept per key. ``clear()`` drops them all (an
out-of-memory back-off does, to give their memory back).

Across processes, Inductor's on-disk caches make a recompile of a known graph a cache hit:
``enable_persistent_cache(directory)`` sets ``TORCHINDUCTOR_CACHE_DIR`` (unless set),
``TORCHINDUCTOR_FX_GRAPH_CACHE=1`` and ``TORCHINDUCTOR_AUTOGRAD_CACHE=1`` in the environment;
call it before the first compile (the worker does at start-up).

``stats`` counts ``compiles`` (``torch.compile`` calls) and ``reuses`` (check-outs).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .network import StackedNetwork

__all__ = [
    "Compiled",
    "checkin",
    "checkout",
    "clear",
    "compile_network",
    "enable_persistent_cache",
    "stats",
]

# None: torch.compile's default (Inductor). Tests set "aot_eager" to count compilations
# without generating C++ code.
BACKEND: str | None = None


@dataclass
class Compiled:
    network: StackedNetwork
    forward: Callable[[Tensor], Tensor]


_CACHE_VARIABLES = (
    "TORCHINDUCTOR_CACHE_DIR",
    "TORCHINDUCTOR_FX_GRAPH_CACHE",
    "TORCHINDUCTOR_AUTOGRAD_CACHE",
)
_idle: dict[tuple, Compiled] = {}
stats = {"compiles": 0, "reuses": 0}


def compile_network(network: StackedNetwork) -> Compiled:
    """``torch.compile(network)``; the compiling itself happens at the first call."""
    stats["compiles"] += 1
    forward = (
        torch.compile(network) if BACKEND is None else torch.compile(network, backend=BACKEND)
    )
    return Compiled(network, forward)


def checkout(key: tuple) -> Compiled | None:
    """The idle compiled network for ``key`` (removed from the cache), or None."""
    entry = _idle.pop(key, None)
    if entry is not None:
        stats["reuses"] += 1
    return entry


def checkin(key: tuple, entry: Compiled) -> None:
    """Park ``entry`` for the next group of ``key`` (its gradients are dropped)."""
    for param in entry.network.parameters():
        param.grad = None
    _idle[key] = entry


def clear() -> None:
    _idle.clear()


def enable_persistent_cache(directory: str | Path) -> dict[str, str]:
    """Turn on Inductor's on-disk caches under ``directory`` (kept if already configured);
    returns the variables as set."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(directory))
    os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "1"
    os.environ["TORCHINDUCTOR_AUTOGRAD_CACHE"] = "1"
    names = (
        "TORCHINDUCTOR_CACHE_DIR",
        "TORCHINDUCTOR_FX_GRAPH_CACHE",
        "TORCHINDUCTOR_AUTOGRAD_CACHE",
    )
    return {name: os.environ[name] for name in names}
