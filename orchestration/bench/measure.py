"""Cost of a step of work: wall time, the CPU time it got, and the peak memory it added.

CPU time is the process's (all threads). With one torch thread per task, CPU time / wall time
near 1 means the step had its core to itself; well below 1, other processes competed for the
cores and the wall time is inflated: the bench says so next to its timings.

Peak memory is the process's resident-set high-water mark during the step minus the resident size
when it began (Linux: the mark is reset through /proc/self/clear_refs), plus, on CUDA, the peak of
allocated device memory. Where the mark cannot be reset it is reported as NaN rather than guessed.
Each step is measured inside the process that runs it (a Ray worker or the bench's own process).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

_STATUS = "/proc/self/status"


@dataclass
class Cost:
    """Filled in when the measured block ends; `samples_epochs` by whoever knows the work done."""

    seconds: float = 0.0
    cpu_seconds: float = 0.0
    samples_epochs: float = 0.0
    """Samples x epochs trained (training, SISA) or samples processed (approximate methods)."""
    peak_mb: float = float("nan")
    """Host memory added at the peak (MB)."""
    cuda_peak_mb: float = float("nan")
    """Peak CUDA memory allocated during the block (MB), when CUDA is in use."""

    @property
    def cpu_share(self) -> float:
        """CPU time / wall time: about 1 for a single-threaded step that had a core to itself."""
        return self.cpu_seconds / self.seconds if self.seconds > 0 else float("nan")


def _kib(field: str) -> int | None:
    try:
        with open(_STATUS) as status:
            match = re.search(rf"{field}:\s+(\d+) kB", status.read())
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


@contextmanager
def measure() -> Iterator[Cost]:
    """Time the block (wall and CPU) and record the peak memory it added."""
    cost = Cost()
    can_reset = _reset_high_water_mark()
    start_rss = _kib("VmRSS")
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    began, cpu_began = time.perf_counter(), time.process_time()
    try:
        yield cost
    finally:
        if cuda:
            torch.cuda.synchronize()
            cost.cuda_peak_mb = torch.cuda.max_memory_allocated() / 2**20
        cost.seconds = time.perf_counter() - began
        cost.cpu_seconds = time.process_time() - cpu_began
        peak = _kib("VmHWM")
        if can_reset and peak is not None and start_rss is not None:
            cost.peak_mb = max(0, peak - start_rss) / 1024
