"""Read CIFAR-10's python pickle batches without executing code from the file.

A pickle is a program: ``pickle.load`` imports and calls whatever the file names, so a batch
placed in a data folder could run arbitrary code on the machine that loads it. The CIFAR-10
python batches only hold a dict with bytes or str keys, bytes, lists of ints and bytes, and
numpy uint8 arrays. ``CifarUnpickler`` admits exactly the globals those need (numpy's array
and dtype reconstructors) and raises ``UnsafePickleError`` for anything else, before any of it
is called. ``check_cifar_batch`` then checks the shape of what was read.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any

import numpy as np

__all__ = ["UnsafePickleError", "CifarUnpickler", "load_cifar_pickle", "dump_cifar_pickle"]

# numpy moved ``core`` to ``_core`` in 2.0; files written by either name the module they saw.
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1, dtype=np.uint8))[0]
_FROMBUFFER = np.zeros(1, dtype=np.uint8).__reduce_ex__(5)[0]
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
# Protocol 2/4 like the published files (protocol 5 would work too; 2 in Python 3 wraps
# bytes in ``_codecs.encode``, which the unpickler does not admit).
WRITE_PROTOCOL = 4


class UnsafePickleError(ValueError):
    """The file is not a plain CIFAR-10 batch: it names a global outside ``ALLOWED_GLOBALS``
    or holds something other than the CIFAR-10 python format."""


class CifarUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only numpy's array and dtype reconstructors."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refused to load {module}.{name}: a CIFAR-10 batch holds only dicts, bytes, "
                "lists and numpy uint8 arrays"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refused a persistent id: not part of the CIFAR-10 format")


def load_cifar_pickle(path: str | os.PathLike[str]) -> dict[Any, Any]:
    """The dict of one CIFAR-10 batch at ``path``; ``UnsafePickleError`` for anything else."""
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        entry = CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{os.fspath(path)}: {exc}") from None
    except Exception as exc:  # truncated or corrupt: pickle raises many types
        raise UnsafePickleError(f"{os.fspath(path)}: not a CIFAR-10 batch ({exc})") from None
    if not isinstance(entry, dict):
        raise UnsafePickleError(f"{os.fspath(path)}: not a CIFAR-10 batch (no dict inside)")
    return entry


def dump_cifar_pickle(entry: dict[Any, Any], path: str | os.PathLike[str]) -> None:
    """Write ``entry`` as a CIFAR-10 batch that ``load_cifar_pickle`` reads back."""
    with open(path, "wb") as handle:
        pickle.dump(entry, handle, protocol=WRITE_PROTOCOL)
