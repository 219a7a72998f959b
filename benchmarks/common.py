"""Helpers shared by the benchmarks: timing, medians, result files."""

from __future__ import annotations

import json
import platform
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

SHARED_MNIST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"


def timed(work: Callable[[], Any]) -> float:
    """Wall seconds of one call."""
    began = time.perf_counter()
    work()
    return time.perf_counter() - began


def median(values: list[float]) -> float:
    """Median of repeated measurements."""
    return statistics.median(values)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import os

    return {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "processor": platform.processor() or platform.machine()}


def write_results(name: str, results: dict[str, Any], folder: Path) -> Path:
    """Write `results` (plus the machine) as JSON under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **results}, indent=2))
    return path


def copy_run_dir(run_dir: Path, to: Path, train_cache: Path | None) -> list[str]:
    """Copy a trained run directory to `to`, with its own copy of the decoded-data cache.

    Returns the settings that open the copy on that cache (`--set data.cache_dir=...`; none when
    the data set has no cache). Each copy purges its deletions from its own cache, as a user's
    run purges the project's cache, so a deletion on one copy does not leave the next copy with a
    cache missing rows it holds (which makes a run decode the source files: the data load of
    CIFAR-10's JPEG zip then costs 20 s and more).
    """
    remove_run_copy(to)
    shutil.copytree(run_dir, to, ignore=shutil.ignore_patterns("lock"))
    if train_cache is None:
        return []
    cache = _cache_of(to)
    cache.mkdir(parents=True)
    shutil.copytree(train_cache, cache / train_cache.name)
    test = train_cache.with_name(train_cache.name.removesuffix("-train") + "-test.parquet")
    shutil.copy2(test, cache / test.name)
    return ["--set", f"data.cache_dir={cache}"]


def remove_run_copy(to: Path) -> None:
    """Delete a copy made by `copy_run_dir`, with its data cache."""
    shutil.rmtree(to, ignore_errors=True)
    shutil.rmtree(_cache_of(to), ignore_errors=True)


def _cache_of(copy: Path) -> Path:
    return copy.with_name(copy.name + "-data")
