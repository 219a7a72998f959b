"""Slice-by-slice training: epoch budget, resumption, determinism."""

from __future__ import annotations

import os

import pytest
import torch

from sisa import SisaConfig
from sisa.augment import crop_flip, draw_views
from sisa.training import deterministic
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


def test_cosine_schedule_runs_over_the_epochs_of_all_slices_in_a_row():
    """lr 0.1, lr_min 0, R=2 slices of 2 epochs (epochs=3: round(6/3) = 2), so T = 4 global epochs:
    g = 0, 1, 2, 3 -> 0.05 * (1 + cos(pi * g / 4)) = 0.1, 0.085355, 0.05, 0.014645."""
    config = SisaConfig(num_slices=2, epochs=3, lr=0.1, lr_schedule="cosine")
    rates = [config.lr_at(r, e) for r in range(2) for e in range(2)]
    assert rates == pytest.approx([0.1, 0.0853553, 0.05, 0.0146447], abs=1e-7)


def test_step_schedule_decays_every_lr_step_epochs_global_epochs():
    """lr 0.1, gamma 0.5, every 3 global epochs; R=2 slices of 2 epochs: g = 0, 1, 2 -> 0.1, g = 3 -> 0.05."""
    config = SisaConfig(num_slices=2, epochs=3, lr=0.1, lr_schedule="step", lr_step_epochs=3, lr_gamma=0.5)
    assert [config.lr_at(r, e) for r in range(2) for e in range(2)] == pytest.approx([0.1, 0.1, 0.1, 0.05])
    assert SisaConfig(lr=0.1).lr_at(3, 1) == 0.1


def test_crop_flip_gathers_the_padded_window_and_mirrors_it():
    """Image [[1, 2], [3, 4]] zero-padded by 1 is 4x4 with it in the middle. Offset (0, 0): the top-left 2x2
    window [[0, 0], [0, 1]]. Offset (1, 1): the image. Offset (2, 2) flipped: window [[4, 0], [0, 0]] mirrored
    to [[0, 4], [0, 0]]."""
    image = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2).repeat(3, 1, 1, 1)
    out = crop_flip(image, torch.tensor([[0, 0], [1, 1], [2, 2]]), torch.tensor([False, False, True]), padding=1)
    assert out[:, 0].tolist() == [[[0, 0], [0, 1]], [[1, 2], [3, 4]], [[0, 4], [0, 0]]]


def test_augmentation_draws_depend_only_on_seed_shard_slice_and_epoch():
    a, b = draw_views(50, 4, 7, 1, 2, 3), draw_views(50, 4, 7, 1, 2, 3)
    assert torch.equal(a.offsets, b.offsets) and torch.equal(a.flips, b.flips)
    assert a.offsets.min() >= 0 and a.offsets.max() <= 8
    assert not torch.equal(a.offsets, draw_views(50, 4, 7, 1, 2, 4).offsets)


@pytest.mark.parametrize(
    ("setting", "message"),
    [({"optimizer": "adam"}, "optimizer must be one of sgd, adamw; got 'adam'"),
     ({"lr_schedule": "linear"}, "lr_schedule must be one of constant, cosine, step; got 'linear'"),
     ({"lr_gamma": 0.0}, r"lr_gamma must be in \(0, 1\]"),
     ({"lr_step_epochs": 0}, "lr_step_epochs must be a positive integer"),
     ({"lr_min": 1.0}, r"lr_min must be in \[0, lr=0.05\]"),
     ({"label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\)"),
     ({"beta2": -0.1}, r"beta2 must be in \[0, 1\)"),
     ({"augment_padding": -1}, "augment_padding must be an integer >= 0")],
)
def test_recipe_settings_are_validated_listing_what_is_valid(setting, message):
    with pytest.raises(ValueError, match=message):
        SisaConfig(**setting)


def test_augmentation_of_table_samples_is_refused(tmp_path, table):
    with pytest.raises(ValueError, match=r"sisa.augment crops and flips images \(C, H, W\), but the samples have shape"):
        open_run(tmp_path / "run", table, SisaConfig(augment=True))


def test_deterministic_kernels_are_strict_on_cpu_and_warn_only_on_an_accelerator(monkeypatch):
    """On CPU a kernel without a deterministic implementation must fail (bit-identity rests on it); on
    CUDA the pooling backward kernels have none, so training there warns instead of crashing, with
    cuBLAS given the workspace its deterministic mode needs (a value the user set is kept)."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "recorded, so that teardown restores the original")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()

    with deterministic("cpu"):
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    with deterministic(torch.device("cuda", 1)):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    with deterministic("cuda"):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"

    assert (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()) == before
