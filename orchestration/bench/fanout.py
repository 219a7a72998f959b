"""Where the bench's jobs run: one after another in this process, or as Ray tasks of fixed size.

A job gets one CPU and one torch thread wherever it runs, so the times of different jobs compare
and small models do not lose to thread contention (on a shared 2-core machine a tiny MLP trained
with torch's default two threads took 41 s where one thread took 1.4 s). Results come back as
jobs finish and `Progress` hears of each. On Ray, a job whose worker dies (killed, out of memory)
is retried on a fresh worker; a job that raises fails the bench with its label, and every model
finished so far stays in the cache, so a rerun picks up where it stopped.

The jobs read and write the model cache by path: on a cluster of several machines, put the
cache (`bench.cache_dir`) on storage every node mounts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import torch

from sisa import SisaError

log = logging.getLogger(__name__)
ResultT = TypeVar("ResultT")
THREADS = 1
"""torch threads per job."""


class WorkerLostError(SisaError):
    """A job's worker died on every retry; the models finished before are cached, so a rerun goes on."""


class Progress(Protocol):
    """Hears how many jobs were planned and when each finishes."""

    def planned(self, count: int) -> None: ...

    def finished(self, label: str) -> None: ...


class Fanout(Protocol):
    """Runs `fn(job, shared)` for every job; yields (job, result) as they finish."""

    def map(self, fn: Callable[[Any, Any], ResultT], jobs: Sequence[Any], shared: Any,
            progress: Progress | None = None) -> Iterator[tuple[Any, ResultT]]: ...


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with `count` torch threads, restoring the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class InProcess:
    """Jobs one after another in this process, with one torch thread."""

    def map(self, fn: Callable[[Any, Any], ResultT], jobs: Sequence[Any], shared: Any,
            progress: Progress | None = None) -> Iterator[tuple[Any, ResultT]]:
        if progress is not None:
            progress.planned(len(jobs))
        for job in jobs:
            with torch_threads(THREADS):
                result = fn(job, shared)
            if progress is not None:
                progress.finished(job.label())
            yield job, result


def _in_worker(fn: Callable[[Any, Any], ResultT], job: Any, shared: Any) -> ResultT:
    """A Ray task's body: the job with one torch thread (the worker process keeps the setting)."""
    torch.set_num_threads(THREADS)
    return fn(job, shared)


class RayTasks:
    """Jobs as Ray tasks of one CPU each, on a local cluster or the one at `address`."""

    def __init__(self, address: str = "", retries: int = 3) -> None:
        self.address, self.retries = address, retries

    def map(self, fn: Callable[[Any, Any], ResultT], jobs: Sequence[Any], shared: Any,
            progress: Progress | None = None) -> Iterator[tuple[Any, ResultT]]:
        from orchestration.cluster import ensure_ray

        ray = ensure_ray(self.address)
        from ray.exceptions import RayTaskError

        if progress is not None:
            progress.planned(len(jobs))
        # max_retries re-runs a task whose worker died; exceptions the job raises are not retried.
        task = ray.remote(num_cpus=1, max_retries=self.retries)(_in_worker)
        shared_ref = ray.put(shared)  # once; every task maps the same copy
        pending = {task.remote(fn, job, shared_ref): job for job in jobs}
        try:
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except RayTaskError as err:
                    raise RuntimeError(f"{job.label()} failed: {_first_line(err.cause)}") from err.cause
                except ray.exceptions.RayError as err:
                    raise WorkerLostError(f"{job.label()}: its worker died {self.retries + 1} times "
                                          f"({type(err).__name__}); finished models are cached, rerun to go on") from None
                if progress is not None:
                    progress.finished(job.label())
                yield job, result
        finally:
            for ref in pending:
                ray.cancel(ref)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"
