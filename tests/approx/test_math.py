"""Each method's math against numbers derived by hand."""

from __future__ import annotations

import math

import torch
from torch import nn

import approx
from approx.base import Progress
from approx.methods.common import random_wrong_labels
from approx.methods.salun import saliency_masks
from approx.methods.sfr_on import fisher_mask, sample_weights
from approx.methods.ugradsl import nls_targets


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


def test_sfr_on_sample_weights():
    """losses (1, 4), lambda 0.5: 1/l^0.5 = (1, 0.5), sum 1.5; N_f = 2; t/T = 0.25:
    eps = 0.75 * (1, 0.5) / 1.5 * 2 = (1.0, 0.5). Low-loss samples weigh more."""
    weights = sample_weights(torch.tensor([1.0, 4.0]), lam=0.5, fraction=0.25)
    assert torch.allclose(weights, torch.tensor([1.0, 0.5]))


def test_sfr_on_mask_keeps_weights_whose_forget_fisher_dominates():
    """F_f = (2, 1, 0.5), F_r = (1, 1, 1), gamma 1 -> (1, 1, 0); gamma 1.5 -> (1, 0, 0)."""
    forget, retain = [torch.tensor([2.0, 1.0, 0.5])], [torch.ones(3)]
    assert fisher_mask(forget, retain, 1.0)[0].tolist() == [1.0, 1.0, 0.0]
    assert fisher_mask(forget, retain, 1.5)[0].tolist() == [1.0, 0.0, 0.0]


def test_salun_mask_keeps_the_top_fraction_of_forget_gradients():
    """Model y = w . x with w = 0: the gradient of the loss is linear in x, so for x = (4, 3, 2, 1)
    |grad| ranks w1 > w2 > w3 > w4 and the top 50% is (w1, w2)."""
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
    assert abs(sum(int(m.sum()) for m in method.masks) / sum(m.numel() for m in method.masks) - 0.3) < 0.02


def test_random_wrong_labels_never_return_the_true_label():
    labels = torch.arange(10).repeat(100)
    wrong = random_wrong_labels(labels, 10, torch.Generator().manual_seed(0))
    assert not (wrong == labels).any() and set(wrong.tolist()) == set(range(10))


def test_cosine_progress_factor():
    """0.5 * (1 + cos(pi * t/T)): t=0 -> 1, t=T/2 -> 0.5."""
    assert Progress(0, 10, 0, 1).cosine() == 1.0
    assert math.isclose(Progress(5, 10, 0, 1).cosine(), 0.5)
