"""Cost of a step of work: wall time and the peak memory it added.

Peak memory is the process's resident-set high-water mark during the step minus the resident size
when it began (Linux: the mark is reset through /proc/self/clear_refs), plus, on CUDA, the peak of
allocated device memory. Where the mark cannot be reset it is reported as NaN rather than guessed.
Work done in other processes (Ray actors) is not seen: the bench trains in-process.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")


@dataclass
class Cost:
    """Filled in when the measured block ends."""

    seconds: float = 0.0
    peak_mb: float = float("nan")
    """Host memory added at the peak (MB)."""
    cuda_peak_mb: float = float("nan")
    """Peak CUDA memory allocated during the block (MB), when CUDA is in use."""


def _kib(field: str) -> int | None:
    try:
        match = re.search(rf"{field}:\s+(\d+) kB", _STATUS.read_text())
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_high_water_mark() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@contextmanager
def measure() -> Iterator[Cost]:
    """Time the block and record the peak memory it added."""
    cost = Cost()
    can_reset = _reset_high_water_mark()
    start_rss = _kib("VmRSS")
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    try:
        yield cost
    finally:
        if cuda:
            torch.cuda.synchronize()
            cost.cuda_peak_mb = torch.cuda.max_memory_allocated() / 2**20
        cost.seconds = time.perf_counter() - began
        peak = _kib("VmHWM")
        if can_reset and peak is not None and start_rss is not None:
            cost.peak_mb = max(0, peak - start_rss) / 1024
