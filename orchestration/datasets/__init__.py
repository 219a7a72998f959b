"""Data sets as (train, test) SampleTables, by name: the built-in ones and a user's own files.

    digits, synthetic          embedded (builtin.py)
    mnist, fashion-mnist       idx files in data.root (mnist.py)
    cifar10                    python batches or a JPEG zip in data.root (cifar10.py)
    parquet, csv, imagefolder  a user's files at data.path (parquet.py, csv.py, imagefolder.py via tables.py)

Whatever is decoded from files is cached as Parquet by cache.py. `data.train_limit` then keeps a
stratified subset drawn with `data.subset_seed` (split.py), the same for every model seed.
"""

from __future__ import annotations

from collections.abc import Callable

from orchestration.config import DataConfig
from orchestration.datasets import builtin, cifar10, csv, imagefolder, mnist, parquet
from orchestration.datasets.base import DatasetError, Split
from orchestration.datasets.cache import cache_dir
from orchestration.datasets.split import stratified_subset

__all__ = ["DATASETS", "DatasetError", "Split", "cache_dir", "load_dataset"]

LOADERS: dict[str, Callable[[DataConfig], Split]] = {
    "digits": builtin.digits,
    "mnist": mnist.load,
    "fashion-mnist": mnist.load,
    "cifar10": cifar10.load,
    "synthetic": builtin.synthetic,
    "parquet": parquet.load,
    "csv": csv.load,
    "imagefolder": imagefolder.load,
}
DATASETS = tuple(LOADERS)


def load_dataset(config: DataConfig) -> Split:
    """The (train, test) SampleTables of the configured data set, with `train_limit` applied."""
    if config.name not in LOADERS:
        raise DatasetError(f"unknown data set {config.name!r}; valid: {', '.join(DATASETS)}")
    train, test = LOADERS[config.name](config)
    if config.train_limit and config.train_limit < len(train):
        train = train.take(stratified_subset(train.ids, train.labels, config.train_limit, config.subset_seed))
    return train, test
