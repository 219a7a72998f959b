"""Built-in data sets: embedded digits, real files from ../shared/data, clear errors for bad files."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest

from orchestration.config import DataConfig, load_config
from orchestration.datasets import DatasetError, load_dataset
from orchestration.datasets.split import stratified_subset
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
    assert len(cached) == 2 and cached[0].endswith("-test.parquet") and cached[1].endswith("-train")
    assert all(p.name.endswith(".parquet") for p in (tmp_path / "cache" / cached[1]).iterdir())
    again, _ = load_dataset(DataConfig(name=name, root=str(root), train_limit=100))
    assert len(again) == 100 and np.isin(again.ids, train.ids).all()


def test_mnist_train_limit_keeps_each_class_share():
    """MNIST's class counts 5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949 of 60000 give
    limit-100 shares 9.87, 11.24, 9.93, 10.22, 9.74, 9.04, 9.86, 10.44, 9.75, 9.92: floors sum to 94, and the
    6 largest remainders (classes 2, 9, 0, 6, 8, 4) get one more each."""
    root = shared_data("mnist")
    subset, _ = load_dataset(DataConfig(name="mnist", root=str(root), train_limit=100))
    assert np.bincount(subset.labels).tolist() == [10, 11, 10, 10, 10, 9, 10, 10, 10, 10]


def test_cifar10_read_from_the_jpeg_zip():
    root = shared_data("cifar-10-jpeg")
    train, test = load_dataset(DataConfig(name="cifar10", root=str(root)))
    assert (len(train), len(test), train.sample_shape) == (50000, 10000, (3, 32, 32))
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert (train.labels[:5000] == 0).all(), "the zip numbers samples class by class"
    subset, _ = load_dataset(DataConfig(name="cifar10", root=str(root), train_limit=5000))
    assert np.bincount(subset.labels).tolist() == [500] * 10, "a limit is a stratified subset, not the first ids"


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


class _Payload:
    def __reduce__(self):
        return (open, ("/tmp/written-by-a-pickle", "w"))


def test_cifar10_batches_that_name_anything_but_arrays_are_refused_not_executed(tmp_path):
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": _Payload(), b"labels": [0]}))
    with pytest.raises(DatasetError, match="names io.open, which a CIFAR-10 batch never does"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    assert not __import__("pathlib").Path("/tmp/written-by-a-pickle").exists()


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


def test_stratified_subset_gives_leftover_samples_to_the_largest_remainders():
    """Classes of 7 and 3 samples, limit 5: shares 3.5 and 1.5, floors 3 and 1; the one left over goes to the
    tie's smaller label, class 0: 4 and 1. Limit 6: shares 4.2 and 1.8, floors 4 and 1, the leftover to class 1."""
    ids, labels = np.arange(100, 110), np.array([0] * 7 + [1] * 3)
    for limit, expected in ((5, [4, 1]), (6, [4, 2])):
        chosen = stratified_subset(ids, labels, limit, seed=0)
        assert np.bincount(labels[np.searchsorted(ids, chosen)]).tolist() == expected
    assert np.array_equal(stratified_subset(ids, labels, 20, seed=0), ids)


def test_stratified_subset_depends_on_the_subset_seed_not_on_the_order_of_the_ids():
    rng = np.random.default_rng(0)
    ids, labels = np.arange(1000), rng.integers(0, 4, 1000)
    a = stratified_subset(ids, labels, 100, seed=0)
    shuffled = rng.permutation(1000)
    assert np.array_equal(a, stratified_subset(ids[shuffled], labels[shuffled], 100, seed=0))
    assert not np.array_equal(a, stratified_subset(ids, labels, 100, seed=1))


def test_train_limit_is_the_same_subset_whatever_the_model_seed():
    config = load_config(None, ["data.train_limit=300", "seed=1"])
    other = load_config(None, ["data.train_limit=300", "seed=2"])
    a, b = load_dataset(config.data)[0], load_dataset(other.data)[0]
    assert len(a) == 300 and np.array_equal(a.ids, b.ids)
    assert not np.array_equal(a.ids, np.arange(300))
