"""The data-root rule, ``dataset_problem`` and the restricted CIFAR-10 unpickler."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from bnn_core.config import ConfigError, TrainConfig
from bnn_core.data import (
    DATA_ROOT_ENV,
    dataset_location,
    dataset_problem,
    load_dataset,
    random_cifar10,
    read_cifar_batch,
    write_cifar10,
)
from bnn_core.safe_pickle import UnsafePickleError, load_cifar_pickle


class _Exploit:
    """A pickle whose loading runs a shell command that writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_generated_cifar_round_trips_through_the_restricted_unpickler(tmp_path: Path) -> None:
    data = random_cifar10(23, 7, seed=3)
    folder = write_cifar10(data, tmp_path / "cifar10")
    assert folder == tmp_path / "cifar10" / "cifar-10-batches-py"
    entry = load_cifar_pickle(folder / "data_batch_1")
    assert set(entry) == {b"batch_label", b"labels", b"data", b"filenames"}
    loaded = load_dataset("cifar10", str(tmp_path))
    np.testing.assert_array_equal(loaded.x_train, data.x_train)
    np.testing.assert_array_equal(loaded.y_train, data.y_train)
    np.testing.assert_array_equal(loaded.x_test, data.x_test)
    np.testing.assert_array_equal(loaded.y_test, data.y_test)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, protocol: int) -> None:
    write_cifar10(random_cifar10(10, 5), tmp_path / "cifar10")
    marker = tmp_path / "pwned"
    batch = tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_3"
    payload = {b"data": _Exploit(marker), b"labels": [1]}
    batch.write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(UnsafePickleError, match="refused to load"):
        read_cifar_batch(batch)
    with pytest.raises(ConfigError) as info:
        load_dataset("cifar10", str(tmp_path))
    assert info.value.field == "data_root" and "data_batch_3" in str(info.value)
    assert not marker.exists()


def test_wrong_content_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.float64), b"labels": [1, 2]}))
    with pytest.raises(UnsafePickleError, match="uint8"):
        read_cifar_batch(path)
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(UnsafePickleError, match="not a CIFAR-10 batch"):
        read_cifar_batch(path)


def test_root_subdir_and_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    assert dataset_location("mnist", tmp_path).path == tmp_path / "mnist"
    assert dataset_location("mnist", tmp_path, "mnist-v2").path == tmp_path / "mnist-v2"
    default = dataset_location("mnist")
    assert default.shown == "~/.cache/bnn-tune/mnist"
    assert default.path == Path("~/.cache/bnn-tune/mnist").expanduser()
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "env"))
    assert dataset_location("cifar10").path == tmp_path / "env" / "cifar10"
    # an explicit root wins over the environment
    assert dataset_location("cifar10", tmp_path).path == tmp_path / "cifar10"


@pytest.mark.parametrize("subdir", ["../etc", "/abs", "a/b", "..", ".", "", "x\x00y", "a\\b"])
def test_subdir_must_be_one_folder_name(tmp_path: Path, subdir: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_dataset("mnist", str(tmp_path), subdir=subdir)
    assert info.value.field == "data_subdir"
    assert "data_subdir" in dataset_problem("mnist", tmp_path, subdir)
    with pytest.raises(ConfigError):
        TrainConfig(dataset="mnist", data_subdir=subdir)


def test_dataset_problem_names_folder_setting_and_fix(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    assert dataset_problem("digits") is None
    problem = dataset_problem("cifar10", "~/no-such-root")
    assert problem is not None
    assert "~/no-such-root/cifar10" in problem  # as configured, home not expanded
    assert str(Path.home()) not in problem
    assert DATA_ROOT_ENV in problem and "--data-root" in problem
    assert "bnn-train --dataset cifar10 --download --data-root ~/no-such-root" in problem
    assert dataset_problem("imagenet") is not None
    write_cifar10(random_cifar10(10, 5), tmp_path / "cifar10")
    assert dataset_problem("cifar10", tmp_path) is None
    (tmp_path / "cifar10" / "cifar-10-batches-py" / "test_batch").unlink()
    assert "missing test_batch" in dataset_problem("cifar10", tmp_path)
    with pytest.raises(ConfigError) as info:
        load_dataset("cifar10", "~/no-such-root")
    assert str(info.value) == f"data_root: {problem}"


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="no Debian fashion-mnist"
)
def test_debian_fashion_mnist_only_without_configured_root(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # an empty default cache
    assert dataset_location("fashion-mnist").shown == "/usr/share/datasets/fashion-mnist"
    assert dataset_problem("fashion-mnist") is None
    assert dataset_problem("fashion-mnist", tmp_path / "root") is not None
