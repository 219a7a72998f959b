"""Per-example metrics of unlearning: pure functions on arrays of margins (see UNLEARNING.md, Metrics).

Every population metric compares a *candidate* population (models that unlearned, or the
originals, or half the oracles) with a *reference* population (oracles retrained without the
forget set), one statistic per model and sample. The statistic is the margin

    m = z_y - logsumexp_{j != y} z_j  =  log p_y - log(1 - p_y),

which is both KLoM's margin and the challenge's logit-scaled confidence (the two are equal).
Arrays are (models, samples).

- KLoM (Georgiev et al., arXiv 2410.23232; EasyDUB): per sample, KL(candidate || reference) between
  histograms of the margins on 20 shared bins over the pair's joint range (margins clipped to
  +-100), with empty reference bins raised to eps = 1e-5 where the candidate has mass. 0 for
  identical samples of margins; at most log(1/eps) = 11.51 for disjoint ones.
- U-LiRA (Hayes et al., arXiv 2403.01218): per sample, Gaussians fitted to shadow candidate and
  shadow reference margins (pooled variance); held-out target models are called "candidate" when
  the likelihood ratio favours it. Attack accuracy 0.5 = indistinguishable, 1 = always told apart.
- Forget quality (NeurIPS 2023 challenge, google-deepmind/unlearning_evaluation metric.py, ported
  to NumPy): per sample an epsilon from the best single- and double-threshold attacks, bucketed
  into a score 2^-floor(eps / 0.5).

Sanity checks (UA/RA/TA, MIA-efficacy, Avg. Gap, KL/JS) and the statistics (mean, std with
ddof 1, 95% intervals) are at the end.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from scipy import stats

KLOM_BINS = 20
KLOM_EPS = 1e-5
KLOM_CLIP = 100.0
FQ_DELTA = 1e-5
FQ_EPSILON_CAP = 50.0
FQ_THRESHOLDS_PER_UNIT = 100
"""Threshold grid density of the challenge's attacks: 100 thresholds per unit of margin."""
FQ_DOUBLE_BUFFER = 2.0
"""How far the challenge's double-threshold grid reaches beyond the peakier set (margin units)."""
FQ_NEAR_CONSTANT = 0.01
"""Spread ratio below which a sample gets the capped epsilon (one set is nearly constant)."""
FQ_BUCKET = 0.5
ULIRA_MIN_STD = 1e-6
"""Smallest standard deviation of a fitted Gaussian, so constant shadow margins still give a ratio."""


# --- KLoM --------------------------------------------------------------------------------------


def klom(candidate: np.ndarray, reference: np.ndarray, bins: int = KLOM_BINS, eps: float = KLOM_EPS,
         clip: float = KLOM_CLIP) -> np.ndarray:
    """Per-sample KL(candidate || reference) of margin histograms on shared bins, shape (samples,).

    Bins split [min, max] of the sample's clipped margins under both populations into `bins`
    equal parts, the last one closed (EasyDUB's digitize drops values equal to the maximum;
    here they count). A sample whose margins are all equal scores 0.
    """
    c, r = np.clip(candidate, -clip, clip), np.clip(reference, -clip, clip)
    low = np.minimum(c.min(0), r.min(0))
    high = np.maximum(c.max(0), r.max(0))
    width = np.where(high > low, (high - low) / bins, 1.0)
    p, q = _histogram(c, low, width, bins), _histogram(r, low, width, bins)
    q = np.where(p > 0, np.maximum(q, eps), q)
    ratio = np.divide(p, q, out=np.ones_like(p), where=p > 0)
    return (p * np.log(ratio)).sum(1)


def _histogram(values: np.ndarray, low: np.ndarray, width: np.ndarray, bins: int) -> np.ndarray:
    """Share of the models in each bin, per sample: (models, samples) -> (samples, bins)."""
    models, samples = values.shape
    index = np.clip(((values - low) / width).astype(np.int64), 0, bins - 1)
    flat = (np.arange(samples) * bins + index).ravel()
    return np.bincount(flat, minlength=samples * bins).reshape(samples, bins) / models


# --- U-LiRA ------------------------------------------------------------------------------------


def ulira(candidate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-sample accuracy of the U-LiRA attack telling candidate from reference models, (samples,).

    Each population is split in half: shadow models (the first half) give every sample a
    Gaussian per population: the sample's mean margin, and the population's variance pooled over
    samples (LiRA's fixed-variance variant, for few shadow models: a per-sample variance from a
    handful of models is mostly noise). Each target model (the second half) is called "candidate"
    when its margin's log-likelihood ratio is positive, "reference" when negative, and scores half
    a hit on a tie. The halves then swap roles and the two accuracies are averaged.

    Raises:
        ValueError: fewer than 4 models on a side (a shadow half needs 2 for a variance).
    """
    n = min(len(candidate), len(reference))
    if n < 4:
        raise ValueError(f"U-LiRA needs at least 4 models a side (2 shadow, 2 target), got {n}")
    half = n // 2
    folds = [(slice(0, half), slice(half, 2 * half)), (slice(half, 2 * half), slice(0, half))]
    return np.mean([_ulira_fold(candidate, reference, shadow, target) for shadow, target in folds], axis=0)


def _ulira_fold(candidate: np.ndarray, reference: np.ndarray, shadow: slice, target: slice) -> np.ndarray:
    fits = [(a[shadow].mean(0), max(math.sqrt(a[shadow].var(0, ddof=1).mean()), ULIRA_MIN_STD))
            for a in (candidate, reference)]

    def llr(x: np.ndarray) -> np.ndarray:  # log N(x; candidate fit) - log N(x; reference fit)
        (mc, sc), (mr, sr) = fits
        return (-0.5 * ((x - mc) / sc) ** 2 - math.log(sc)) - (-0.5 * ((x - mr) / sr) ** 2 - math.log(sr))

    def hits(scores: np.ndarray, sign: int) -> np.ndarray:
        return (np.sign(scores) == sign) + 0.5 * (scores == 0)

    hit = np.concatenate([hits(llr(candidate[target]), 1), hits(llr(reference[target]), -1)])
    return hit.mean(0)


# --- Forget quality (the challenge's metric.py) ------------------------------------------------


def single_threshold_rates(positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, FNR) of the attacks "positive if margin >= t" for t on the challenge's grid.

    The grid spans [min, max] of both sets with ceil(100 x range) thresholds. Only distinct
    pairs of rates are returned (epsilon is a maximum over attacks, so duplicates add nothing).
    """
    values = np.concatenate([positive, negative])
    low, high = values.min(), values.max()
    thresholds = np.linspace(low, high, math.ceil((high - low) * FQ_THRESHOLDS_PER_UNIT))
    missed = np.searchsorted(np.sort(positive), thresholds, "left")  # positives under t
    passed = len(negative) - np.searchsorted(np.sort(negative), thresholds, "left")  # negatives at or over t
    return _distinct_rates(passed, len(negative), missed, len(positive))


def double_threshold_rates(positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, FNR) of the attacks "the peakier set if l <= margin <= r" on the challenge's grid.

    The peakier set (smaller spread; on a tie, `negative`) is the predicted class inside the
    interval. Right ends: ceil(100 x range) points over [peaky max - 2, peaky max + 2]; for each,
    400 left ends over [r - w - 2, r - w + 2] with w the peakier set's spread. Distinct pairs only.
    """
    if np.ptp(positive) >= np.ptp(negative):
        positive, negative = negative, positive
    width = np.ptp(positive)
    low, high = positive.min() + width - FQ_DOUBLE_BUFFER, positive.max() + FQ_DOUBLE_BUFFER
    right = np.linspace(low, high, math.ceil((high - low) * FQ_THRESHOLDS_PER_UNIT))  # (R,)
    count = math.ceil(2 * FQ_DOUBLE_BUFFER * FQ_THRESHOLDS_PER_UNIT)
    left = np.linspace(right - width - FQ_DOUBLE_BUFFER, right - width + FQ_DOUBLE_BUFFER, count, axis=1)  # (R, L)
    # Rather than test all R x L intervals, find for each right end where each value leaves the
    # interval as the left end rises: value k is inside for left ends j < exits[:, k] (if <= r).
    # The sets inside, hence the rates, only change at those exits, so they are all seen at
    # j = 0 and at every exit: (R, values + 1) intervals instead of R x L.
    values = np.concatenate([positive, negative])
    grid = torch.from_numpy(np.ascontiguousarray(left))
    exits = torch.searchsorted(grid, torch.from_numpy(np.tile(values, (len(right), 1))), right=True).numpy()  # (R, values)
    starts = np.concatenate([np.zeros((len(right), 1), np.int64), exits], axis=1)  # (R, values + 1)
    inside = (values <= right[:, None])[:, None, :] & (exits[:, None, :] > starts[:, :, None])  # (R, starts, values)
    seen = starts < count
    true_pos, false_pos = inside[..., : len(positive)].sum(-1)[seen], inside[..., len(positive) :].sum(-1)[seen]
    return _distinct_rates(false_pos, len(negative), len(positive) - true_pos, len(positive))


def _distinct_rates(false_pos: np.ndarray, negatives: int, false_neg: np.ndarray,
                    positives: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (FPR, FNR) pairs from per-attack counts of false positives and false negatives."""
    pairs = np.flatnonzero(np.bincount(false_pos * (positives + 1) + false_neg))
    return pairs // (positives + 1) / negatives, pairs % (positives + 1) / positives


def epsilon_from_rates(fpr: np.ndarray, fnr: np.ndarray, delta: float = FQ_DELTA) -> float:
    """The largest epsilon any attack certifies: inf for a perfect attack, nan when none counts.

    An attack with FPR = FNR = 0 separates the sets perfectly (inf). One with exactly one zero
    rate is discarded, as too few models to trust. Otherwise epsilon = max(log(1 - delta - FPR)
    - log FNR, log(1 - delta - FNR) - log FPR), at least 0.
    """
    if np.any((fpr == 0) & (fnr == 0)):
        return math.inf
    valid = (fpr > 0) & (fnr > 0)
    if not valid.any():
        return math.nan
    fpr, fnr = fpr[valid], fnr[valid]
    with np.errstate(invalid="ignore", divide="ignore"):
        eps = np.fmax(np.log(1 - delta - fpr) - np.log(fnr), np.log(1 - delta - fnr) - np.log(fpr))
    return float(np.nanmax(np.maximum(eps, 0))) if not np.all(np.isnan(eps)) else math.nan


def sample_epsilon(unlearned: np.ndarray, retrained: np.ndarray, delta: float = FQ_DELTA,
                   cap: float = FQ_EPSILON_CAP) -> float:
    """Epsilon of one forget sample from its margins under the unlearned and the retrained models.

    The positive set is the one with the larger median (retrained only when strictly larger).
    If the smaller spread is under 1% of the larger, one set is nearly constant and the sample
    gets `cap` (the near-constant rule). Otherwise the best single- or double-threshold attack
    decides, capped at `cap`. Where the challenge's code fails (no attack counts, e.g. both
    sets constant and equal), the sample gets 0: nothing tells the sets apart.
    """
    if np.median(retrained) > np.median(unlearned):
        positive, negative = retrained, unlearned
    else:
        positive, negative = unlearned, retrained
    spreads = sorted((np.ptp(positive), np.ptp(negative)))
    if spreads[1] > 0 and spreads[0] / spreads[1] < FQ_NEAR_CONSTANT:
        return cap
    double, single = double_threshold_rates(positive, negative), single_threshold_rates(positive, negative)
    eps = epsilon_from_rates(np.concatenate([double[0], single[0]]), np.concatenate([double[1], single[1]]), delta)
    return 0.0 if math.isnan(eps) else min(eps, cap)


def forget_scores(unlearned: np.ndarray, retrained: np.ndarray) -> np.ndarray:
    """Per-sample bucket score of the challenge, (samples,): 2^-k for eps in [k/2, (k+1)/2).

    Only buckets below ceil(log(N - 1)) exist (N = unlearned models: what that many models can
    certify); an epsilon beyond them scores 0. With N = 2 there is no bucket at all.
    """
    if unlearned.shape[1:] != retrained.shape[1:] or len(unlearned) < 2 or len(retrained) < 2:
        raise ValueError("forget quality needs (models, samples) arrays over the same samples, at least 2 models each; "
                         f"got {unlearned.shape} and {retrained.shape}")
    buckets = int(math.ceil(math.log(len(unlearned) - 1)) / FQ_BUCKET)
    eps = np.array([sample_epsilon(unlearned[:, i], retrained[:, i]) for i in range(unlearned.shape[1])])
    bucket = np.floor(eps / FQ_BUCKET)
    return np.where(bucket < buckets, 0.5**bucket, 0.0)


def forget_quality(unlearned: np.ndarray, retrained: np.ndarray, ra_ratio: float = 1.0, ta_ratio: float = 1.0) -> float:
    """The challenge's final score: mean forget score x RA_u/RA_r x TA_u/TA_r (1 = like retraining)."""
    return float(forget_scores(unlearned, retrained).mean() * ra_ratio * ta_ratio)


# --- Sanity checks -----------------------------------------------------------------------------


def confidence(margins: np.ndarray) -> np.ndarray:
    """p_y from the margin log p_y - log(1 - p_y): the logistic function."""
    # A margin below about -709 overflows exp to inf, and 1 / (1 + inf) is exactly 0, the right
    # limit: the overflow is expected, so it is not reported to the user as a warning.
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-np.asarray(margins, np.float64)))


def mia_efficacy(retain_margins: np.ndarray, test_margins: np.ndarray, forget_margins: np.ndarray,
                 seed: int = 0) -> float:
    """Share (%) of forget samples a confidence attack calls non-members (high = looks unseen).

    An SVC (rbf, C=3, gamma 'auto') on the true-label confidence is fitted with retain samples
    (members, as many as test samples) against test samples (non-members), as Unlearn-Sparse does.
    """
    members, non_members, forget = (confidence(m) for m in (retain_margins, test_margins, forget_margins))
    count = min(len(members), len(non_members))
    if count == 0 or len(forget) == 0:
        raise ValueError("MIA-efficacy needs retain, test and forget samples")
    rng = np.random.default_rng(seed)
    features = np.concatenate([rng.choice(members, count, replace=False), rng.choice(non_members, count, replace=False)])
    from sklearn.svm import SVC  # here: importing scikit-learn costs every command about 2 s of start-up

    attack = SVC(C=3, gamma="auto", kernel="rbf").fit(features[:, None], np.r_[np.ones(count), np.zeros(count)])
    return float(100 * (1 - attack.predict(forget[:, None]).mean()))


def divergences(reference_log_probs: np.ndarray, log_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample KL(reference || model) and Jensen-Shannon between output distributions, nats.

    Both arrays are (samples, classes) log-probabilities.
    """
    p, q = np.exp(reference_log_probs), np.exp(log_probs)
    log_m = np.log((p + q) / 2)
    kl = (p * (reference_log_probs - log_probs)).sum(-1)
    js = ((p * (reference_log_probs - log_m)).sum(-1) + (q * (log_probs - log_m)).sum(-1)) / 2
    return kl, js


def avg_gap(means: dict[str, float], reference: dict[str, float],
            keys: tuple[str, ...] = ("ua", "mia", "ra", "ta")) -> float:
    """Mean |mean - reference mean| over the keys (the papers' gap of the means over trials)."""
    return float(np.mean([abs(means[k] - reference[k]) for k in keys]))


# --- Statistics --------------------------------------------------------------------------------


def mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, sample std with ddof 1, lower, upper) of a Student-t interval; std and bounds nan for n < 2."""
    values = np.asarray(values, np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf((1 + level) / 2, len(values) - 1)) * std / math.sqrt(len(values))
    return mean, std, mean - half, mean + half


def bootstrap_ci(per_sample: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], seed: int = 0,
                 resamples: int = 1000, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of `statistic` over samples drawn with replacement from `per_sample`.

    `statistic` maps a (resamples, samples) array to (resamples,) values, e.g. a row-wise P95.
    It covers the uncertainty from which samples were forgotten, not from the models' seeds.
    """
    per_sample = np.asarray(per_sample, np.float64)
    if len(per_sample) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = statistic(per_sample[rng.integers(0, len(per_sample), (resamples, len(per_sample)))])
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)
