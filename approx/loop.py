"""The one shared unlearning loop: device, optimizer, schedule, clipping, hooks, timing, callbacks."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from approx.base import Progress, UnlearnBatch, UnlearningMethod

log = logging.getLogger(__name__)
Pair = tuple[torch.Tensor, torch.Tensor]


@dataclass
class UnlearnResult:
    """What one unlearning run did."""

    steps: int
    seconds: float
    samples: int
    """Samples processed (forget + retain), the method's cost in samples."""
    losses: dict[str, list[float]] = field(default_factory=dict)
    """Each loss term per step."""


class _Cycler:
    """Endless batches of a set: a fresh seeded permutation on every pass."""

    def __init__(self, data: Pair, batch_size: int, generator: torch.Generator) -> None:
        self.x, self.y = data
        self.batch_size, self.generator = batch_size, generator
        self.order, self.at = torch.empty(0, dtype=torch.long), 0

    def next(self) -> Pair:
        if len(self.x) == 0:
            return self.x, self.y
        if self.at >= len(self.order):
            self.order, self.at = torch.randperm(len(self.x), generator=self.generator), 0
        batch = self.order[self.at : self.at + self.batch_size]
        self.at += self.batch_size
        return self.x[batch], self.y[batch]


def _check_sets(method: UnlearningMethod, forget: Pair, retain: Pair) -> None:
    if len(forget[0]) == 0:
        raise ValueError("the forget set is empty: give at least one sample to forget")
    if "retain" in method.uses and len(retain[0]) == 0:
        raise ValueError(f"{method.name} needs retain samples, and the retain set is empty")


def unlearn(
    model: nn.Module,
    method: UnlearningMethod,
    forget: Pair,
    retain: Pair,
    num_classes: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
    on_step: Callable[[Progress, dict[str, float]], None] | None = None,
) -> UnlearnResult:
    """Run `method` on `model` in place.

    Args:
        model: the trained model to unlearn from.
        method: a configured method (see registry.create).
        forget: (inputs, labels) of the samples to forget.
        retain: (inputs, labels) of the samples to keep.
        num_classes: number of classes of the task.
        seed: seeds batch order and in-step random draws.
        device: where to run.
        on_step: called after every step with the progress and the loss terms.
    """
    _check_sets(method, forget, retain)
    began = time.perf_counter()
    device = torch.device(device)
    model.to(device)
    generator = torch.Generator().manual_seed(seed)
    limit = method.retain_limit(len(forget[0]))
    if limit is not None and limit < len(retain[0]):
        keep = torch.randperm(len(retain[0]), generator=generator)[:limit]
        retain = (retain[0][keep], retain[1][keep])
    forget = (forget[0].to(device), forget[1].to(device))
    retain = (retain[0].to(device), retain[1].to(device))
    method.prepare(model, forget, retain)
    optimizer = torch.optim.SGD(model.parameters(), lr=method.lr, momentum=method.momentum,
                                weight_decay=method.weight_decay)
    total = method.total_steps(len(forget[0]), len(retain[0]))
    steps_per_epoch = max(1, math.ceil(total / method.epochs))
    cyclers = {"forget": _Cycler(forget, method.batch_size, generator),
               "retain": _Cycler(retain, method.batch_size, generator)}
    empty = forget[0][:0], forget[1][:0]
    result = UnlearnResult(steps=total, seconds=0.0, samples=0)
    model.train()
    if method.bn_eval:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    for step in range(total):
        progress = Progress(step, total, step // steps_per_epoch, method.epochs)
        if method.schedule == "cosine":
            for group in optimizer.param_groups:
                group["lr"] = method.lr * progress.cosine()
        uses = method.step_uses(progress)
        fx, fy = cyclers["forget"].next() if "forget" in uses else empty
        rx, ry = cyclers["retain"].next() if "retain" in uses else empty
        batch = UnlearnBatch(fx, fy, rx, ry, num_classes, torch.Generator().manual_seed(seed * 100003 + step))
        terms = method.loss_terms(model, batch, progress)
        loss = torch.stack(list(terms.values())).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        method.after_backward(model, progress)
        if method.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), method.grad_clip)
        optimizer.step()
        method.after_step(model, progress)
        values = {name: term.item() for name, term in terms.items()}
        for name, value in values.items():
            result.losses.setdefault(name, []).append(value)
        if not all(math.isfinite(v) for v in values.values()):
            raise FloatingPointError(f"{method.name}: loss became non-finite at step {step}: {values}; lower lr")
        result.samples += len(fx) + len(rx)
        if on_step is not None:
            on_step(progress, values)
        if method.converged(progress):
            log.info("%s converged after %d of %d steps", method.name, step + 1, total)
            result.steps = step + 1
            break
    result.seconds = time.perf_counter() - began
    model.eval()
    return result
