"""The embedded data sets: scikit-learn's digits and seeded Gaussian blobs (`synthetic`).

Neither has a test split of its own: a fixed seeded permutation holds out `data.test_fraction`.
A sample's `sample_id` is its position in the training split.
"""

from __future__ import annotations

import numpy as np

from orchestration.config import DataConfig
from orchestration.datasets.base import Split
from sisa import SampleTable


def _holdout(x: np.ndarray, y: np.ndarray, fraction: float, scale: float) -> Split:
    # The split is part of the data set's definition, so it uses a fixed seed, not the run's.
    order = np.random.default_rng(0).permutation(len(x))
    cut = int(round(len(x) * (1 - fraction)))
    train, test = np.sort(order[:cut]), np.sort(order[cut:])
    return SampleTable.from_numpy(x[train], y[train], scale=scale), SampleTable.from_numpy(x[test], y[test], scale=scale)


def digits(config: DataConfig) -> Split:
    """scikit-learn's 8x8 digits (1,797 images, 16 grey levels)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = data.images.astype(np.uint8)[:, None]  # (N, 1, 8, 8), values 0..16
    return _holdout(images, data.target, config.test_fraction, scale=1 / 16)


def synthetic(config: DataConfig) -> Split:
    """Gaussian blobs: one random mean per class, unit noise; a fixed seed makes it reproducible."""
    n, d, k = config.synthetic_samples, config.synthetic_features, config.synthetic_classes
    if min(n, d) < 1 or k < 2:
        raise ValueError("synthetic data needs synthetic_samples >= 1, synthetic_features >= 1, synthetic_classes >= 2")
    rng = np.random.default_rng(1234)
    means = rng.normal(scale=1.5, size=(k, d))
    labels = rng.integers(0, k, size=n)
    x = (means[labels] + rng.normal(size=(n, d))).astype(np.float32)
    return _holdout(x, labels, config.test_fraction, scale=1.0)
