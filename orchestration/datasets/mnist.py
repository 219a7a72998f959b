"""MNIST and Fashion-MNIST from the four standard idx files (`.gz` or not) in data.root or data.root/<Name>/raw.

A sample's `sample_id` is its position in the training split.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from orchestration.config import DataConfig
from orchestration.datasets.base import DatasetError, Split
from orchestration.datasets.cache import cached
from sisa import SampleTable

_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def root(config: DataConfig) -> Path:
    """data.root, checked to be a directory."""
    if not config.root:
        raise DatasetError(f"data set {config.name!r} is read from files: set data.root to their directory")
    folder = Path(config.root).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"data.root {folder} is not a directory")
    return folder


def local_stamp(paths: list[Path]) -> str:
    """Identifies local files' contents for the cache: resolved path, size and modification time."""
    return "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in paths)


def load(config: DataConfig) -> Split:
    """The (train, test) split, decoded once and cached."""
    sources = [_idx_file(root(config), config.name, name) for name in _IDX_FILES]
    return cached(config, local_stamp(sources), {}, lambda: _decode(config, sources))


def _idx_file(folder: Path, dataset: str, name: str) -> Path:
    raw = "FashionMNIST" if dataset == "fashion-mnist" else "MNIST"
    for candidate_folder in (folder, folder / raw / "raw"):
        for candidate in (candidate_folder / f"{name}.gz", candidate_folder / name):
            if candidate.exists():
                return candidate
    raise DatasetError(
        f"{dataset}: {name}[.gz] not found in {folder} (or {folder / raw / 'raw'}); expected the four "
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


def _decode(config: DataConfig, sources: list[Path]) -> Split:
    images_train, labels_train, images_test, labels_test = sources
    x_train, x_test = _read_idx(images_train, 2051), _read_idx(images_test, 2051)
    y_train, y_test = _read_idx(labels_train, 2049), _read_idx(labels_test, 2049)
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise DatasetError(f"{config.name}: image and label files disagree on the number of samples")
    return (SampleTable.from_numpy(x_train[:, None], y_train, scale=1 / 255),
            SampleTable.from_numpy(x_test[:, None], y_test, scale=1 / 255))
