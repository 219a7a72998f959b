"""MSG: re-initialise the convolution weights with the smallest unlearning gradients, then fine-tune.

A top entry of the NeurIPS 2023 Machine Unlearning challenge (Kaggle), as ported by the Deep
Unlearn benchmark (Cadet et al., arXiv 2410.01276; xcadet/deepunlearn
munl/unlearning/kgltop2.py), which found it among the best methods once tuned. Before training,
the gradient of CE(retain sample) - CE(forget) is accumulated over batches of a random retain
sample as large as the forget set and over the forget set. In every Conv2d, the `init_rate` share
of weights with the smallest |gradient| is re-initialised (Kaiming normal, fan-out, ReLU gain);
fine-tuning on the retain set then scales the gradient of those weights by 1 and of the conv's
other weights by `kept_grad_scale` (other layers are unscaled). Defaults from kgltop2.py: init
rate 0.3, kept-weight scale 0.1, SGD lr 1e-3, momentum 0.9, weight decay 5e-4, 5 epochs, batch 64,
the learning rate rising linearly for (E + 1) // 2 epochs and falling after ('warmup_decay').
The reference leaves the model's mode unset while it takes the gradients; here it is in eval mode,
so the probe does not move batch-norm statistics. A model without Conv2d is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from approx.base import EpochMethod, Pair, Phase, Progress, UnlearnBatch
from approx.methods.common import conv_layers
from approx.registry import register
from approx.space import Domain, Uniform

_WHAT = "it re-initialises their weights with the smallest gradients"


def smallest_gradients(grad: torch.Tensor, rate: float) -> torch.Tensor:
    """Boolean mask of the round(rate * numel) entries with the smallest |grad| (ties by position)."""
    chosen = torch.argsort(grad.abs().flatten(), stable=True)[: round(rate * grad.numel())]
    mask = torch.zeros(grad.numel(), dtype=torch.bool, device=grad.device)
    mask[chosen] = True
    return mask.view_as(grad)


def kaiming_fan_out(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """N(0, 2 / fan_out) on CPU, fan_out = out_channels * kernel area: kaiming_normal_(mode='fan_out', 'relu')."""
    fan_out = shape[0] * math.prod(shape[2:])
    return torch.randn(shape, generator=generator) * math.sqrt(2.0 / fan_out)


@register
@dataclass
class MaskedSmallGradients(EpochMethod):
    """Re-initialise small-gradient conv weights, then fine-tune with their gradients favoured."""

    name = "masked_small_gradients"
    summary = "MSG: re-init the 30% of conv weights with the smallest unlearning gradient; fine-tune on retain"
    reference = ("NeurIPS 2023 unlearning challenge, via Cadet et al. (arXiv 2410.01276); "
                 "code: xcadet/deepunlearn munl/unlearning/kgltop2.py")
    space: ClassVar[dict[str, Domain]] = {**EpochMethod.space, "init_rate": Uniform(0.05, 0.9)}
    lr: float = 1e-3
    epochs: int = 5
    batch_size: int = 64
    schedule: str = "warmup_decay"
    init_rate: float = 0.3
    """Share of each conv's weights re-initialised (those with the smallest |gradient|)."""
    kept_grad_scale: float = 0.1
    """Gradient scale of a conv's weights that were not re-initialised (re-initialised ones get 1)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.init_rate <= 1 or self.kept_grad_scale < 0:
            raise ValueError(f"masked_small_gradients: init_rate must be in [0, 1] and kept_grad_scale >= 0; got "
                             f"{self.init_rate}, {self.kept_grad_scale}")
        self.scales: list[tuple[nn.Parameter, torch.Tensor]] = []

    def check_model(self, model: nn.Module) -> None:
        conv_layers(model, self.name, _WHAT)

    def phases(self, epoch: int) -> list[Phase]:
        return [Phase("retain", "retain")]

    def _unlearning_gradients(self, model: nn.Module, forget: Pair, retain: Pair, generator: torch.Generator) -> int:
        """Accumulate the gradient of CE(retain sample) - CE(forget) in .grad; the samples it used."""
        sample = torch.randperm(len(retain[0]), generator=generator)[: len(forget[0])].to(retain[0].device)
        model.eval()
        model.zero_grad(set_to_none=True)
        for (x, y), sign in (((retain[0][sample], retain[1][sample]), 1.0), (forget, -1.0)):
            for start in range(0, len(x), self.batch_size):
                (sign * F.cross_entropy(model(x[start : start + self.batch_size]), y[start : start + self.batch_size])
                 ).backward()
        return len(sample) + len(forget[0])

    @torch.no_grad()
    def _reinitialise(self, convs: list[nn.Conv2d], generator: torch.Generator) -> None:
        self.scales = []
        for conv in convs:
            grad = conv.weight.grad if conv.weight.grad is not None else torch.zeros_like(conv.weight)
            mask = smallest_gradients(grad, self.init_rate)
            fresh = kaiming_fan_out(conv.weight.shape, generator).to(conv.weight.device, conv.weight.dtype)
            conv.weight.copy_(torch.where(mask, fresh, conv.weight))
            self.scales.append((conv.weight, torch.where(mask, 1.0, self.kept_grad_scale).to(conv.weight.dtype)))

    def prepare(self, model: nn.Module, forget: Pair, retain: Pair, generator: torch.Generator) -> int:
        samples = self._unlearning_gradients(model, forget, retain, generator)
        self._reinitialise(conv_layers(model, self.name, _WHAT), generator)
        model.zero_grad(set_to_none=True)
        return samples

    def after_backward(self, model: nn.Module, progress: Progress) -> None:
        for weight, scale in self.scales:
            if weight.grad is not None:
                weight.grad.mul_(scale)

    def loss_terms(self, model: nn.Module, batch: UnlearnBatch, progress: Progress) -> dict[str, torch.Tensor]:
        return {"retain_ce": F.cross_entropy(model(batch.retain_x), batch.retain_y)}
