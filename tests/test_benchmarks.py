"""The benchmarks run end to end in their quick mode (their numbers live in benchmarks/README.md)."""

from __future__ import annotations

import json

import pytest

from benchmarks import parallel


@pytest.mark.ray
def test_parallel_benchmark_quick_mode_writes_its_results(tmp_path, ray_cluster):
    results = parallel.main(["--quick", "--repeats", "1", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "parallel-quick.json").read_text())
    assert set(saved["median_s"]) == {"local-1t", "ray-1w", "ray-2w", "local-2t"}
    assert all(value > 0 for value in saved["median_s"].values())
    assert saved["samples_epochs"] == results["samples_epochs"] > 0
    assert results["speedup_2w_over_1w"] == pytest.approx(saved["median_s"]["ray-1w"] / saved["median_s"]["ray-2w"])
