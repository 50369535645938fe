"""Datasets as uint8 arrays: where they live, how they are read, the seeded train/val split.

``load_dataset`` returns NCHW uint8 images (digits are rescaled from 0..16 to 0..255) and int64
labels. ``DeviceLoader`` (``bnn_core.loader``, re-exported here) serves them from the device.

Where a data set lives (the one rule): ``<root>/<subdir or name>``. ``root`` defaults to the
environment variable ``BNN_TUNE_DATA_ROOT``, else ``~/.cache/bnn-tune``; without a configured
root, Fashion-MNIST is also found in Debian's ``/usr/share/datasets/fashion-mnist``
(``apt-get install dataset-fashion-mnist``). ``subdir`` is a single folder name, never a path.
Downloads go into that same folder.

File formats (no torchvision): MNIST / Fashion-MNIST as IDX files, gzipped or raw
(``train-images-idx3-ubyte[.gz]`` ...); CIFAR-10 as the python pickle batches
(``data_batch_1..5``, ``test_batch``) in the folder or its ``cifar-10-batches-py``, read with
a restricted unpickler (``bnn_core.safe_pickle``) that never executes code from the files.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import ConfigError, check_subdir
from .loader import DeviceLoader
from .safe_pickle import UnsafePickleError, dump_cifar_pickle, load_cifar_pickle

__all__ = [
    "DATASET_NAMES",
    "Dataset",
    "DeviceLoader",
    "DATA_ROOT_ENV",
    "DataLocation",
    "dataset_location",
    "dataset_problem",
    "load_dataset",
    "random_cifar10",
    "write_cifar10",
    "read_idx",
    "split_indices",
]

DATASET_NAMES = ("digits", "fashion-mnist", "mnist", "cifar10")

DATA_ROOT_ENV = "BNN_TUNE_DATA_ROOT"
DEFAULT_DATA_ROOT = "~/.cache/bnn-tune"
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_URLS = {
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
}
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_SUBDIR = "cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


@dataclass(frozen=True)
class Dataset:
    """A dataset in memory: NCHW uint8 images, int64 labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    @property
    def augment_by_default(self) -> bool:
        """The Bop paper augments CIFAR-10 (pad 4, crop, flip); the others are not augmented."""
        return self.name == "cifar10"


def random_cifar10(train_images: int, test_images: int = 100, seed: int = 0) -> Dataset:
    """Random uint8 images and labels of CIFAR-10's shape, named ``cifar10`` (so augmented
    by default): for benchmarks and tests, where they cost what the real images cost."""
    rng = np.random.default_rng(seed)
    return Dataset(
        "cifar10",
        rng.integers(0, 256, (train_images, 3, 32, 32), dtype=np.uint8),
        rng.integers(0, 10, train_images).astype(np.int64),
        rng.integers(0, 256, (test_images, 3, 32, 32), dtype=np.uint8),
        rng.integers(0, 10, test_images).astype(np.int64),
        10,
    )


def write_cifar10(data: Dataset, directory: str | os.PathLike[str], batches: int = 5) -> Path:
    """Write ``data`` (e.g. ``random_cifar10``) in the CIFAR-10 python format into
    ``directory/cifar-10-batches-py`` (the training images split over ``batches`` files);
    returns that folder. The files pass the restricted unpickler, as the published ones do."""
    folder = Path(directory) / CIFAR_SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    parts = np.array_split(np.arange(len(data.y_train)), batches)
    named = [(f"data_batch_{i}", data.x_train[p], data.y_train[p]) for i, p in enumerate(parts, 1)]
    for stem, x, y in [*named, (CIFAR_TEST, data.x_test, data.y_test)]:
        entry = {
            b"batch_label": stem.encode(),
            b"labels": [int(v) for v in y],
            b"data": np.ascontiguousarray(x.reshape(len(y), -1), dtype=np.uint8),
            b"filenames": [f"{stem}_{i}.png".encode() for i in range(len(y))],
        }
        dump_cifar_pickle(entry, folder / stem)
    return folder


# ---------------------------------------------------------------------------------------------
# readers


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzipped or raw, detected by the gzip magic bytes) into a numpy array."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX data type 0x{raw[2]:02x}")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(dtypes[raw[2]])
    count = int(np.prod(dims)) if dims else 1
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=4 + 4 * ndim)
    return data.reshape(dims).astype(dtype.newbyteorder("="))


def _find_file(directory: Path, stem: str) -> Path | None:
    for candidate in (stem, f"{stem}.gz"):
        for folder in (directory, directory / "raw"):
            if (folder / candidate).is_file():
                return folder / candidate
    return None


def _load_idx_dataset(name: str, directory: Path) -> Dataset:
    arrays = {}
    for key, stem in IDX_FILES.items():
        path = _find_file(directory, stem)
        if path is None:
            raise ConfigError("data_root", f"{name}: {stem}[.gz] not found in {directory}")
        arrays[key] = read_idx(path)
    return Dataset(
        name=name,
        x_train=arrays["train_images"].astype(np.uint8)[:, None],
        y_train=arrays["train_labels"].astype(np.int64),
        x_test=arrays["test_images"].astype(np.uint8)[:, None],
        y_test=arrays["test_labels"].astype(np.int64),
        num_classes=10,
    )


def read_cifar_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python pickle batch -> (N, 3, 32, 32) uint8 images, (N,) int64 labels.

    Read with ``safe_pickle.load_cifar_pickle``: a file that names anything but numpy's array
    reconstructors, or whose content is not a CIFAR-10 batch, raises ``UnsafePickleError``.
    """
    entry = load_cifar_pickle(path)
    data = entry.get(b"data", entry.get("data"))
    labels = entry.get(b"labels", entry.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.size % 3072:
        raise UnsafePickleError(f"{os.fspath(path)}: 'data' is not uint8 rows of 3072 pixels")
    if not isinstance(labels, list) or not all(type(v) is int for v in labels):
        raise UnsafePickleError(f"{os.fspath(path)}: 'labels' is not a list of ints")
    images = data.reshape(-1, 3, 32, 32)
    if len(images) != len(labels):
        raise UnsafePickleError(f"{os.fspath(path)}: {len(images)} images, {len(labels)} labels")
    return images, np.asarray(labels, dtype=np.int64)


def _cifar_folder(directory: Path) -> Path:
    return directory / CIFAR_SUBDIR if (directory / CIFAR_SUBDIR).is_dir() else directory


def _load_cifar10(directory: Path) -> Dataset:
    directory = _cifar_folder(directory)
    try:
        train = [read_cifar_batch(directory / stem) for stem in CIFAR_TRAIN]
        x_test, y_test = read_cifar_batch(directory / CIFAR_TEST)
    except UnsafePickleError as exc:
        raise ConfigError("data_root", f"cifar10: {exc}") from None
    return Dataset(
        name="cifar10",
        x_train=np.concatenate([x for x, _ in train]),
        y_train=np.concatenate([y for _, y in train]),
        x_test=x_test,
        y_test=y_test,
        num_classes=10,
    )


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images,
        labels,
        test_size=DIGITS_TEST_FRACTION,
        random_state=DIGITS_SPLIT_SEED,
        stratify=labels,
    )
    return Dataset("digits", x_train, y_train, x_test, y_test, num_classes=10)


# ---------------------------------------------------------------------------------------------
# download


def _download(url: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
        shutil.copyfileobj(response, out)
    partial.replace(target)


def download_dataset(name: str, directory: Path) -> None:
    """Fetch the official archives of ``name`` into ``directory`` (skips files already there)."""
    try:
        if name in IDX_URLS:
            for stem in IDX_FILES.values():
                if _find_file(directory, stem) is None:
                    _download(IDX_URLS[name] + f"{stem}.gz", directory / f"{stem}.gz")
        elif name == "cifar10" and not (directory / CIFAR_SUBDIR / CIFAR_TEST).is_file():
            archive = directory / "cifar-10-python.tar.gz"
            if not archive.is_file():
                _download(CIFAR_URL, archive)
            with tarfile.open(archive) as tar:
                tar.extractall(directory, filter="data")
    except OSError as exc:
        raise ConfigError("data_root", f"{name}: download failed: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# public loader


@dataclass(frozen=True)
class DataLocation:
    """The folder of one data set: ``path`` (expanded, to read) and ``shown`` (as configured,
    for messages: ``~`` and the environment value are not expanded, so an error never shows
    more of the machine than the user wrote)."""

    path: Path
    shown: str
    root_shown: str


def _root(root: str | os.PathLike[str] | None) -> tuple[Path, str, bool]:
    """(root folder, root as shown, whether it was configured)."""
    if root is not None and os.fspath(root) != "":
        return Path(root).expanduser(), os.fspath(root), True
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser(), env, True
    return Path(DEFAULT_DATA_ROOT).expanduser(), DEFAULT_DATA_ROOT, False


def dataset_location(
    name: str, root: str | os.PathLike[str] | None = None, subdir: str | None = None
) -> DataLocation:
    """Where ``name`` lives: ``<root>/<subdir or name>`` (see the module docstring).

    Raises ``ConfigError('data_subdir')`` unless ``subdir`` is a single folder name.
    """
    check_subdir(subdir)
    base, shown, configured = _root(root)
    folder = subdir or name
    location = DataLocation(base / folder, f"{shown.rstrip('/')}/{folder}", shown)
    system = Path(FASHION_MNIST_SYSTEM_DIR)
    if (
        name == "fashion-mnist"
        and not configured
        and subdir is None
        and _missing_files(name, location.path) is not None
        and system.is_dir()
    ):
        return DataLocation(system, FASHION_MNIST_SYSTEM_DIR, shown)
    return location


def _missing_files(name: str, directory: Path) -> str | None:
    """What is missing in ``directory`` for ``name`` (file-existence checks only), or None."""
    if name == "digits":
        return None
    if not directory.is_dir():
        return "the folder does not exist"
    if name == "cifar10":
        folder = _cifar_folder(directory)
        missing = [stem for stem in (*CIFAR_TRAIN, CIFAR_TEST) if not (folder / stem).is_file()]
    else:
        missing = [f"{s}[.gz]" for s in IDX_FILES.values() if _find_file(directory, s) is None]
    return f"missing {', '.join(missing)}" if missing else None


def dataset_problem(
    name: str, root: str | os.PathLike[str] | None = None, subdir: str | None = None
) -> str | None:
    """None when ``name``'s files are in place (a cheap existence check, nothing is read),
    else a one-line message: the folder searched, the setting that chooses it
    (``BNN_TUNE_DATA_ROOT`` / ``--data-root``) and how to fill it."""
    if name not in DATASET_NAMES:
        return f"unknown dataset {name!r}; one of {list(DATASET_NAMES)}"
    try:
        location = dataset_location(name, root, subdir)
    except ConfigError as exc:
        return str(exc)
    missing = _missing_files(name, location.path)
    if missing is None:
        return None
    fill = f"`bnn-train --dataset {name} --download --data-root {location.root_shown}`"
    if name == "fashion-mnist":
        fill += " (or `apt-get install -y dataset-fashion-mnist`)"
    return (
        f"{name}: no data set in {location.shown} ({missing}); the data root is set by "
        f"{DATA_ROOT_ENV} or --data-root (default {DEFAULT_DATA_ROOT}); fill it with {fill}"
    )


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    subdir: str | None = None,
    download: bool = False,
) -> Dataset:
    """Load ``name`` (one of ``DATASET_NAMES``) from ``<root>/<subdir or name>`` as uint8 NCHW
    arrays; with ``download``, missing files are first fetched into that folder.

    Raises ``ConfigError('dataset')`` for an unknown name, ``ConfigError('data_subdir')`` for
    a ``subdir`` that is not a single folder name, and ``ConfigError('data_root')`` when files
    are missing or unreadable (the message is ``dataset_problem``'s).
    """
    if name not in DATASET_NAMES:
        raise ConfigError("dataset", f"unknown dataset {name!r}; one of {list(DATASET_NAMES)}")
    if name == "digits":
        return _load_digits()
    location = dataset_location(name, root, subdir)
    try:
        if download and _missing_files(name, location.path) is not None:
            download_dataset(name, location.path)
        problem = dataset_problem(name, root, subdir)
        if problem is not None:
            raise ConfigError("data_root", problem)
        if name == "cifar10":
            return _load_cifar10(location.path)
        return _load_idx_dataset(name, location.path)
    except ConfigError as exc:
        # Messages show the folder as configured, not its expanded absolute path.
        reason = exc.reason.replace(str(location.path), location.shown)
        raise ConfigError(exc.field, reason) from None


def split_indices(
    n: int, val_fraction: float, seed: int, max_samples: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded disjoint (train, val) index arrays over ``range(n)``.

    ``max_samples`` caps the pool that is split (so a quick run also validates on fewer samples).
    Both parts get at least one sample.
    """
    order = np.random.default_rng(seed).permutation(n)
    if max_samples is not None:
        order = order[: max(2, min(n, max_samples))]
    n_val = min(len(order) - 1, max(1, int(round(val_fraction * len(order)))))
    return np.sort(order[n_val:]), np.sort(order[:n_val])
