"""Slice-by-slice training: epoch budget, resumption, determinism."""

from __future__ import annotations

import pytest

from sisa import SisaConfig
from tests.conftest import assert_bit_identical, open_run


@pytest.mark.parametrize(("epochs", "slices", "expected"), [(10, 1, 10), (10, 4, 4), (3, 3, 2), (1, 8, 1)])
def test_slice_epochs_follow_the_sisa_budget_2e_over_r_plus_1(epochs, slices, expected):
    """e=10, R=4: 2*10/5 = 4; e=3, R=3: 6/4 = 1.5 -> 2; never below 1."""
    assert SisaConfig(epochs=epochs, num_slices=slices).slice_epochs == expected


def test_training_resumes_from_the_deepest_valid_checkpoint(tmp_path, table):
    run = open_run(tmp_path / "run", table)
    run.train()
    reference = [m for _, m in run.constituents()]
    for entry in run.store.entries(1):
        if entry.slice == 2:
            run.store.delete(entry)
    reports = run.train()
    assert [(r.resumed_from, r.retrained_slices) for r in reports] == [(2, []), (1, [2]), (2, [])]
    for a, (_, b) in zip(reference, run.constituents()):
        assert_bit_identical(a, b)


def test_config_rejects_invalid_values_with_the_valid_range():
    with pytest.raises(ValueError, match="num_shards must be a positive integer"):
        SisaConfig(num_shards=0)
    with pytest.raises(ValueError, match="aggregation must be one of"):
        SisaConfig(aggregation="max")
