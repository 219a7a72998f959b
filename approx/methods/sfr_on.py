"""SFR-on: fast-slow weight updates in the remain-preserving manifold.

Huang et al., NeurIPS 2024, "Unified Gradient-Based Machine Unlearning with Remain Geometry
Enhancement" (K1nght/Unified-Unlearning-w-Remain-Geometry). Steps come in cycles of one fast
forget step followed by `retain_steps` slow retain steps:
- fast step: masked, sample-weighted ascent on the forget batch, scaled by a cosine-decayed
  `forget_scale`; sample weights eps_i = (1 - t/T) * (1/l_i^lam) / sum_j (1/l_j^lam) * N_f,
  losses detached; the mask m = [F_forget / F_retain >= gamma] of diagonal Fisher information
  (squared gradients at the starting weights) applies to forget steps only;
- slow steps: descent on retain batches;
- outer update at the end of each cycle: theta <- theta - alpha * (theta - theta_r), theta the
  weights at the start of the cycle and theta_r those after it (alpha = 1 keeps theta_r).
Defaults from UNLEARNING.md: SGD momentum 0.9, wd 5e-4, lr 0.01 cosine over 1500 iterations,
forget scale 25, grad clip 7.0, lambda 0.5, gamma 1; the retain set drawn is as large as the
forget set. alpha has no documented default: 1.0 is used here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from approx.base import Progress, UnlearnBatch, UnlearningMethod
from approx.registry import register


def sample_weights(losses: torch.Tensor, lam: float, fraction: float) -> torch.Tensor:
    """eps_i = (1 - t/T) * (1 / l_i^lam) / sum_j (1 / l_j^lam) * N_f, from detached losses."""
    inverse = losses.detach().clamp_min(1e-12).pow(-lam)
    return (1 - fraction) * inverse / inverse.sum() * len(losses)


def fisher_diagonal(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 64) -> list[torch.Tensor]:
    """Mean over batches of squared gradients of the cross-entropy, one tensor per parameter."""
    totals = [torch.zeros_like(p) for p in model.parameters()]
    batches = 0
    for start in range(0, len(x), batch_size):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[start : start + batch_size]), y[start : start + batch_size]).backward()
        for total, p in zip(totals, model.parameters()):
            if p.grad is not None:
                total += p.grad.detach() ** 2
        batches += 1
    model.zero_grad(set_to_none=True)
    return [t / max(batches, 1) for t in totals]


def fisher_mask(forget: list[torch.Tensor], retain: list[torch.Tensor], gamma: float) -> list[torch.Tensor]:
    """m = [F_forget / F_retain >= gamma], elementwise (a zero retain Fisher counts as salient)."""
    return [(f >= gamma * r).to(f.dtype) for f, r in zip(forget, retain)]


@register
@dataclass
class SFROn(UnlearningMethod):
    """Fast masked forget ascent, slow retain descent, and an outer interpolation."""

    name = "sfr_on"
    summary = "SFR-on: fast masked, sample-weighted forget ascent; slow retain descent; outer update"
    driver = "retain"
    lr: float = 0.01
    schedule: str = "cosine"
    grad_clip: float = 7.0
    iterations: int = 1500
    """Total optimizer steps T (replaces epochs)."""
    retain_steps: int = 5
    """Slow retain steps after each fast forget step."""
    forget_scale: float = 25.0
    """Scale of the forget ascent, cosine-decayed over T."""
    lam: float = 0.5
    """lambda: exponent of the inverse-loss sample weights."""
    gamma: float = 1.0
    """Fisher-ratio threshold of the saliency mask."""
    alpha: float = 1.0
    """Outer step size towards the end-of-cycle weights."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.iterations < 1 or self.retain_steps < 1:
            raise ValueError("sfr_on: iterations and retain_steps must be >= 1")
        self.masks: list[torch.Tensor] = []
        self._cycle_start: list[torch.Tensor] = []

    def total_steps(self, num_forget: int, num_retain: int) -> int:
        return self.iterations

    def retain_limit(self, num_forget: int) -> int | None:
        return num_forget

    def _forget_step(self, progress: Progress) -> bool:
        return progress.step % (self.retain_steps + 1) == 0

    def step_uses(self, progress: Progress) -> tuple[str, ...]:
        return ("forget",) if self._forget_step(progress) else ("retain",)

    def prepare(self, model: nn.Module, forget, retain) -> None:  # noqa: ANN001
        self.masks = fisher_mask(fisher_diagonal(model, *forget), fisher_diagonal(model, *retain), self.gamma)

    def loss_terms(self, model: nn.Module, batch: UnlearnBatch, progress: Progress) -> dict[str, torch.Tensor]:
        if self._forget_step(progress):
            self._cycle_start = [p.detach().clone() for p in model.parameters()]
            losses = F.cross_entropy(model(batch.forget_x), batch.forget_y, reduction="none")
            weights = sample_weights(losses, self.lam, progress.fraction)
            scale = self.forget_scale * progress.cosine()
            return {"forget_weighted_ascent": -scale * (weights * losses).mean()}
        return {"retain_ce": F.cross_entropy(model(batch.retain_x), batch.retain_y)}

    def after_backward(self, model: nn.Module, progress: Progress) -> None:
        if self._forget_step(progress):
            for p, m in zip(model.parameters(), self.masks):
                if p.grad is not None:
                    p.grad.mul_(m)

    @torch.no_grad()
    def after_step(self, model: nn.Module, progress: Progress) -> None:
        cycle_end = (progress.step + 1) % (self.retain_steps + 1) == 0 or progress.step + 1 == progress.total_steps
        if cycle_end and self.alpha != 1.0:
            for p, start in zip(model.parameters(), self._cycle_start):
                p.copy_(start + self.alpha * (p - start))
