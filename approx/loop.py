"""The one shared unlearning loop: device, batches per phase, optimizer, schedule, clipping, hooks, timing.

A run is `method.num_epochs` epochs; each epoch runs the method's phases in order (see
base.Phase); each step of a phase draws its batches, sums the method's loss terms, steps the
optimizer and calls the hooks. Everything random (batch order, subsets, in-step draws) comes from
generators seeded by `seed`, so a run is reproducible on CPU.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from approx.base import Pair, Phase, Progress, UnlearnBatch, UnlearningMethod

log = logging.getLogger(__name__)
OnStep = Callable[[Progress, dict[str, float]], None]


@dataclass
class UnlearnResult:
    """What one unlearning run did."""

    steps: int
    """Optimizer steps taken (fewer than planned when the method converged early)."""
    seconds: float
    samples: int
    """Samples processed (forget + retain, in `prepare` and in the steps), the method's cost in samples."""
    losses: dict[str, list[float]] = field(default_factory=dict)
    """Each loss term, once per step that returned it."""


class _Batches:
    """Sample picks for each phase: fresh one-pass permutations, or endless per-set cyclers."""

    def __init__(self, sizes: dict[str, int], generator: torch.Generator) -> None:
        self.sizes = {**sizes, "both": sizes["forget"] + sizes["retain"]}
        self.generator = generator
        self.cursors: dict[str, tuple[torch.Tensor, int]] = {}

    def _endless(self, name: str, batch_size: int) -> torch.Tensor:
        order, at = self.cursors.get(name, (torch.empty(0, dtype=torch.long), 0))
        if at >= len(order):  # a new pass: a fresh permutation (the last batch of a pass may be short)
            order, at = torch.randperm(self.sizes[name], generator=self.generator), 0
        self.cursors[name] = (order, at + batch_size)
        return order[at : at + batch_size]

    def steps(self, phase: Phase, batch_size: int) -> int:
        """Steps the phase takes."""
        return phase.steps if phase.steps is not None else math.ceil(self.sizes[phase.over] / batch_size)

    def picks(self, phase: Phase, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """Per step: set name -> positions in that set ('both' positions index forget, then retain)."""
        if phase.steps is None:
            mains = torch.randperm(self.sizes[phase.over], generator=self.generator).split(batch_size)
        else:
            mains = (self._endless(phase.over, batch_size) for _ in range(phase.steps))
        for main in mains:
            yield {phase.over: main, **{name: self._endless(name, batch_size) for name in phase.cycled}}


def _gather(picks: dict[str, torch.Tensor], forget: Pair, retain: Pair) -> tuple[Pair, Pair]:
    """The (forget, retain) batches of one step's picks; a set the step does not draw is empty."""
    chosen = {name: [] for name in ("forget", "retain")}
    for name, positions in picks.items():
        if name == "both":  # split the union's positions back into the two sets
            chosen["forget"].append(positions[positions < len(forget[0])])
            chosen["retain"].append(positions[positions >= len(forget[0])] - len(forget[0]))
        else:
            chosen[name].append(positions)
    out = []
    for name, (x, y) in (("forget", forget), ("retain", retain)):
        at = torch.cat(chosen[name]).to(x.device) if chosen[name] else torch.empty(0, dtype=torch.long, device=x.device)
        out.append((x[at], y[at]))
    return out[0], out[1]


def _check_sets(method: UnlearningMethod, forget: Pair, retain: Pair) -> None:
    if len(forget[0]) == 0:
        raise ValueError("the forget set is empty: give at least one sample to forget")
    if "retain" in method.uses and len(retain[0]) == 0:
        raise ValueError(f"{method.name} needs retain samples, and the retain set is empty")


def _subset(data: Pair, limit: int | None, generator: torch.Generator) -> Pair:
    if limit is None or limit >= len(data[0]):
        return data
    keep = torch.randperm(len(data[0]), generator=generator)[:limit]
    return data[0][keep], data[1][keep]


def planned_steps(method: UnlearningMethod, num_forget: int, num_retain: int) -> int:
    """Optimizer steps a run of `method` takes on sets of these sizes unless it converges early."""
    limit = method.retain_limit(num_forget, num_retain)
    return _count_steps(method, num_forget, num_retain if limit is None else min(limit, num_retain))


def _count_steps(method: UnlearningMethod, num_forget: int, num_retain: int) -> int:
    batches = _Batches({"forget": num_forget, "retain": num_retain}, torch.Generator())
    return sum(batches.steps(p, p.batch_size or method.batch_size)
               for epoch in range(method.num_epochs) for p in method.phases(epoch))


def unlearn(
    model: nn.Module,
    method: UnlearningMethod,
    forget: Pair,
    retain: Pair,
    num_classes: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
    on_step: OnStep | None = None,
) -> UnlearnResult:
    """Run `method` on `model` in place.

    Args:
        model: the trained model to unlearn from; it is moved to `device` and left in eval mode.
        method: a configured method (see registry.create).
        forget: (inputs, labels) of the samples to forget.
        retain: (inputs, labels) of the samples to keep.
        num_classes: number of classes of the task.
        seed: seeds batch order, subsets and in-step random draws.
        device: where to run.
        on_step: called after every step with the progress and the loss terms.
    """
    _check_sets(method, forget, retain)
    method.check_model(model)
    began = time.perf_counter()
    device = torch.device(device)
    model.to(device)
    generator = torch.Generator().manual_seed(seed)
    retain = _subset(retain, method.retain_limit(len(forget[0]), len(retain[0])), generator)
    forget = (forget[0].to(device), forget[1].to(device))
    retain = (retain[0].to(device), retain[1].to(device))
    result = UnlearnResult(steps=0, seconds=0.0, samples=method.prepare(model, forget, retain, generator))
    total = _count_steps(method, len(forget[0]), len(retain[0]))
    if total:
        optimizer = method.make_optimizer(model.parameters())
        method.train_mode(model)
        _run_steps(model, method, optimizer, forget, retain, num_classes, seed, total, generator, result, on_step)
    _check_finite(model, method, result.steps)
    result.seconds = time.perf_counter() - began
    model.eval()
    return result


def _check_finite(model: nn.Module, method: UnlearningMethod, steps: int) -> None:
    """Refuse a model whose weights or buffers are no longer finite.

    Each step checks its loss, but the loss is computed before the step's update: the last update
    (or one whose loss stayed finite while a weight overflowed, as gradient ascent with a large lr
    does) can leave inf or NaN weights behind, and such a model's outputs are NaN everywhere.
    """
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise FloatingPointError(f"{method.name}: {name} became non-finite after {steps} steps; lower lr")


def _run_steps(model: nn.Module, method: UnlearningMethod, optimizer: torch.optim.Optimizer, forget: Pair,
               retain: Pair, num_classes: int, seed: int, total: int, generator: torch.Generator,
               result: UnlearnResult, on_step: OnStep | None) -> None:
    """Every epoch's phases, step by step, until the plan ends or the method converges."""
    batches = _Batches({"forget": len(forget[0]), "retain": len(retain[0])}, generator)
    epochs = method.num_epochs
    for epoch in range(epochs):
        for phase in method.phases(epoch):
            for picks in batches.picks(phase, phase.batch_size or method.batch_size):
                progress = Progress(result.steps, total, epoch, epochs, phase.name)
                (fx, fy), (rx, ry) = _gather(picks, forget, retain)
                rng = torch.Generator().manual_seed(seed * 100003 + result.steps)
                values = _step(model, method, optimizer, phase, progress,
                               UnlearnBatch(fx, fy, rx, ry, num_classes, rng), result)
                if on_step is not None:
                    on_step(progress, values)
                if method.converged(progress):
                    log.debug("%s converged after %d of %d steps", method.name, result.steps, total)
                    return
        progress = Progress(result.steps, total, epoch, epochs)
        method.end_epoch(model, progress)
        if method.converged(progress):
            log.debug("%s converged after epoch %d of %d (%d of %d steps)", method.name, epoch + 1, epochs,
                      result.steps, total)
            return


def _step(model: nn.Module, method: UnlearningMethod, optimizer: torch.optim.Optimizer, phase: Phase,
          progress: Progress, batch: UnlearnBatch, result: UnlearnResult) -> dict[str, float]:
    """One optimizer step (scheduled learning rate, loss terms, backward, hooks, clipping); its loss terms."""
    for group in optimizer.param_groups:
        group["lr"] = method.learning_rate(progress)
    terms = method.loss_terms(model, batch, progress)
    loss = torch.stack(list(terms.values())).sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    method.after_backward(model, progress)
    clip = method.clip_norm(phase)
    if clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    method.after_step(model, progress)
    values = {name: term.item() for name, term in terms.items()}
    if not all(math.isfinite(v) for v in values.values()):
        raise FloatingPointError(f"{method.name}: loss became non-finite at step {progress.step}: {values}; lower lr")
    for name, value in values.items():
        result.losses.setdefault(name, []).append(value)
    result.samples += len(batch.forget_x) + len(batch.retain_x)
    result.steps += 1
    return values
