"""Where a command's time goes: wall seconds summed per named phase, printed by `--timings`.

Phases are entered where the work happens (data loading, Ray start, actor start, retraining,
purges, evaluation, MLflow) and never nest, so they add up; the command reports the rest as
`other` and the interpreter's start and imports, read from the process's start time, as
`startup`. Only the process that runs the command records: work inside Ray actors is seen as
the wall time the driver waited for it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_lock = threading.Lock()
_seconds: dict[str, float] = {}


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the block's wall time to phase `name`."""
    began = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - began
        with _lock:
            _seconds[name] = _seconds.get(name, 0.0) + elapsed


def reset() -> None:
    """Forget every phase recorded so far (a command starts)."""
    with _lock:
        _seconds.clear()


def recorded() -> dict[str, float]:
    """Phase -> seconds recorded since the last reset, in the order first entered."""
    with _lock:
        return dict(_seconds)


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc), or None where that cannot be read."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: start time in ticks since boot
    return max(0.0, uptime - started)


def breakdown(total: float, startup: float | None) -> dict[str, float]:
    """The recorded phases, `startup` first and `other` (the rest of `total`) last, rounded to ms."""
    phases = recorded()
    out = {"startup": startup} if startup is not None else {}
    out.update(phases)
    out["other"] = max(0.0, total - sum(phases.values()))
    out["total"] = total + (startup or 0.0)
    return {k: round(v, 3) for k, v in out.items()}
