"""Running trained models on inputs when they only predict: test outputs, predictions, a service's answers.

On CPU, convolutions and max-pooling run several times faster on channels-last (NHWC) tensors
than on PyTorch's default NCHW: at one thread the small CNN's forward pass over the 10,000 MNIST
test images takes 1.2 s channels-last against 3.5 s (its max-pooling alone is most of the NCHW
time). The outputs agree up to rounding (1e-6 on the logits of that CNN). Only inference uses the
layout: training keeps the default one, because the layout changes the rounding of every step and
so the trained bits that an exact deletion must reproduce from scratch.

A model opts in with a class attribute `channels_last_inference = True`, since a forward pass
that calls `.view` on an activation fails on a channels-last tensor; models that do not say so
(a user's own, say) keep the default layout.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

PREDICT_BATCH = 256
"""Samples per forward pass when a model only predicts. On CPU larger batches are slower per
sample: at 1,024-2,048 the small CNN's activations (2,048 x 32 x 28 x 28 floats, 200 MB)
overflow the caches, and a pass over a test set takes 1.5-2 times as long as at 256."""


class Interrupted(Exception):
    """`outputs` was told to stop before a batch."""


def for_inference(model: nn.Module) -> nn.Module:
    """`model` in eval mode, its 4-D weights laid out channels-last when it opts in and runs on CPU.

    Converts in place and returns the model: call it on a model that only predicts from now on
    (one loaded for it), never on one that will train.
    """
    model.eval()
    if _channels_last(model):
        model.to(memory_format=torch.channels_last)
    return model


@torch.no_grad()
def outputs(model: nn.Module, x: torch.Tensor, batch_size: int = PREDICT_BATCH,
            interrupt: Callable[[], bool] | None = None) -> torch.Tensor:
    """The outputs of a model made ready by `for_inference` on inputs x, in batches, on the CPU.

    Each batch goes to the model's device. `interrupt` is asked before each batch; True raises
    Interrupted.
    """
    device, layout = model_device(model), _channels_last(model)
    out = []
    for batch in x.split(batch_size):
        if interrupt is not None and interrupt():
            raise Interrupted
        batch = batch.to(device)
        if layout and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        out.append(model(batch).cpu())
    return torch.cat(out)


def model_device(model: nn.Module) -> torch.device:
    """Where a model's parameters (or, failing those, buffers) live; CPU for a model with neither."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _channels_last(model: nn.Module) -> bool:
    # Measured on CPU only; accelerators keep their default layout.
    return bool(getattr(model, "channels_last_inference", False)) and model_device(model).type == "cpu"
