"""The shared loop runs each method's step pattern as its reference code does.

A `Recorder` model remembers which samples each training-mode forward pass saw (column 0 of every
input is its sample number), so a test can check which sets a step drew and how often a sample was
visited, through the public `approx.create` / `approx.unlearn` only.
"""

from __future__ import annotations

import copy
import logging
import math

import pytest
import torch
from torch import nn

import approx

FORGET_IDS = range(0, 10)
"""Sample numbers of the forget set in `_sets`; the retain set follows."""


class Recorder(nn.Module):
    """A linear classifier that records the sample numbers of every forward pass in training mode."""

    def __init__(self, features: int = 5, classes: int = 3) -> None:
        super().__init__()
        self.linear = nn.Linear(features, classes)
        self.batches: list[list[int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.batches.append(x[:, 0].round().long().tolist())
        return self.linear(x)

    def kinds(self) -> list[str]:
        """'F' for an all-forget batch, 'R' for an all-retain one, 'M' for a mix, per training forward."""
        return ["F" if set(b) <= set(FORGET_IDS) else "R" if not set(b) & set(FORGET_IDS) else "M"
                for b in self.batches]


def _sets(num_forget: int = 10, num_retain: int = 30, classes: int = 3):
    """Gaussian inputs whose column 0 is the sample number: forget 0..num_forget-1, retain after."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(num_forget + num_retain, 5, generator=generator)
    x[:, 0] = torch.arange(num_forget + num_retain, dtype=torch.float32)
    y = torch.randint(0, classes, (num_forget + num_retain,), generator=generator)
    return (x[:num_forget], y[:num_forget]), (x[num_forget:], y[num_forget:])


def _recorder() -> Recorder:
    torch.manual_seed(0)
    return Recorder().eval()


@pytest.mark.parametrize("name", ["random_label", "salun"])
def test_rl_and_salun_pass_once_over_the_forget_set_then_the_retain_set_in_separate_steps(name):
    """Unlearn-Saliency RL.py (CIFAR-10 path): per epoch, ceil(10/4) = 3 forget steps, then ceil(30/4) = 8
    retain steps, each with one forward pass on one set; each forget sample is seen once per epoch."""
    forget, retain = _sets()
    model = _recorder()
    result = approx.unlearn(model, approx.create(name, batch_size=4, epochs=2), forget, retain, num_classes=3)
    assert result.steps == 2 * (3 + 8)
    assert "".join(model.kinds()) == ("F" * 3 + "R" * 8) * 2
    for epoch in model.batches[:11], model.batches[11:]:
        seen = sorted(i for batch in epoch for i in batch)
        assert seen == list(range(40)), "every sample exactly once per epoch"


def test_rl_mixed_loop_passes_once_over_the_shuffled_union():
    """The reference's CIFAR-100 path: one pass over forget + retain shuffled together, ceil(40/8) = 5 steps."""
    forget, retain = _sets()
    model = _recorder()
    result = approx.unlearn(model, approx.create("random_label", loop="mixed", batch_size=8, epochs=1), forget, retain,
                            num_classes=3)
    assert result.steps == 5 and "M" in model.kinds()
    assert sorted(i for batch in model.batches for i in batch) == list(range(40))


def test_bad_teacher_passes_once_over_the_forget_set_and_a_share_of_the_retain_set():
    """30 retain samples x retain_fraction 0.5 = 15, plus 10 forget: 25 samples once each, in ceil(25/8) = 4 steps."""
    forget, retain = _sets()
    model = _recorder()
    method = approx.create("bad_teacher", retain_fraction=0.5, batch_size=8)
    result = approx.unlearn(model, method, forget, retain, num_classes=3)
    seen = sorted(i for batch in model.batches for i in batch)
    assert result.steps == 4 and len(seen) == len(set(seen)) == 25
    assert set(FORGET_IDS) <= set(seen)


def test_sfr_on_takes_a_retain_step_every_iteration_and_a_forget_step_first_every_fifth():
    """sfron.py: iteration i takes a forget step if i % 5 == 0, then a retain step: 12 iterations, 15 steps."""
    forget, retain = _sets()
    model = _recorder()
    result = approx.unlearn(model, approx.create("sfr_on", iterations=12, batch_size=4), forget, retain, num_classes=3)
    assert result.steps == 12 + 3
    assert "".join(model.kinds()) == "FRRRRR" * 2 + "FRR"


def test_sfr_on_draws_retain_batches_from_the_whole_retain_set():
    """Two forget samples, 30 retain samples: 20 retain steps of 4 draw 80 samples, every retain sample at least twice."""
    forget, retain = _sets(num_forget=2)
    model = _recorder()
    approx.unlearn(model, approx.create("sfr_on", iterations=20, batch_size=4), forget, retain, num_classes=3)
    retain_seen = [i for batch in model.batches for i in batch if i >= 2]
    assert sorted(set(retain_seen)) == list(range(2, 32))


def test_sfr_on_clips_the_gradient_on_forget_steps_only(monkeypatch):
    """The reference clips (max_norm 7) after the masked forget backward and never on retain steps."""
    forget, retain = _sets()
    model = _recorder()
    clipped: list[int] = []
    original = nn.utils.clip_grad_norm_

    def spy(parameters, max_norm, *args, **kwargs):
        clipped.append(len(model.batches) - 1)  # the step of the latest forward pass
        assert max_norm == 7.0
        return original(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(nn.utils, "clip_grad_norm_", spy)
    approx.unlearn(model, approx.create("sfr_on", iterations=12, batch_size=4), forget, retain, num_classes=3)
    kinds = model.kinds()
    assert clipped == [step for step, kind in enumerate(kinds) if kind == "F"] and len(clipped) == 3


@pytest.mark.parametrize("sample", [1, 500])
def test_sfr_on_keeps_retain_accuracy_after_forgetting_one_sample(sample, digits_model):
    """With a single forget sample the retain steps still see the whole retain set, so the model does not collapse
    (a retain subset of the forget set's size took both samples' runs to about 10% retain accuracy). 300
    iterations: the reference's 1500 take too long for a unit test, and the collapse came within 300."""
    model, forget, retain = copy.deepcopy(digits_model[0]), digits_model[1], digits_model[2]
    x, y = torch.cat([forget[0], retain[0]]), torch.cat([forget[1], retain[1]])
    keep = torch.arange(len(x)) != sample
    one, rest = (x[sample : sample + 1], y[sample : sample + 1]), (x[keep], y[keep])

    def retain_accuracy() -> float:
        with torch.no_grad():
            return (model(rest[0]).argmax(1) == rest[1]).float().mean().item()

    before = retain_accuracy()
    approx.unlearn(model, approx.create("sfr_on", iterations=300), one, rest, num_classes=10)
    assert retain_accuracy() > before - 0.05


REFERENCE_BATCH_SIZES = {
    "finetune": 256,  # Unlearn-Sparse arg_parser.py --batch_size
    "gradient_ascent": 256,  # Unlearn-Sparse / Unlearn-Saliency
    "l1_sparse": 256,  # Unlearn-Sparse
    "random_label": 256,  # Unlearn-Saliency
    "salun": 256,  # Unlearn-Saliency
    "ugradsl": 256,  # its GA backbone
    "ugradsl_plus": 256,  # its FT backbone
    "sfr_on": 128,  # Unified-Unlearning-w-Remain-Geometry scripts/unlearn.sh
    "neggrad_plus": 256,  # deepunlearn neggradplus.py
    "scrub": 128,  # SCRUB large_scale_unlearning.ipynb sgda_batch_size (forget batches: del_batch_size 32)
    "ssd": 128,  # selective-synaptic-dampening forget_random_main.py
    "conv_transpose": 64,  # deepunlearn kgltop5.py
    "masked_small_gradients": 64,  # deepunlearn kgltop2.py
    "bad_teacher": 256,  # bad-teaching-unlearning notebook
}


def test_every_method_defaults_to_its_reference_batch_size():
    assert set(REFERENCE_BATCH_SIZES) == set(approx.available())
    assert {name: approx.create(name).batch_size for name in approx.available()} == REFERENCE_BATCH_SIZES
    assert approx.create("scrub").forget_batch_size == 32


def test_ugradsl_plus_stops_when_the_retain_loss_stops_improving(digits_model):
    """After each epoch, the mean retain CE is compared with the previous epoch's; the run ends at the first
    epoch that improves it by less than retain_tol (relative)."""
    model, forget, retain = copy.deepcopy(digits_model[0]), digits_model[1], digits_model[2]
    method = approx.create("ugradsl_plus", epochs=10, retain_tol=0.05)
    result = approx.unlearn(model, method, forget, retain, num_classes=10)
    losses = method.epoch_losses
    assert 2 <= len(losses) < 10
    assert result.steps == len(losses) * math.ceil(len(retain[0]) / 256)
    assert all(before - now >= 0.05 * before for before, now in zip(losses[:-2], losses[1:-1]))
    assert losses[-2] - losses[-1] < 0.05 * losses[-2]


def test_ugradsl_plus_stops_on_a_flat_retain_loss_not_on_the_forget_loss(digits_model):
    """A learning rate too small to change anything: the retain loss is flat, so the run stops after the second
    epoch (the first comparison); a forget loss above ln K (a model that starts out wrong) does not stop it."""
    model, forget, retain = copy.deepcopy(digits_model[0]), digits_model[1], digits_model[2]
    with torch.no_grad():
        model.net[-1].bias[0] -= 50.0  # class 0, the forget class, is never predicted: forget CE >> ln 10
    result = approx.unlearn(model, approx.create("ugradsl_plus", lr=1e-12), forget, retain, num_classes=10)
    assert result.steps == 2 * math.ceil(len(retain[0]) / 256)


def test_early_stops_are_logged_at_debug_level_only(digits_model, caplog):
    model, forget, retain = copy.deepcopy(digits_model[0]), digits_model[1], digits_model[2]
    with caplog.at_level(logging.INFO, logger="approx"):
        approx.unlearn(model, approx.create("ugradsl_plus", lr=1e-12), forget, retain, num_classes=10)
    assert not [r for r in caplog.records if "converged" in r.getMessage()]
    with caplog.at_level(logging.DEBUG, logger="approx"):
        approx.unlearn(model, approx.create("ugradsl_plus", lr=1e-12), forget, retain, num_classes=10)
    assert [r for r in caplog.records if "converged" in r.getMessage() and r.levelno == logging.DEBUG]


def test_on_step_reports_every_step_with_its_phase_and_loss_terms():
    forget, retain = _sets()
    seen: list[tuple[int, str, tuple[str, ...]]] = []
    approx.unlearn(_recorder(), approx.create("random_label", batch_size=8, epochs=1), forget, retain, num_classes=3,
                   on_step=lambda progress, terms: seen.append((progress.step, progress.phase, tuple(terms))))
    assert seen == [(0, "forget", ("forget_random_ce",)), (1, "forget", ("forget_random_ce",))] + [
        (step, "retain", ("retain_ce",)) for step in range(2, 6)]


def test_an_update_that_leaves_non_finite_weights_is_refused_though_every_loss_was_finite():
    """Each loss is computed before its update, so the last update can overflow a weight unseen: a
    model with inf weights answers NaN everywhere, and the bench's scores cannot be computed on it."""
    (fx, fy), retain = _sets()
    # One step of lr 1e37 on gradients near 100 (inputs scaled up): past float32's 3.4e38.
    method = approx.create("gradient_ascent", lr=1e37, epochs=1, batch_size=64)
    with pytest.raises(FloatingPointError, match=r"gradient_ascent: linear\.weight became non-finite after 1 steps"):
        approx.unlearn(_recorder(), method, (fx * 100, fy), retain, num_classes=3)
