"""Built-in data sets: embedded digits, real files from ../shared/data, clear errors for bad files."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest

from orchestration.config import DataConfig
from orchestration.datasets import DatasetError, load_dataset
from tests.conftest import shared_data


def test_digits_is_embedded_with_dense_ids_and_a_fixed_split():
    train, test = load_dataset(DataConfig(name="digits"))
    assert (len(train), len(test)) == (1438, 359)
    assert np.array_equal(train.ids, np.arange(1438))
    assert train.sample_shape == (1, 8, 8) and train.num_classes == 10
    x, _ = train.tensors()
    assert 0.0 <= x.min() and x.max() <= 1.0
    again, _ = load_dataset(DataConfig(name="digits"))
    assert np.array_equal(again.labels, train.labels)


def test_synthetic_is_seeded_and_sized_by_config():
    train, test = load_dataset(DataConfig(name="synthetic", synthetic_samples=500, synthetic_features=5))
    assert len(train) + len(test) == 500 and train.sample_shape == (5,)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_mnist_like_read_from_idx_files_and_cached_as_parquet(name, tmp_path, monkeypatch):
    root = shared_data(name)
    monkeypatch.setenv("UNLEARN_CACHE", str(tmp_path / "cache"))
    train, test = load_dataset(DataConfig(name=name, root=str(root)))
    assert (len(train), len(test), train.sample_shape, train.num_classes) == (60000, 10000, (1, 28, 28), 10)
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cached) == 2 and all(p.endswith(".parquet") for p in cached)
    again, _ = load_dataset(DataConfig(name=name, root=str(root), train_limit=100))
    assert np.array_equal(again.labels, train.labels[:100])


def test_cifar10_read_from_the_jpeg_zip():
    root = shared_data("cifar-10-jpeg")
    train, test = load_dataset(DataConfig(name="cifar10", root=str(root)))
    assert (len(train), len(test), train.sample_shape) == (50000, 10000, (3, 32, 32))
    assert np.bincount(test.labels).tolist() == [1000] * 10


def test_cifar10_read_from_python_pickle_batches(tmp_path):
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch))
    train, test = load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    assert (len(train), len(test), train.sample_shape) == (20, 4, (3, 32, 32))


def test_missing_files_name_what_is_expected(tmp_path):
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.*expected the four standard idx files"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path)))
    with pytest.raises(DatasetError, match="set data.root"):
        load_dataset(DataConfig(name="fashion-mnist"))
    with pytest.raises(DatasetError, match="cifar-10-batches-py"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    with pytest.raises(DatasetError, match="valid: digits, mnist"):
        load_dataset(DataConfig(name="svhn"))


def test_truncated_idx_file_is_reported(tmp_path):
    root = shared_data("mnist")
    for path in root.glob("*.gz"):
        shutil.copy(path, tmp_path / path.name)
    data = gzip.decompress((tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(data[:5000]))
    with pytest.raises(DatasetError, match="truncated"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path)))
