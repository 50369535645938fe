"""Device selection and the mixed-precision context."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .config import ConfigError

__all__ = ["resolve_device", "autocast", "synchronize", "describe_device"]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` if available else ``cpu``; ``cuda[:N]`` must exist.

    Raises ``ConfigError('device', ...)`` for anything unusable.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError("device", f"unknown device {name!r}; cpu, cuda, cuda:N or auto") from exc
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ConfigError("device", f"unsupported device {name!r}; cpu, cuda, cuda:N or auto")
    if not torch.cuda.is_available():
        raise ConfigError("device", f"{name!r} requested but CUDA is not available here")
    if device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ConfigError("device", f"{name!r} requested but only {count} CUDA device(s) exist")
    return device


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """bf16 autocast on CUDA when ``precision == 'bf16'``; fp32 (a no-op) otherwise.

    On the CPU bf16 is ignored: CPU autocast is slower than fp32 on the small nets used there.
    Parameters, gradients and optimizer state stay fp32 either way.
    """
    if precision == "bf16" and device.type == "cuda":
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            yield
    else:
        yield


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe_device(device: torch.device) -> str:
    """Human-readable device name, e.g. ``cuda:0 (NVIDIA H100 ...)`` or ``cpu (2 threads)``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
