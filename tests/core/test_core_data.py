"""Dataset readers, the seeded split, augmentation and the device loader."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from bnn_core.augment import crop_flip, normalize, random_crop_flip
from bnn_core.config import ConfigError
from bnn_core.data import (
    DATASET_NAMES,
    DeviceLoader,
    load_dataset,
    read_cifar_batch,
    read_idx,
    split_indices,
)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    data = _idx_bytes(array)
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_raw_and_gzip(tmp_path: Path, compress: bool) -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 4), dtype=np.uint8)
    _write_idx(tmp_path / "imgs", images, compress)
    path = tmp_path / ("imgs.gz" if compress else "imgs")
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (5, 3, 4)
    np.testing.assert_array_equal(out, images)


def test_read_idx_rejects_garbage(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04\x05")
    with pytest.raises(ValueError, match="IDX"):
        read_idx(tmp_path / "bad")


def _fake_mnist(directory: Path, compress: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    y = np.arange(12, dtype=np.uint8) % 10
    for prefix, n in (("train", 12), ("t10k", 6)):
        _write_idx(directory / f"{prefix}-images-idx3-ubyte", x[:n], compress)
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte", y[:n], compress)
    return x, y


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_from_idx_directory(tmp_path: Path, compress: bool) -> None:
    (tmp_path / "mnist").mkdir()
    x, y = _fake_mnist(tmp_path / "mnist", compress)
    data = load_dataset("mnist", str(tmp_path))  # <root>/mnist
    assert data.x_train.shape == (12, 1, 28, 28) and data.x_train.dtype == np.uint8
    assert data.x_test.shape == (6, 1, 28, 28)
    assert data.y_train.dtype == np.int64
    np.testing.assert_array_equal(data.x_train[:, 0], x)
    np.testing.assert_array_equal(data.y_test, y[:6])
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert not data.augment_by_default


def test_missing_idx_file_names_it(tmp_path: Path) -> None:
    (tmp_path / "fashion-mnist").mkdir()
    _fake_mnist(tmp_path / "fashion-mnist", compress=True)
    (tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ConfigError) as info:
        load_dataset("fashion-mnist", str(tmp_path))
    assert info.value.field == "data_root"
    assert "t10k-labels-idx1-ubyte" in str(info.value)
    assert "apt-get install -y dataset-fashion-mnist" in str(info.value)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_missing_directory_is_config_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_dataset(name, str(tmp_path / "nowhere"))
    assert info.value.field == "data_root"
    assert "nowhere" in str(info.value) and "download" in str(info.value)


def test_unknown_dataset() -> None:
    with pytest.raises(ConfigError) as info:
        load_dataset("imagenet")
    assert info.value.field == "dataset"
    assert all(name in str(info.value) for name in DATASET_NAMES)


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="apt-get install -y dataset-fashion-mnist")
def test_fashion_mnist_system_files() -> None:
    data = load_dataset("fashion-mnist")
    assert data.x_train.shape == (60000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
    assert data.x_train.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(data.y_train), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(data.y_test), [1000] * 10)


def _write_cifar(directory: Path) -> dict[str, np.ndarray]:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, 3).tolist()
        with open(directory / name, "wb") as handle:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"x"}, handle)
        batches[name] = data
    return batches


def test_cifar_pickle_reader(tmp_path: Path) -> None:
    batches = _write_cifar(tmp_path / "cifar10" / "cifar-10-batches-py")
    x, y = read_cifar_batch(tmp_path / "cifar10" / "cifar-10-batches-py" / "test_batch")
    assert x.shape == (3, 3, 32, 32) and y.shape == (3,)
    # row-major 3072 = R(1024) G(1024) B(1024), each 32x32
    np.testing.assert_array_equal(x[1, 2].ravel(), batches["test_batch"][1, 2048:])
    data = load_dataset("cifar10", str(tmp_path))  # finds the cifar-10-batches-py subfolder
    assert data.x_train.shape == (15, 3, 32, 32) and data.x_test.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(data.x_train[3:6].reshape(3, -1), batches["data_batch_2"])
    assert data.augment_by_default
    (tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(ConfigError, match="data_batch_4"):
        load_dataset("cifar10", str(tmp_path))


def test_digits_is_uint8_with_stratified_test_split() -> None:
    data = load_dataset("digits")
    assert data.x_train.dtype == np.uint8 and data.x_train.max() == 255
    assert data.input_shape == (1, 8, 8)
    assert len(data.y_train) + len(data.y_test) == 1797
    assert 0.19 < len(data.y_test) / 1797 < 0.21
    assert np.bincount(data.y_test).min() >= 34  # every class ~20 %
    again = load_dataset("digits")
    np.testing.assert_array_equal(again.y_test, data.y_test)


def test_split_reproducible_and_disjoint() -> None:
    train, val = split_indices(1000, 0.1, seed=3)
    train2, val2 = split_indices(1000, 0.1, seed=3)
    np.testing.assert_array_equal(train, train2)
    np.testing.assert_array_equal(val, val2)
    assert len(val) == 100 and len(train) == 900
    assert not set(train) & set(val)
    assert set(train) | set(val) == set(range(1000))
    _, val3 = split_indices(1000, 0.1, seed=4)
    assert set(val3) != set(val)
    capped_train, capped_val = split_indices(1000, 0.1, seed=3, max_samples=200)
    assert len(capped_train) == 180 and len(capped_val) == 20


def test_normalize_range() -> None:
    x = torch.tensor([0, 127, 255], dtype=torch.uint8)
    torch.testing.assert_close(normalize(x), torch.tensor([-1.0, 127 / 127.5 - 1, 1.0]))


def test_crop_flip_against_numpy_reference() -> None:
    rng = np.random.default_rng(5)
    x = rng.integers(1, 256, (6, 3, 32, 32), dtype=np.uint8)  # no zeros inside the image
    oy, ox = rng.integers(0, 9, 6), rng.integers(0, 9, 6)
    flip = rng.random(6) < 0.5
    out = crop_flip(
        torch.from_numpy(x), torch.from_numpy(oy), torch.from_numpy(ox), torch.from_numpy(flip), 4
    ).numpy()
    padded = np.pad(x, ((0, 0), (0, 0), (4, 4), (4, 4)))
    for i in range(6):
        ref = padded[i, :, oy[i] : oy[i] + 32, ox[i] : ox[i] + 32]
        np.testing.assert_array_equal(out[i], ref[:, :, ::-1] if flip[i] else ref)


def test_random_crop_flip_properties() -> None:
    x = torch.full((400, 3, 32, 32), 200, dtype=torch.uint8)
    x[:, :, :, :16] = 100  # left half darker, to see flips
    gen = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, pad=4, generator=gen)
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert set(out.unique().tolist()) <= {0, 100, 200}  # padding is zeros
    # the zero border width encodes the offset; every offset lies in [0, 8]
    zero_rows = (out[:, 0] == 0).all(dim=2).sum(dim=1)
    zero_cols = (out[:, 0] == 0).all(dim=1).sum(dim=1)
    assert int(zero_rows.max()) <= 4 and int(zero_cols.max()) <= 4
    assert int(zero_rows.min()) == 0 and int(zero_cols.max()) == 4
    # flipped samples have the dark half on the right
    center_left, center_right = out[:, 0, 16, 10], out[:, 0, 16, 22]
    flipped = (center_left == 200) & (center_right == 100)
    kept = (center_left == 100) & (center_right == 200)
    assert bool((flipped | kept).all())
    assert 120 < int(flipped.sum()) < 280
    again = random_crop_flip(x, pad=4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, out)


def test_device_loader_batches() -> None:
    images = np.arange(10 * 1 * 2 * 2, dtype=np.uint8).reshape(10, 1, 2, 2)
    labels = np.arange(10, dtype=np.int64)
    loader = DeviceLoader(images, labels, 4, torch.device("cpu"))
    batches = list(loader)
    assert len(loader) == 3 and [len(y) for _, y in batches] == [4, 4, 2]
    assert batches[0][0].dtype == torch.float32 and batches[0][0].min() == -1.0
    gen = torch.Generator().manual_seed(0)
    shuffled = DeviceLoader(
        images, labels, 4, torch.device("cpu"), shuffle=True, drop_last=True, generator=gen
    )
    epoch1 = torch.cat([y for _, y in shuffled])
    epoch2 = torch.cat([y for _, y in shuffled])
    assert len(shuffled) == 2 and len(epoch1) == 8 and len(set(epoch1.tolist())) == 8
    assert not torch.equal(epoch1, epoch2)
    x, y = next(iter(shuffled))
    # images still match their labels after shuffling
    torch.testing.assert_close(x[:, 0, 0, 0], (y * 4).float() / 127.5 - 1)


def test_download_idx_and_cifar_from_file_urls(tmp_path: Path, monkeypatch) -> None:
    # the real path fetches https://...; file:// URLs exercise the same urllib code offline
    import tarfile

    import bnn_core.data as data_module

    source = tmp_path / "mirror"
    source.mkdir()
    x, _ = _fake_mnist(source, compress=True)
    monkeypatch.setitem(data_module.IDX_URLS, "mnist", source.as_uri() + "/")
    target = tmp_path / "root"
    data = load_dataset("mnist", str(target), download=True)
    np.testing.assert_array_equal(data.x_train[:, 0], x)
    assert (target / "mnist" / "train-images-idx3-ubyte.gz").is_file()

    _write_cifar(tmp_path / "src" / "cifar-10-batches-py")
    archive = tmp_path / "cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setattr(data_module, "CIFAR_URL", archive.as_uri())
    cifar = load_dataset("cifar10", str(tmp_path / "cifar"), download=True)
    assert cifar.x_train.shape == (15, 3, 32, 32)

    monkeypatch.setitem(data_module.IDX_URLS, "mnist", (tmp_path / "nothing").as_uri() + "/")
    with pytest.raises(ConfigError, match="download"):
        load_dataset("mnist", str(tmp_path / "other"), download=True)
