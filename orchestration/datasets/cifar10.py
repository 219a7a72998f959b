"""CIFAR-10 from the python version (`cifar-10-batches-py/`) or a zip of `train|test/<class>/*.jpg`.

A sample's `sample_id` is its position in the training split; in the zip layout samples are
numbered class by class, which is why `data.train_limit` draws a stratified subset.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np

from orchestration.config import DataConfig
from orchestration.datasets.base import DatasetError, Split
from orchestration.datasets.cache import cached
from orchestration.datasets.mnist import local_stamp, root
from sisa import SampleTable

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def load(config: DataConfig) -> Split:
    """The (train, test) split, decoded once and cached."""
    source = _source(root(config))
    return cached(config, local_stamp([source]), {}, lambda: _decode(source))


def _source(folder: Path) -> Path:
    for candidate in (folder / "cifar-10-batches-py", folder):
        if (candidate / "data_batch_1").exists():
            return candidate / "data_batch_1"
    zips = sorted(folder.glob("*.zip")) + sorted(folder.glob("*/*.zip"))
    if zips:
        return zips[0]
    raise DatasetError(
        f"cifar10: found neither cifar-10-batches-py/data_batch_1..5 + test_batch (the python "
        f"version) nor a zip of train/<class>/*.jpg and test/<class>/*.jpg in {folder}"
    )


def _decode(source: Path) -> Split:
    if source.suffix == ".zip":
        return _decode_zip(source)
    folder = source.parent
    parts = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        if not (folder / name).exists():
            raise DatasetError(f"cifar10: {folder / name} is missing")
        with open(folder / name, "rb") as f:
            batch = _Batches(f, encoding="bytes").load()
        parts.append((np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32), np.asarray(batch[b"labels"])))
    x_train = np.concatenate([p[0] for p in parts[:5]])
    y_train = np.concatenate([p[1] for p in parts[:5]])
    return (SampleTable.from_numpy(x_train, y_train, scale=1 / 255),
            SampleTable.from_numpy(parts[5][0], parts[5][1], scale=1 / 255))


class _Batches(pickle.Unpickler):
    """Unpickles CIFAR-10's python batches and nothing else.

    The data set's own format is a pickle, and unpickling runs whatever a file names. A batch is a
    dict of bytes, lists and one NumPy array, so only NumPy's array reconstruction may be named; a
    file asking for anything else is refused instead of executed.
    """

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise DatasetError(f"cifar10: a batch file names {module}.{name}, which a CIFAR-10 batch never does; "
                               "refusing to unpickle it")
        return super().find_class(module, name)


def _decode_zip(path: Path) -> Split:
    from PIL import Image

    with zipfile.ZipFile(path) as archive:
        names = sorted(n for n in archive.namelist() if n.lower().endswith((".jpg", ".jpeg", ".png")))
        split: list[SampleTable] = []
        for part in ("train", "test"):
            members = [n for n in names if n.split("/")[-3:-2] == [part] and n.split("/")[-2] in CLASSES]
            if not members:
                raise DatasetError(f"{path} holds no {part}/<class>/*.jpg images (classes: {', '.join(CLASSES)})")
            x = np.empty((len(members), 3, 32, 32), np.uint8)
            y = np.empty(len(members), np.int64)
            for i, name in enumerate(members):
                with archive.open(name) as f:
                    image = np.asarray(Image.open(f).convert("RGB"))
                if image.shape != (32, 32, 3):
                    raise DatasetError(f"{path}:{name} is {image.shape[:2]}, expected 32x32")
                x[i] = image.transpose(2, 0, 1)
                y[i] = CLASSES.index(name.split("/")[-2])
            split.append(SampleTable.from_numpy(x, y, scale=1 / 255))
    return split[0], split[1]
