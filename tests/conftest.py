"""Shared fixtures: small deterministic data and models, and the real data sets in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sisa import SampleTable, SisaConfig, SisaRun

SHARED_DATA = Path(os.environ.get("UNLEARN_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def shared_data(name: str) -> Path:
    """Folder of a real data set in ../shared/data, or skip (a user's clone has no ../shared)."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data set {name} not found at {path} (CI provides ../shared/data)")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Decoded data sets and MLflow runs go to the test session's folder, never the user's.
    monkeypatch.setenv("UNLEARN_CACHE", str(tmp_path_factory.getbasetemp() / "data-cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.getbasetemp() / 'mlflow.db'}")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster (2 CPUs, no dashboard) shared by every Ray test."""
    from orchestration.cluster import ensure_ray

    ray = ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def make_table(n: int = 240, features: int = 6, classes: int = 3, seed: int = 0) -> SampleTable:
    """Gaussian blobs with sample_ids 0..n-1."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    means = rng.normal(scale=2.0, size=(classes, features))
    return SampleTable.from_numpy((means[labels] + rng.normal(size=(n, features))).astype(np.float32), labels)


def tiny_model() -> nn.Module:
    """Small MLP with dropout and batch norm, so the random state and buffers are both exercised."""
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))


LOCAL = ["ray.engine=local", "tracking.enabled=false"]
"""open_session flags for tests that train in-process without MLflow (flags are per command, never saved)."""

SMALL = SisaConfig(num_shards=3, num_slices=3, epochs=3, batch_size=16, lr=0.05)


@pytest.fixture
def table() -> SampleTable:
    return make_table()


def open_run(path: Path, table: SampleTable, config: SisaConfig = SMALL, **kwargs) -> SisaRun:
    """A SisaRun over `table` with the tiny model, seed 7."""
    return SisaRun(path, table, tiny_model, config, seed=7, fingerprint="test-run", **kwargs)


def scratch_of(run: SisaRun, path: Path, table: SampleTable, config: SisaConfig = SMALL) -> SisaRun:
    """A new run on `table` with `run`'s secret (so the same shard assignment), trained from scratch."""
    scratch = open_run(path, table, config, secret=run.secret)
    scratch.train()
    return scratch


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_bit_identical(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), f"{key} differs"
