"""An exclusive lock on a run directory, so commands that change it run one at a time."""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sisa.errors import RunLockedError

log = logging.getLogger(__name__)


@contextmanager
def run_lock(path: Path, timeout: float | None = None, poll: float = 0.1) -> Iterator[None]:
    """Hold an exclusive flock on `path` for the block.

    Args:
        path: the lock file (created if missing).
        timeout: seconds to wait for another holder; None waits as long as it takes.
        poll: seconds between attempts.

    Raises:
        RunLockedError: the lock was still held by another command after `timeout` seconds.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    began = time.monotonic()
    waited = False
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if timeout is not None and time.monotonic() - began >= timeout:
                    raise RunLockedError(
                        f"another command is working on {path.parent} (lock {path}); "
                        f"waited {timeout:.0f} s. Retry when it has finished."
                    ) from None
                if not waited:
                    log.info("waiting for another command working on %s", path.parent)
                    waited = True
                time.sleep(poll)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
