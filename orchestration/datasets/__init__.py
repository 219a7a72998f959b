"""Built-in data sets as SampleTables: digits (embedded), MNIST, Fashion-MNIST, CIFAR-10, synthetic.

File-based data sets are decoded once and cached as Parquet, keyed by the source files' names,
sizes and modification times, so a second run reads Arrow instead of decoding again. A sample's
`sample_id` is its position in the training split (0..N-1), stable across runs and machines;
for data sets without a test split (digits, synthetic) the split is a fixed seeded permutation.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from orchestration.config import DataConfig
from sisa import SampleTable

log = logging.getLogger(__name__)
Split = tuple[SampleTable, SampleTable]
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "synthetic")
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class DatasetError(ValueError):
    """A data set is missing, incomplete or malformed; the message names the expected files."""


def load_dataset(config: DataConfig) -> Split:
    """The (train, test) SampleTables of the configured data set."""
    loaders: dict[str, Callable[[DataConfig], Split]] = {
        "digits": _digits, "synthetic": _synthetic,
        "mnist": _cached(_mnist_like), "fashion-mnist": _cached(_mnist_like), "cifar10": _cached(_cifar10),
    }
    if config.name not in loaders:
        raise DatasetError(f"unknown data set {config.name!r}; valid: {', '.join(DATASETS)}")
    train, test = loaders[config.name](config)
    if config.train_limit:
        train = train.take(train.ids[: config.train_limit])
    return train, test


def _holdout(x: np.ndarray, y: np.ndarray, fraction: float, scale: float) -> Split:
    if not 0 < fraction < 1:
        raise ValueError(f"data.test_fraction must be in (0, 1), got {fraction}")
    # The split is part of the data set's definition, so it uses a fixed seed, not the run's.
    order = np.random.default_rng(0).permutation(len(x))
    cut = int(round(len(x) * (1 - fraction)))
    train, test = np.sort(order[:cut]), np.sort(order[cut:])
    return SampleTable.from_numpy(x[train], y[train], scale=scale), SampleTable.from_numpy(x[test], y[test], scale=scale)


def _digits(config: DataConfig) -> Split:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.uint8)[:, None]  # (N, 1, 8, 8), values 0..16
    return _holdout(images, digits.target, config.test_fraction, scale=1 / 16)


def _synthetic(config: DataConfig) -> Split:
    """Gaussian blobs: one random mean per class, unit noise; a fixed seed makes it reproducible."""
    n, d, k = config.synthetic_samples, config.synthetic_features, config.synthetic_classes
    if min(n, d) < 1 or k < 2:
        raise ValueError("synthetic data needs synthetic_samples >= 1, synthetic_features >= 1, synthetic_classes >= 2")
    rng = np.random.default_rng(1234)
    means = rng.normal(scale=1.5, size=(k, d))
    labels = rng.integers(0, k, size=n)
    x = (means[labels] + rng.normal(size=(n, d))).astype(np.float32)
    return _holdout(x, labels, config.test_fraction, scale=1.0)


def cache_dir(config: DataConfig) -> Path:
    """Where decoded data sets are cached: data.cache_dir, $UNLEARN_CACHE, or ~/.cache/unlearn."""
    base = config.cache_dir or os.environ.get("UNLEARN_CACHE") or Path.home() / ".cache" / "unlearn"
    return Path(base)


def _cached(decode: Callable[[DataConfig], Split]) -> Callable[[DataConfig], Split]:
    """Wrap a decoder so its result is cached as Parquet keyed by its source files."""

    def load(config: DataConfig) -> Split:
        sources = _sources(config)
        stamp = "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sources)
        key = hashlib.sha256(stamp.encode()).hexdigest()[:16]
        paths = [cache_dir(config) / f"{config.name}-{key}-{part}.parquet" for part in ("train", "test")]
        if all(p.exists() for p in paths):
            return SampleTable.read_parquet(paths[0]), SampleTable.read_parquet(paths[1])
        log.info("decoding %s from %s (cached afterwards in %s)", config.name, config.root, paths[0].parent)
        split = decode(config)
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        for table, path in zip(split, paths):
            table.write_parquet(path)
        return split

    return load


def _root(config: DataConfig) -> Path:
    if not config.root:
        raise DatasetError(f"data set {config.name!r} is read from files: set data.root to their directory")
    root = Path(config.root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"data.root {root} is not a directory")
    return root


def _sources(config: DataConfig) -> list[Path]:
    if config.name == "cifar10":
        return [_cifar_source(_root(config))]
    return [_idx_file(_root(config), config.name, name) for name in _IDX_FILES]


def _idx_file(root: Path, dataset: str, name: str) -> Path:
    raw = "FashionMNIST" if dataset == "fashion-mnist" else "MNIST"
    for folder in (root, root / raw / "raw"):
        for candidate in (folder / f"{name}.gz", folder / name):
            if candidate.exists():
                return candidate
    raise DatasetError(
        f"{dataset}: {name}[.gz] not found in {root} (or {root / raw / 'raw'}); expected the four "
        f"standard idx files: {', '.join(f + '.gz' for f in _IDX_FILES)}"
    )


def _read_idx(path: Path, magic: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DatasetError(f"{path} cannot be read: {err}") from None
    if len(data) < 8 or int.from_bytes(data[:4], "big") != magic:
        raise DatasetError(f"{path} is not an idx file (expected magic number {magic})")
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise DatasetError(f"{path} is truncated: header says {shape}, found {body.size} bytes")
    return body.reshape(shape)


def _mnist_like(config: DataConfig) -> Split:
    images_train, labels_train, images_test, labels_test = _sources(config)
    x_train, x_test = _read_idx(images_train, 2051), _read_idx(images_test, 2051)
    y_train, y_test = _read_idx(labels_train, 2049), _read_idx(labels_test, 2049)
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise DatasetError(f"{config.name}: image and label files disagree on the number of samples")
    return (SampleTable.from_numpy(x_train[:, None], y_train, scale=1 / 255),
            SampleTable.from_numpy(x_test[:, None], y_test, scale=1 / 255))


def _cifar_source(root: Path) -> Path:
    for candidate in (root / "cifar-10-batches-py", root):
        if (candidate / "data_batch_1").exists():
            return candidate / "data_batch_1"
    zips = sorted(root.glob("*.zip")) + sorted(root.glob("*/*.zip"))
    if zips:
        return zips[0]
    raise DatasetError(
        f"cifar10: found neither cifar-10-batches-py/data_batch_1..5 + test_batch (the python "
        f"version) nor a zip of train/<class>/*.jpg and test/<class>/*.jpg in {root}"
    )


def _cifar10(config: DataConfig) -> Split:
    source = _cifar_source(_root(config))
    if source.suffix == ".zip":
        return _cifar_zip(source)
    folder = source.parent
    parts = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        if not (folder / name).exists():
            raise DatasetError(f"cifar10: {folder / name} is missing")
        with open(folder / name, "rb") as f:
            batch = pickle.load(f, encoding="bytes")  # the data set's own format is a pickle
        parts.append((np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32), np.asarray(batch[b"labels"])))
    x_train = np.concatenate([p[0] for p in parts[:5]])
    y_train = np.concatenate([p[1] for p in parts[:5]])
    return (SampleTable.from_numpy(x_train, y_train, scale=1 / 255),
            SampleTable.from_numpy(parts[5][0], parts[5][1], scale=1 / 255))


def _cifar_zip(path: Path) -> Split:
    from PIL import Image

    with zipfile.ZipFile(path) as archive:
        names = sorted(n for n in archive.namelist() if n.lower().endswith((".jpg", ".jpeg", ".png")))
        split: list[SampleTable] = []
        for part in ("train", "test"):
            members = [n for n in names if n.split("/")[-3:-2] == [part] and n.split("/")[-2] in _CIFAR_CLASSES]
            if not members:
                raise DatasetError(f"{path} holds no {part}/<class>/*.jpg images (classes: {', '.join(_CIFAR_CLASSES)})")
            x = np.empty((len(members), 3, 32, 32), np.uint8)
            y = np.empty(len(members), np.int64)
            for i, name in enumerate(members):
                with archive.open(name) as f:
                    image = np.asarray(Image.open(f).convert("RGB"))
                if image.shape != (32, 32, 3):
                    raise DatasetError(f"{path}:{name} is {image.shape[:2]}, expected 32x32")
                x[i] = image.transpose(2, 0, 1)
                y[i] = _CIFAR_CLASSES.index(name.split("/")[-2])
            split.append(SampleTable.from_numpy(x, y, scale=1 / 255))
    return split[0], split[1]
