"""Shards too large for memory are refused before training starts and before anything is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from orchestration import memory
from orchestration.config import load_config
from orchestration.memory import shard_bytes, shards_at_once
from sisa import SampleTable
from tests.orchestration.test_cli import run_cli


def test_shard_bytes_bound_the_largest_shard_as_float32_plus_the_stored_copy():
    """1000 uint8 images (3, 8, 8) over 4 shards: 250 + 4 * sqrt(250) = 313.2 -> 314 samples of 192 values at
    1 + 4 bytes each = 301,440 bytes. The same as float32 tables: 4 bytes a value, 241,152."""
    images = SampleTable.from_numpy(np.zeros((1000, 3, 8, 8), np.uint8), np.zeros(1000), scale=1 / 255)
    assert shard_bytes(images, 4) == 301_440
    floats = SampleTable.from_numpy(np.zeros((1000, 192), np.float32), np.zeros(1000))
    assert shard_bytes(floats, 4) == 241_152
    assert shard_bytes(floats, 1) == 1000 * 192 * 4, "never more samples than the table holds"


def test_shards_at_once_is_one_in_process_and_the_actor_count_on_a_local_ray_cluster():
    assert shards_at_once(load_config(None, ["ray.engine=local", "sisa.num_shards=8"])) == 1
    assert shards_at_once(load_config(None, ["ray.max_workers=3", "sisa.num_shards=8"])) == 3
    assert shards_at_once(load_config(None, ["ray.max_workers=16", "sisa.num_shards=8"])) == 8


def test_train_refuses_shards_that_do_not_fit_with_nothing_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 100_000)
    run_dir = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--run-dir", str(run_dir), "--engine", "local", "--no-track")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "GiB per shard (1438 samples of shape [1, 8, 8] over 4 shards, as float32)" in err
    assert "0.00 GiB of memory is available; use more shards (sisa.num_shards)" in err
    assert not run_dir.exists()


def test_available_bytes_reads_this_machine():
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        assert memory.available_bytes() is None
        return
    total = int(next(line for line in meminfo.read_text().splitlines() if line.startswith("MemTotal:")).split()[1]) * 1024
    assert 0 < memory.available_bytes() <= total


def test_status_of_a_trained_run_does_not_check_memory(tmp_path, capsys, monkeypatch):
    run_dir = str(tmp_path / "run")
    fast = ["--engine", "local", "--no-track", "--set", "sisa.num_shards=2", "--set", "sisa.num_slices=1",
            "--set", "sisa.epochs=1"]
    assert run_cli(capsys, "train", "--run-dir", run_dir, *fast)[0] == 0
    monkeypatch.setattr(memory, "available_bytes", lambda: 100_000)
    assert run_cli(capsys, "status", "--run-dir", run_dir)[0] == 0, "reading a run trains nothing"
    code, _, err = run_cli(capsys, "forget", "--run-dir", run_dir, "--ids", "3")
    assert code == 2 and "GiB of memory is available" in err
