"""Helpers shared by the benchmarks: timing, medians, result files."""

from __future__ import annotations

import json
import platform
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
