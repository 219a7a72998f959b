"""Frozen parts of a constituent: weights it uses but never trains, and never checkpoints.

A constituent trained with adapters (`sisa.trainable = "adapter"`) holds a pretrained backbone
whose weights stay fixed while small adapter layers inside it and a head on top train. Its model
factory wraps the backbone in `Frozen`, which:

- turns off gradients of every parameter the backbone holds when it is wrapped (adapters placed
  inside it afterwards keep theirs),
- keeps the backbone in eval mode whatever `train()` is called with, so its batch-norm statistics
  and dropout never change (a frozen backbone in training mode would still move its running means),
- leaves the backbone out of checkpoints: `trainable_state` holds every parameter that trains and
  every buffer outside a frozen part, and nothing else. The factory rebuilds the frozen part, so a
  checkpoint restores a constituent exactly over a freshly built model (`load_trainable`).

A model without a `Frozen` part is saved and optimised whole, exactly as before frozen parts existed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Frozen(nn.Module):
    """A part of a constituent that never trains: no gradients, always in eval mode, never checkpointed."""

    def __init__(self, module: nn.Module) -> None:
        """Wrap `module` and turn off the gradients of every parameter it holds now."""
        super().__init__()
        self.module = module
        module.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> Frozen:
        """Stay in eval mode: batch-norm statistics and dropout of a frozen part never change."""
        return super().train(False)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


def frozen_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the frozen parts: parameters without gradients and every buffer inside a `Frozen`."""
    keys: set[str] = set()
    for prefix, module in model.named_modules():
        if isinstance(module, Frozen):
            dot = f"{prefix}." if prefix else ""
            keys.update(dot + name for name, p in module.named_parameters() if not p.requires_grad)
            keys.update(dot + name for name, _ in module.named_buffers())
    return keys


def has_frozen_part(model: nn.Module) -> bool:
    """Whether the model holds a `Frozen` part."""
    return any(isinstance(m, Frozen) for m in model.modules())


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimizer updates: all of them but the frozen ones, in the model's order."""
    frozen = frozen_keys(model)
    return [p for name, p in model.named_parameters() if name not in frozen]


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint holds: the state dict without the frozen parts (the whole state dict when there are none)."""
    frozen = frozen_keys(model)
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if k not in frozen}


def load_trainable(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load a checkpoint's `trainable_state` into a freshly built model, whose frozen parts it leaves as built.

    Raises:
        ValueError: the state does not hold exactly the model's trainable entries (another architecture,
            or a checkpoint that holds frozen weights).
    """
    # Checked before loading: frozen tensors may be shared between constituents, and loading
    # copies into them in place.
    expected = set(model.state_dict()) - frozen_keys(model)
    lacking, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if lacking or extra:
        raise ValueError(f"checkpoint does not fit the model: lacks {lacking[:5]}, has unexpected {extra[:5]}")
    model.load_state_dict(state, strict=False)
    return model


def check_constituent(trainable: str, model: nn.Module) -> None:
    """Raise ValueError when a constituent does not match `sisa.trainable`.

    'adapter' needs a `Frozen` part (the backbone) and something that trains; 'all' trains every
    weight and 'head' trains a head on features computed outside the constituent, so neither has one.
    """
    frozen = has_frozen_part(model)
    if trainable == "adapter" and not frozen:
        raise ValueError("sisa.trainable='adapter' needs constituents with a frozen backbone (sisa.frozen.Frozen) "
                         "and adapters; this model has no frozen part")
    if trainable == "adapter" and not trainable_parameters(model):
        raise ValueError("sisa.trainable='adapter': the model has no parameter outside its frozen backbone to train")
    if trainable in ("all", "head") and frozen:
        raise ValueError(f"sisa.trainable={trainable!r} trains every weight of a constituent, but this model has a "
                         "frozen part; use sisa.trainable='adapter'")
