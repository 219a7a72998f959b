"""Metrics of an unlearned model, measured against retraining (see UNLEARNING.md).

All accuracy-like metrics are percentages:

- UA = 100 * (1 - accuracy on the forget set), RA = retain accuracy, TA = test accuracy.
- MIA-efficacy: an SVC (rbf, C=3) on the confidence in the true label, fitted with retain samples
  (as many as the test set) as members and test samples as non-members; efficacy is the share of
  forget samples it predicts to be **non-members** (the Unlearn-Sparse / SalUn polarity: a model
  that never saw the forget set scores high, the original model low).
- Avg. Gap: mean over (UA, MIA, RA, TA) of |method - retrain|.
- KL(retrain || method) and JS between the output distributions on the forget set (nats, mean over
  samples).
- Forget quality of the NeurIPS 2023 unlearning challenge, from N unlearned and N retrained models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sisa import aggregate

GAP_KEYS = ("UA", "MIA", "RA", "TA")
SPLITS = ("forget", "retain", "test")
_TINY = 1e-12


@dataclass
class Outputs:
    """What a model (or ensemble) outputs on each split: mean posterior, predicted labels, true labels."""

    probs: dict[str, torch.Tensor]
    """Split -> (samples, classes) output distribution (an ensemble's mean of softmax posteriors)."""
    predicted: dict[str, torch.Tensor]
    """Split -> (samples,) labels by the model's aggregation."""
    labels: dict[str, torch.Tensor]

    def confidence(self, split: str) -> np.ndarray:
        """Probability given to the true label, (samples,)."""
        return self.probs[split].gather(1, self.labels[split][:, None])[:, 0].numpy()

    def accuracy(self, split: str) -> float:
        return (self.predicted[split] == self.labels[split]).double().mean().item()


def model_device(model: nn.Module) -> torch.device:
    """Where a model's parameters (or, failing those, buffers) live; CPU for a model with neither."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The model's logits on `x` (CPU), each batch moved to the model's device first."""
    device = model_device(model)
    return torch.cat([model.eval()(b.to(device)).cpu() for b in x.split(batch_size)])


@torch.no_grad()
def outputs(models: Sequence[nn.Module], how: str, sets: dict[str, tuple[torch.Tensor, torch.Tensor]],
            batch_size: int = 2048) -> Outputs:
    """Run `models` (one, or an ensemble aggregated by `how`) on every split of `sets`.

    The models may live on any device; every input batch goes to its model's device and the
    outputs come back to the CPU, where the metrics are computed.
    """
    probs, predicted, labels = {}, {}, {}
    for split, (x, y) in sets.items():
        logits = torch.stack([_logits(m, x, batch_size) for m in models])
        probs[split] = logits.double().softmax(-1).mean(0)  # (samples, classes)
        predicted[split], labels[split] = aggregate(logits, how), y
    return Outputs(probs, predicted, labels)


def accuracy_metrics(out: Outputs) -> dict[str, float]:
    """UA, RA and TA in percent."""
    return {"UA": 100 * (1 - out.accuracy("forget")), "RA": 100 * out.accuracy("retain"),
            "TA": 100 * out.accuracy("test")}


def mia_efficacy(out: Outputs, seed: int = 0) -> float:
    """Share (%) of forget samples a confidence-based membership attack predicts to be non-members."""
    members, non_members, forget = out.confidence("retain"), out.confidence("test"), out.confidence("forget")
    count = min(len(members), len(non_members))
    if count == 0 or len(forget) == 0:
        raise ValueError("MIA-efficacy needs retain, test and forget samples")
    rng = np.random.default_rng(seed)
    members = rng.choice(members, count, replace=False)
    non_members = rng.choice(non_members, count, replace=False)
    features = np.concatenate([members, non_members])[:, None]
    is_member = np.r_[np.ones(count), np.zeros(count)]
    from sklearn.svm import SVC  # here: importing scikit-learn costs every command about 2 s of start-up

    attack = SVC(C=3, gamma="auto", kernel="rbf").fit(features, is_member)
    return 100 * (1 - attack.predict(forget[:, None]).mean())


def avg_gap(metrics: dict[str, float], reference: dict[str, float]) -> float:
    """Mean |metric - reference| over UA, MIA, RA and TA."""
    return float(np.mean([abs(metrics[k] - reference[k]) for k in GAP_KEYS]))


def divergences(reference: torch.Tensor, probs: torch.Tensor) -> dict[str, float]:
    """KL(reference || probs) and JS(reference, probs), each (samples, classes); means over samples, nats."""
    p, q = reference.double().clamp_min(_TINY), probs.double().clamp_min(_TINY)
    m = (p + q) / 2
    kl = (p * (p / q).log()).sum(-1)
    js = ((p * (p / m).log()).sum(-1) + (q * (q / m).log()).sum(-1)) / 2
    return {"KL": kl.mean().item(), "JS": js.mean().item()}


def logit_confidence(out: Outputs, split: str = "forget") -> np.ndarray:
    """log p_y - log(1 - p_y) of every sample of `split`: the challenge's per-sample statistic."""
    p = np.clip(out.confidence(split), _TINY, 1 - _TINY)
    return np.log(p) - np.log1p(-p)


def sample_epsilon(unlearned: np.ndarray, retrained: np.ndarray, delta: float = 1e-5, cap: float = 50.0) -> float:
    """Privacy degree of one forget sample from its statistic under N unlearned and N retrained models.

    Every threshold between the 2N values, in both directions, is an attack ("unlearned" above
    the threshold, or below it). An attack with FPR = FNR = 0 separates the two perfectly
    (epsilon = cap); one with exactly one zero rate is discarded, as in the challenge; otherwise
    epsilon = max(log(1 - delta - FPR) - log FNR, log(1 - delta - FNR) - log FPR). The sample's
    epsilon is the largest over attacks, at least 0 and at most `cap`.
    """
    values = np.concatenate([retrained, unlearned])
    is_unlearned = np.r_[np.zeros(len(retrained), bool), np.ones(len(unlearned), bool)]
    best = 0.0
    for threshold in np.unique(values):
        for says_unlearned in (values > threshold, values <= threshold):
            fpr = (says_unlearned & ~is_unlearned).sum() / len(retrained)
            fnr = (~says_unlearned & is_unlearned).sum() / len(unlearned)
            if fpr == 0 and fnr == 0:
                return cap
            if fpr == 0 or fnr == 0:
                continue
            # 1 - delta - rate <= 0 only when the other rate is ~0; such a bound says nothing.
            for a, b in ((fpr, fnr), (fnr, fpr)):
                if 1 - delta - a > 0:
                    best = max(best, math.log(1 - delta - a) - math.log(b))
    return min(best, cap)


def forget_quality(unlearned: np.ndarray, retrained: np.ndarray, ra_ratio: float = 1.0, ta_ratio: float = 1.0,
                   delta: float = 1e-5, bin_width: float = 0.5) -> float:
    """The challenge's forget-quality score (1 = indistinguishable from retraining, with retraining's accuracy).

    The mean bucket score is in [0, 1]; times the accuracy ratios it exceeds 1 where the unlearned
    models are more accurate than the retrained ones.

    Args:
        unlearned: (N models, forget samples) logit-scaled confidences of the unlearned models.
        retrained: the same for N retrained models.
        ra_ratio: mean retain accuracy of the unlearned models over that of the retrained ones.
        ta_ratio: the same for test accuracy.
        delta: the attacks' delta.
        bin_width: epsilon bucket width; bucket b scores 2^-b.
    """
    if unlearned.shape != retrained.shape or unlearned.ndim != 2 or unlearned.shape[0] < 2:
        raise ValueError("forget quality needs (models, samples) arrays of the same shape from at least 2 models each; "
                         f"got {unlearned.shape} and {retrained.shape}")
    epsilons = np.array([sample_epsilon(unlearned[:, i], retrained[:, i], delta) for i in range(unlearned.shape[1])])
    scores = 2.0 ** -np.floor(epsilons / bin_width)
    return float(scores.mean() * ra_ratio * ta_ratio)
