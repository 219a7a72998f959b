"""Run a model, or an ensemble of constituents, on labelled splits: what every score starts from.

An ensemble's output distribution is the mean of its constituents' softmax posteriors (kept as a
log for precision); its labels come from the configured aggregation (vote or mean). A single
model is the one-constituent case.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sisa import PREDICT_BATCH, aggregate
from sisa.inference import model_device


@dataclass
class Outputs:
    """What a model (or ensemble) outputs on each split."""

    log_probs: dict[str, torch.Tensor]
    """Split -> (samples, classes) log of the output distribution, float64."""
    predicted: dict[str, torch.Tensor]
    """Split -> (samples,) labels by the model's aggregation."""
    labels: dict[str, torch.Tensor]

    def accuracy(self, split: str) -> float:
        """Share of the split's samples predicted right."""
        return (self.predicted[split] == self.labels[split]).double().mean().item()

    def margins(self, split: str) -> np.ndarray:
        """log p_y - log(1 - p_y) per sample: for one model, z_y - logsumexp of the other logits."""
        log_p = self.log_probs[split]
        labels = self.labels[split][:, None]
        others = log_p.scatter(1, labels, -math.inf).logsumexp(1)
        return (log_p.gather(1, labels)[:, 0] - others).numpy()


@torch.no_grad()
def outputs(models: Sequence[nn.Module], how: str, sets: dict[str, tuple[torch.Tensor, torch.Tensor]],
            batch_size: int = PREDICT_BATCH) -> Outputs:
    """Run `models` (one, or an ensemble aggregated by `how`) on every split of `sets`.

    Each batch goes to the device of the model that reads it; outputs come back to the CPU.
    """
    log_probs, predicted, labels = {}, {}, {}
    for split, (x, y) in sets.items():
        logits = torch.stack([torch.cat([_run(m.eval(), b) for b in x.split(batch_size)]) for m in models])
        # log of the mean posterior: logsumexp over models of log-softmax, minus log(models)
        log_probs[split] = logits.double().log_softmax(-1).logsumexp(0) - math.log(len(models))
        predicted[split], labels[split] = aggregate(logits, how), y
    return Outputs(log_probs, predicted, labels)


def _run(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return model(batch.to(model_device(model))).cpu()
