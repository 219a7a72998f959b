"""Each method's math against numbers derived by hand."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import approx
from approx.base import Progress, UnlearnBatch, cosine
from approx.methods.bad_teacher import bad_teacher_loss, random_teacher
from approx.methods.common import random_labels, random_wrong_labels
from approx.methods.conv_transpose import transpose_kernels
from approx.methods.masked_small_gradients import kaiming_fan_out, smallest_gradients
from approx.methods.salun import saliency_masks
from approx.methods.scrub import distill_kl
from approx.methods.sfr_on import fisher_mask, sample_weights
from approx.methods.ssd import dampening_factors
from approx.methods.ugradsl import nls_targets


def _batch(forget: tuple[torch.Tensor, torch.Tensor], retain: tuple[torch.Tensor, torch.Tensor], classes: int):
    return UnlearnBatch(*forget, *retain, classes, torch.Generator().manual_seed(0))


def test_l1_weight_decays_linearly_per_epoch_to_zero():
    """alpha_0 = 1e-4, E = 10: epoch 0 -> 1e-4, epoch 5 -> 5e-5, epoch 9 -> 1e-5."""
    method = approx.create("l1_sparse")
    weights = [method.l1_weight(Progress(0, 100, epoch, 10)) for epoch in (0, 5, 9)]
    assert [round(w, 10) for w in weights] == [1e-4, 5e-5, 1e-5]


def test_negative_label_smoothing_targets():
    """a = -0.5, K = 4: true class (1 + 0.5) - 0.5/4 = 1.375, others -0.5/4 = -0.125; rows sum to 1."""
    targets = nls_targets(torch.tensor([2]), 4, -0.5)
    assert torch.allclose(targets, torch.tensor([[-0.125, -0.125, 1.375, -0.125]]))
    assert torch.allclose(targets.sum(-1), torch.tensor([1.0]))


def test_sfr_on_sample_weights_favour_low_loss_samples():
    """losses (1, 4), lambda 0.5: 1/l^0.5 = (1, 0.5), sum 1.5; N_f = 2: eps = 2 (1, 0.5) / 1.5 = (4/3, 2/3)."""
    weights = sample_weights(torch.tensor([1.0, 4.0]), lam=0.5)
    assert torch.allclose(weights, torch.tensor([4 / 3, 2 / 3]))


def test_sfr_on_mask_keeps_weights_whose_forget_fisher_dominates():
    """F_f = (2, 1, 0.5, 0), F_r = (1, 1, 1, 0): ratios (2, 1, 0.5, 1e-15/1e-15 = 1).
    gamma 1 -> (1, 1, 0, 1); gamma 1.5 -> (1, 0, 0, 0)."""
    forget, retain = [torch.tensor([2.0, 1.0, 0.5, 0.0])], [torch.tensor([1.0, 1.0, 1.0, 0.0])]
    assert fisher_mask(forget, retain, 1.0)[0].tolist() == [1.0, 1.0, 0.0, 1.0]
    assert fisher_mask(forget, retain, 1.5)[0].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_salun_mask_keeps_the_top_fraction_of_forget_gradients():
    """Model y = w . x with w = 0 and 2 classes: the gradient of row k is (p_k - [k = y]) x = -/+0.5 x,
    so for x = (4, 3, 2, 1) |grad| is (2, 1.5, 1, 0.5) in both rows and the top 50% is columns 1-2."""
    model = nn.Linear(4, 2, bias=False)
    nn.init.zeros_(model.weight)
    masks = saliency_masks(model, torch.tensor([[4.0, 3.0, 2.0, 1.0]]), torch.tensor([0]), fraction=0.5)
    assert masks[0].tolist() == [[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]


def test_salun_masked_weights_stay_exactly_fixed_under_weight_decay_and_momentum():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    before = [p.detach().clone() for p in model.parameters()]
    method = approx.create("salun", fraction=0.3, weight_decay=0.1, momentum=0.9, epochs=3, batch_size=8)
    approx.unlearn(model, method, (x[:10], y[:10]), (x[10:], y[10:]), num_classes=3)
    for p, m, b in zip(model.parameters(), method.masks, before):
        assert torch.equal(p[m == 0], b[m == 0]), "a masked weight moved"
    moved = sum(int((p != b)[m == 1].sum()) for p, m, b in zip(model.parameters(), method.masks, before))
    assert moved > 0
    total = sum(m.numel() for m in method.masks)
    assert sum(int(m.sum()) for m in method.masks) == int(0.3 * total)


def test_random_labels_draw_from_all_classes_and_wrong_labels_never_the_true_one():
    labels = torch.arange(10).repeat(100)
    wrong = random_wrong_labels(labels, 10, torch.Generator().manual_seed(0))
    assert not (wrong == labels).any() and set(wrong.tolist()) == set(range(10))
    anything = random_labels(labels, 10, torch.Generator().manual_seed(0))
    assert (anything == labels).any() and set(anything.tolist()) == set(range(10))


def test_cosine_factor():
    """0.5 * (1 + cos(pi * f)): f = 0 -> 1, f = 1/2 -> 0.5."""
    assert cosine(0.0) == 1.0
    assert math.isclose(cosine(0.5), 0.5)


@pytest.mark.parametrize(("schedule", "epochs", "factors"), [
    ("constant", 3, [1.0, 1.0, 1.0]),
    # 0.5 (1 + cos(pi e / 4)), e = 0..3
    ("cosine", 4, [1.0, 0.8535533905932737, 0.5, 0.14644660940672627]),
    # E = 5: W = 3, k = e + 1: 1/3, 2/3, 3/3, then (6 - 4)/(6 - 3) = 2/3, (6 - 5)/3 = 1/3
    ("warmup_decay", 5, [1 / 3, 2 / 3, 1.0, 2 / 3, 1 / 3]),
    # E = 3: W = 2: 1/2, 2/2, then (4 - 3)/(4 - 2) = 1/2
    ("warmup_decay", 3, [0.5, 1.0, 0.5]),
])
def test_learning_rate_schedules_are_stepped_per_epoch(schedule, epochs, factors):
    method = approx.create("finetune", schedule=schedule, epochs=epochs, lr=0.1)
    rates = [method.learning_rate(Progress(7, 100, e, epochs)) for e in range(epochs)]
    assert rates == pytest.approx([0.1 * f for f in factors])


def test_ssd_dampens_only_parameters_far_more_important_to_the_forget_set():
    """I_f = (4, 1, 30), I_D = (1, 1, 2), alpha 2: selected where I_f > 2 I_D: (yes, no, yes).
    lambda 1: min(1/4, 1) = 0.25, 1, min(2/30, 1) = 1/15; lambda 10: min(10/4, 1) = 1, 1, min(20/30, 1) = 2/3."""
    forget, full = torch.tensor([4.0, 1.0, 30.0]), torch.tensor([1.0, 1.0, 2.0])
    assert dampening_factors(forget, full, lam=1.0, alpha=2.0).tolist() == pytest.approx([0.25, 1.0, 1 / 15])
    assert dampening_factors(forget, full, lam=10.0, alpha=2.0).tolist() == pytest.approx([1.0, 1.0, 2 / 3])


def test_ssd_takes_no_steps_and_multiplies_each_weight_by_its_factor():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    x, y = torch.randn(30, 4), torch.randint(0, 3, (30,))
    before = copy.deepcopy(model)
    result = approx.unlearn(model, approx.create("ssd", alpha=0.5, lam=0.5, batch_size=7), (x[:5], y[:5]),
                            (x[5:], y[5:]), num_classes=3)
    assert result.steps == 0 and result.losses == {}
    assert result.samples == 5 + 30  # the two Fisher passes: forget, then retain + forget
    ratios = [p / b for p, b in zip(model.parameters(), before.parameters())]
    assert any((r < 1).any() for r in ratios), "nothing was dampened"
    assert all(((r > 0) & (r <= 1 + 1e-6)).all() for r in ratios), "SSD only shrinks weights"


def test_conv_transpose_swaps_the_spatial_axes_of_each_kernel_in_place():
    """A 2x2 kernel [[1, 2], [3, 4]] becomes [[1, 3], [2, 4]]; the Parameter object stays the same."""
    conv = nn.Conv2d(1, 1, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]))
    weight = conv.weight
    transpose_kernels([conv])
    assert conv.weight is weight
    assert conv.weight.tolist() == [[[[1.0, 3.0], [2.0, 4.0]]]]


def test_msg_marks_the_smallest_gradients():
    """|grad| = (0.5, 0.1, 0.3, 2.0), rate 0.5: round(2) smallest are positions 1 (0.1) and 2 (0.3)."""
    mask = smallest_gradients(torch.tensor([[0.5, -0.1], [0.3, -2.0]]), 0.5)
    assert mask.tolist() == [[False, True], [True, False]]


def test_msg_reinitialisation_draws_kaiming_fan_out():
    """Shape (64, 4, 3, 3): fan_out = 64 * 9 = 576, std = sqrt(2 / 576) = 0.0589."""
    draws = kaiming_fan_out(torch.Size((64, 4, 3, 3)), torch.Generator().manual_seed(0))
    assert draws.std().item() == pytest.approx(math.sqrt(2 / 576), rel=0.05)
    assert abs(draws.mean().item()) < 0.01


def test_msg_reinitialises_small_gradient_conv_weights_and_scales_the_others_gradients():
    """With as many retain as forget samples the retain sample is the whole retain set, so the gradient is
    that of CE(retain) - CE(forget), computed here independently; the 50% smallest |grad| are re-initialised
    and keep gradient scale 1, the rest keep their values and get scale 0.1."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 2), nn.Flatten(), nn.Linear(2 * 2 * 2, 3))
    x, y = torch.randn(8, 1, 3, 3), torch.randint(0, 3, (8,))
    reference = copy.deepcopy(model)
    (F.cross_entropy(reference(x[4:]), y[4:]) - F.cross_entropy(reference(x[:4]), y[:4])).backward()
    expected = smallest_gradients(reference[0].weight.grad, 0.5)
    method = approx.create("masked_small_gradients", init_rate=0.5, batch_size=8)
    method.prepare(model, (x[:4], y[:4]), (x[4:], y[4:]), torch.Generator().manual_seed(0))
    conv = model[0]
    assert torch.equal(conv.weight[~expected], reference[0].weight[~expected])
    assert not torch.equal(conv.weight[expected], reference[0].weight[expected])
    conv.weight.grad = torch.ones_like(conv.weight)
    model[2].weight.grad = torch.ones_like(model[2].weight)
    method.after_backward(model, Progress(0, 1, 0, 1, "retain"))
    assert torch.equal(conv.weight.grad, torch.where(expected, 1.0, 0.1))
    assert torch.equal(model[2].weight.grad, torch.ones_like(model[2].weight)), "only conv weights are scaled"


def test_neggrad_plus_weighs_retain_descent_by_alpha_and_forget_ascent_by_one_minus_alpha():
    """Zero weights, K = 4: every cross-entropy is ln 4, so the terms are 0.95 ln 4 and -0.05 ln 4."""
    model = nn.Linear(3, 4)
    nn.init.zeros_(model.weight), nn.init.zeros_(model.bias)
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 3, 0, 1])
    terms = approx.create("neggrad_plus").loss_terms(model, _batch((x[:2], y[:2]), (x[2:], y[2:]), 4),
                                                     Progress(0, 1, 0, 1, "joint"))
    assert terms["retain_ce"].item() == pytest.approx(0.95 * math.log(4))
    assert terms["forget_ce_ascent"].item() == pytest.approx(-0.05 * math.log(4))


def test_scrub_distillation_kl_at_temperature():
    """Student logits (0, 0), teacher (ln 3, 0). T = 1: p_t = (3/4, 1/4), p_s = (1/2, 1/2):
    KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.130812. T = 2: p_t = (sqrt3, 1) / (sqrt3 + 1) = (0.633975, 0.366025),
    KL = 0.036341, times T^2 = 0.145363."""
    student, teacher = torch.zeros(1, 2), torch.tensor([[math.log(3), 0.0]])
    assert distill_kl(student, teacher, 1.0).item() == pytest.approx(0.130812, abs=1e-6)
    assert distill_kl(student, teacher, 2.0).item() == pytest.approx(0.145363, abs=1e-6)


def test_scrub_ascends_on_forget_in_the_first_msteps_epochs_then_only_descends_on_retain():
    """Max phase: -KL(teacher || student) on forget. Min phase: gamma CE + alpha KL on retain. The student
    starts as the teacher, so after one changed weight the KLs are the hand-checked distill_kl values."""
    method = approx.create("scrub", msteps=2, kd_T=1.0, gamma=0.5, alpha=2.0)
    assert [[p.name for p in method.phases(e)] for e in range(3)] == [["max", "min"], ["max", "min"], ["min"]]
    assert method.phases(0)[0].over == "forget" and method.phases(0)[0].batch_size == 32
    teacher = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        teacher.weight.copy_(torch.tensor([[math.log(3), 0.0], [0.0, 0.0]]))  # x = (1, 0) -> logits (ln 3, 0)
    method.teacher = teacher
    student = nn.Linear(2, 2, bias=False)
    nn.init.zeros_(student.weight)  # logits (0, 0)
    x, y = torch.tensor([[1.0, 0.0]]), torch.tensor([1])
    maximise = method.loss_terms(student, _batch((x, y), (x[:0], y[:0]), 2), Progress(0, 1, 0, 3, "max"))
    assert maximise["forget_kl_ascent"].item() == pytest.approx(-0.130812, abs=1e-6)
    minimise = method.loss_terms(student, _batch((x[:0], y[:0]), (x, y), 2), Progress(0, 1, 2, 3, "min"))
    assert minimise["retain_ce"].item() == pytest.approx(0.5 * math.log(2))
    assert minimise["retain_kl"].item() == pytest.approx(2 * 0.130812, abs=1e-6)


def test_bad_teacher_loss_follows_each_samples_teacher_with_the_references_mean():
    """Student logits 0 (uniform). Forget row: teacher (ln 3, 0) -> KL = 0.130812; retain row: teacher (0, 0)
    -> KL = 0. kl_div 'mean' divides the summed elementwise terms by 2 rows x 2 classes: 0.130812 / 4."""
    loss = bad_teacher_loss(torch.zeros(2, 2), torch.tensor([[math.log(3), 0.0]]), torch.zeros(1, 2), 1.0)
    assert loss.item() == pytest.approx(0.130812 / 4, abs=1e-6)


def test_bad_teachers_random_teacher_is_seeded_fresh_and_leaves_the_global_generator_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    state = torch.random.get_rng_state()
    one, again, other = random_teacher(model, 1), random_teacher(model, 1), random_teacher(model, 2)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(one.parameters(), again.parameters()))
    assert not torch.equal(one[0].weight, other[0].weight) and not torch.equal(one[0].weight, model[0].weight)
    assert not any(p.requires_grad for p in one.parameters()) and not one.training

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.scale

    with pytest.raises(ValueError, match=r"through reset_parameters\(\), which 1 lack"):
        approx.create("bad_teacher").check_model(nn.Sequential(nn.Linear(2, 2), Scaled()))
