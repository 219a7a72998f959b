"""CT: transpose every convolution kernel, then fine-tune on the retain set.

A top entry of the NeurIPS 2023 Machine Unlearning challenge (Kaggle), as ported by the Deep
Unlearn benchmark (Cadet et al., "Deep Unlearn: Benchmarking Machine Unlearning for Image
Classification", arXiv 2410.01276; xcadet/deepunlearn munl/unlearning/kgltop5.py), which found it
among the best methods once tuned.
Swapping the two spatial axes of each Conv2d kernel (weight[o, i, h, w] -> weight[o, i, w, h])
scrambles the learned filters while keeping their statistics; fine-tuning on the retain set then
rebuilds what the retain set supports. Defaults from kgltop5.py: SGD lr 1e-3, momentum 0.9,
weight decay 5e-4, 3 epochs, batch 64, cosine decay stepped per epoch. Only square kernels can be
transposed in place, so a model with a non-square kernel is refused, as is one without Conv2d.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from approx.base import EpochMethod, Pair, Phase, Progress, UnlearnBatch
from approx.methods.common import conv_layers
from approx.registry import register

_WHAT = "it transposes their kernels"


@torch.no_grad()
def transpose_kernels(convs: list[nn.Conv2d]) -> None:
    """weight[o, i, h, w] <- weight[o, i, w, h] for every conv, in place (the Parameter objects stay)."""
    for conv in convs:
        conv.weight.copy_(conv.weight.transpose(2, 3).clone())


@register
@dataclass
class ConvTranspose(EpochMethod):
    """Kernel transposition, then fine-tuning on the retain set."""

    name = "conv_transpose"
    summary = "CT: swap the spatial axes of every Conv2d kernel, then fine-tune on the retain set"
    reference = ("NeurIPS 2023 unlearning challenge, via Cadet et al. (arXiv 2410.01276); "
                 "code: xcadet/deepunlearn munl/unlearning/kgltop5.py")
    uses = ("retain",)
    lr: float = 1e-3
    epochs: int = 3
    batch_size: int = 64
    schedule: str = "cosine"

    def check_model(self, model: nn.Module) -> None:
        odd = [name for name, m in model.named_modules()
               if isinstance(m, nn.Conv2d) and m.kernel_size[0] != m.kernel_size[1]]
        conv_layers(model, self.name, _WHAT)
        if odd:
            raise ValueError(f"conv_transpose transposes square kernels only; {', '.join(odd)} have non-square "
                             "ones: use masked_small_gradients or finetune instead")

    def phases(self, epoch: int) -> list[Phase]:
        return [Phase("retain", "retain")]

    def prepare(self, model: nn.Module, forget: Pair, retain: Pair, generator: torch.Generator) -> int:
        transpose_kernels(conv_layers(model, self.name, _WHAT))
        return 0

    def loss_terms(self, model: nn.Module, batch: UnlearnBatch, progress: Progress) -> dict[str, torch.Tensor]:
        return {"retain_ce": F.cross_entropy(model(batch.retain_x), batch.retain_y)}
