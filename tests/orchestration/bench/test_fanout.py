"""Fan-out: one torch thread per job in this process or on Ray, a killed worker's job retried, failures named."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from orchestration.bench.fanout import InProcess, RayTasks, WorkerLostError


@dataclass(frozen=True)
class Job:
    number: int

    def label(self) -> str:
        return f"job {self.number}"


class Recorder:
    def __init__(self) -> None:
        self.total, self.done = 0, []

    def planned(self, count: int) -> None:
        self.total += count

    def finished(self, label: str) -> None:
        self.done.append(label)


def threads_and_square(job: Job, shared: int) -> tuple[int, int]:
    return torch.get_num_threads(), job.number**2 + shared


def die_once(job: Job, marker: str) -> int:
    """Kills its worker process the first time it runs (the marker remembers), then succeeds."""
    if not Path(marker).exists():
        Path(marker).touch()
        os._exit(1)
    return job.number


def die(job: Job, shared: None) -> None:
    os._exit(1)


def fail(job: Job, shared: None) -> None:
    raise ValueError(f"bad input {job.number}")


def test_in_process_jobs_run_with_one_torch_thread_and_restore_the_setting():
    before = torch.get_num_threads()
    progress = Recorder()
    results = dict(InProcess().map(threads_and_square, [Job(2), Job(3)], 10, progress))
    assert results == {Job(2): (1, 14), Job(3): (1, 19)}
    assert torch.get_num_threads() == before
    assert progress.total == 2 and progress.done == ["job 2", "job 3"]


@pytest.mark.ray
def test_ray_jobs_run_as_single_thread_tasks_and_stream_back(ray_cluster):
    progress = Recorder()
    results = dict(RayTasks().map(threads_and_square, [Job(n) for n in range(4)], 1, progress))
    assert results == {Job(n): (1, n * n + 1) for n in range(4)}
    assert progress.total == 4 and sorted(progress.done) == [f"job {n}" for n in range(4)]


@pytest.mark.ray
def test_ray_job_whose_worker_is_killed_is_retried(ray_cluster, tmp_path):
    marker = tmp_path / "killed"
    assert dict(RayTasks(retries=2).map(die_once, [Job(7)], str(marker))) == {Job(7): 7}
    assert marker.exists(), "the first attempt's worker died"


@pytest.mark.ray
def test_ray_job_that_raises_fails_the_fanout_with_its_label(ray_cluster):
    with pytest.raises(RuntimeError, match="job 5 failed: ValueError: bad input 5"):
        list(RayTasks().map(fail, [Job(5)], None))


@pytest.mark.ray
def test_ray_job_whose_worker_keeps_dying_fails_with_one_line_naming_it(ray_cluster):
    with pytest.raises(WorkerLostError, match="job 3: its worker died 1 times"):
        list(RayTasks(retries=0).map(die, [Job(3)], None))
