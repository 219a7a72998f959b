"""LoRA adapters inside a frozen backbone (`sisa.trainable = "adapter"`; Hu et al., ICLR 2022).

Each shard's constituent is the shared backbone, frozen (sisa.frozen.Frozen), with its last
`model.adapter_layers` Linear and Conv2d layers wrapped in a LoRA adapter, and a head on its
features. An adapted layer computes W x + B(A(x)): A maps to `model.adapter_rank` channels (for a
convolution, with the layer's own kernel, stride and padding), B maps back with a 1x1 map and starts
at zero, so every constituent starts as the frozen backbone plus a fresh head. Only A, B and the
head train, and only they are checkpointed.

LoRA was chosen over bottleneck adapters because it wraps layers wherever they are, whatever the
network's forward does: bottleneck adapters must be placed between blocks, which needs to know
the architecture. Grouped convolutions (depthwise) are left unadapted.

Constituents share the backbone's weight tensors (one copy in memory for all shards): each gets
its own module tree and Parameter objects over the same storage, so moving one to a device never
moves the others', and none of them ever writes to it (no gradients, eval mode).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from sisa import Frozen


class LoRA(nn.Module):
    """A frozen Linear or Conv2d layer plus a trainable low-rank update B(A(x)), B starting at zero."""

    def __init__(self, base: nn.Linear | nn.Conv2d, rank: int) -> None:
        super().__init__()
        self.base = base
        if isinstance(base, nn.Linear):
            self.down = nn.Linear(base.in_features, rank, bias=False)
            self.up = nn.Linear(rank, base.out_features, bias=False)
        else:
            self.down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding, base.dilation,
                                  bias=False, padding_mode=base.padding_mode)
            self.up = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x))


def share_weights(module: nn.Module) -> nn.Module:
    """A copy of `module`'s module tree whose parameters and buffers use the original's storage.

    Parameters get new Parameter objects (gradients off) over the same tensors, so that moving the
    copy to a device replaces only its own; buffers are shared as they are (never written in eval mode).
    """
    memo: dict[int, object] = {id(p): nn.Parameter(p.detach(), requires_grad=False) for p in module.parameters()}
    memo.update({id(b): b for b in module.buffers()})
    return copy.deepcopy(module, memo)


def adaptable_layers(module: nn.Module) -> list[str]:
    """Names of the Linear and ungrouped Conv2d layers, in registration order."""
    return [name for name, m in module.named_modules()
            if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)]


class AdaptedModel(nn.Module):
    """A constituent of adapter mode: the frozen backbone with LoRA adapters, and a head on its features."""

    def __init__(self, backbone: nn.Module, head: nn.Module, rank: int, layers: int) -> None:
        """Adapt a weight-sharing copy of `backbone` on its last `layers` adaptable layers (0 = all)."""
        super().__init__()
        self.backbone = Frozen(share_weights(backbone))  # gradients off before the adapters go in
        names = adaptable_layers(self.backbone.module)
        if not names:
            raise ValueError("sisa.trainable='adapter': the backbone has no Linear or Conv2d layer to adapt; "
                             "use sisa.trainable='head'")
        for name in names[-layers:] if layers else names:
            parent_name, _, leaf = name.rpartition(".")
            parent = self.backbone.module.get_submodule(parent_name) if parent_name else self.backbone.module
            setattr(parent, leaf, LoRA(getattr(parent, leaf), rank))
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))  # (N, *input) -> (N, *features) -> (N, classes)
