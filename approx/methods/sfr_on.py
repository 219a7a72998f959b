"""SFR-on: fast-slow weight updates in the remain-preserving manifold.

Huang et al., NeurIPS 2024, "Unified Gradient-Based Machine Unlearning with Remain Geometry
Enhancement" (K1nght/Unified-Unlearning-w-Remain-Geometry, Classification/unlearn/sfron.py and
main_random.py). The run is `iterations` iterations; every iteration takes a retain step on the
next batch of the whole retain set (cycled), and every `forget_every`-th iteration first takes a
forget step on the next forget batch (cycled):

- forget step: masked, sample-weighted ascent, scaled by `forget_scale` cosine-decayed over the
  iterations; sample weights eps_i = N_f (1/l_i^lam) / sum_j (1/l_j^lam) from detached losses;
  gradient clipping (`grad_clip`) on these steps only;
- retain step: descent on the retain batch, unclipped and unmasked;
- outer update after each iteration: theta <- theta_0 + alpha (theta - theta_0), theta_0 the
  weights at the iteration's start (the code's EMA with beta = alpha; 1 keeps theta).

The mask m = [(F_f + 1e-15) / (F_r + 1e-15) >= gamma] compares diagonal Fisher information on the
forget set and on the whole retain set at the starting weights (common.fisher_diagonal). The
learning rate follows a cosine over the iterations, both steps of an iteration sharing it.
Defaults from sfron.py (CIFAR-10) and main_random.py: SGD lr 0.01, momentum 0.9, weight decay
5e-4, 1500 iterations (300 forget + 1500 retain steps), forget every 5th, forget scale 25,
clip 7, lambda 0.5, gamma 1, alpha 1, batch 128. The paper's text multiplies eps by (1 - t/T)
(`decay_weights=true`) and speaks of a retain sample the size of the forget set
(`retain_subset=true`); the code does neither, and such a subset collapses the model on small
forget sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from approx.base import Pair, Phase, Progress, TrainingMethod, UnlearnBatch, cosine
from approx.methods.common import fisher_diagonal
from approx.registry import register
from approx.space import Budget, Domain, IntUniform, LogUniform

_EPS = 1e-15
"""The reference's guard against division by zero in the sample weights and the Fisher ratio."""


def sample_weights(losses: torch.Tensor, lam: float) -> torch.Tensor:
    """eps_i = N_f * (1 / (l_i^lam + 1e-15)) / sum_j (1 / (l_j^lam + 1e-15)), from detached losses."""
    inverse = 1 / (losses.detach().pow(lam) + _EPS)
    return inverse / inverse.sum() * len(losses)


def fisher_mask(forget: list[torch.Tensor], retain: list[torch.Tensor], gamma: float) -> list[torch.Tensor]:
    """m = [(F_forget + 1e-15) / (F_retain + 1e-15) >= gamma], elementwise."""
    return [((f + _EPS) / (r + _EPS) >= gamma).to(f.dtype) for f, r in zip(forget, retain)]


@register
@dataclass
class SFROn(TrainingMethod):
    """Fast masked forget ascent, slow retain descent, and an outer interpolation, per iteration."""

    name = "sfr_on"
    summary = "SFR-on: every iteration a retain step; every 5th first a masked, sample-weighted forget ascent"
    reference = "Huang et al., NeurIPS 2024; code: K1nght/Unified-Unlearning-w-Remain-Geometry unlearn/sfron.py"
    space: ClassVar[dict[str, Domain]] = {
        **TrainingMethod.space,
        # Iterations of one retain batch each, within 20% of the samples the original training drew
        # (as an epoch budget counts passes over the retain set; the forget steps come on top, as they
        # do in an epoch of NegGrad+). Counted in steps, a batch of 256 would buy 8x the data of 32.
        "iterations": Budget(1, 0.2, "samples", per="batch_size"),
        "forget_scale": LogUniform(1.0, 100.0),
        "forget_every": IntUniform(1, 10),
    }
    batch_size: int = 128
    schedule: str = "cosine"
    grad_clip: float = 7.0
    iterations: int = 1500
    """Iterations T; each is a retain step, preceded every `forget_every`-th by a forget step."""
    forget_every: int = 5
    """A forget step starts every this many iterations (from the first)."""
    forget_scale: float = 25.0
    """Scale of the forget ascent, cosine-decayed over the iterations."""
    lam: float = 0.5
    """lambda: exponent of the inverse-loss sample weights."""
    gamma: float = 1.0
    """Fisher-ratio threshold of the saliency mask."""
    alpha: float = 1.0
    """Outer step towards the end-of-iteration weights (1 keeps them)."""
    decay_weights: bool = False
    """Multiply the sample weights by (1 - t/T), as the paper's text does (the code does not)."""
    retain_subset: bool = False
    """Use a random retain subset the size of the forget set, as the paper's text says (the code does not)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.iterations < 1 or self.forget_every < 1:
            raise ValueError(f"sfr_on: iterations and forget_every must be >= 1, got {self.iterations}, "
                             f"{self.forget_every}")
        self.masks: list[torch.Tensor] = []
        self._start: list[torch.Tensor] = []

    @property
    def num_epochs(self) -> int:
        return self.iterations

    def phases(self, epoch: int) -> list[Phase]:
        retain = Phase("retain", "retain", steps=1, clip=False)
        return [Phase("forget", "forget", steps=1), retain] if epoch % self.forget_every == 0 else [retain]

    def retain_limit(self, num_forget: int, num_retain: int) -> int | None:
        return num_forget if self.retain_subset else None

    def prepare(self, model: nn.Module, forget: Pair, retain: Pair, generator: torch.Generator) -> int:
        self.masks = fisher_mask(fisher_diagonal(model, *forget, self.batch_size),
                                 fisher_diagonal(model, *retain, self.batch_size), self.gamma)
        self._start = [p.detach().clone() for p in model.parameters()]
        return len(forget[0]) + len(retain[0])

    def loss_terms(self, model: nn.Module, batch: UnlearnBatch, progress: Progress) -> dict[str, torch.Tensor]:
        if progress.phase == "retain":
            return {"retain_ce": F.cross_entropy(model(batch.retain_x), batch.retain_y)}
        losses = F.cross_entropy(model(batch.forget_x), batch.forget_y, reduction="none")
        weights = sample_weights(losses, self.lam)
        if self.decay_weights:
            weights = weights * (1 - progress.epoch_fraction)
        scale = self.forget_scale * cosine(progress.epoch_fraction)
        return {"forget_weighted_ascent": -scale * (weights * losses).mean()}

    def after_backward(self, model: nn.Module, progress: Progress) -> None:
        if progress.phase == "forget":
            for p, m in zip(model.parameters(), self.masks):
                if p.grad is not None:
                    p.grad.mul_(m)

    @torch.no_grad()
    def end_epoch(self, model: nn.Module, progress: Progress) -> None:
        if self.alpha == 1.0:  # the outer update keeps the weights: nothing to do
            return
        for p, start in zip(model.parameters(), self._start):
            p.copy_(start + self.alpha * (p - start))
            start.copy_(p)
