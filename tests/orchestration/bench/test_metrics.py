"""Per-example metrics on hand-built arrays: KLoM, U-LiRA, the challenge's forget quality, sanity checks."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from orchestration.bench import metrics

DELTA = 1e-5


def column(*values: float) -> np.ndarray:
    """One sample's margins under several models: shape (models, 1)."""
    return np.array(values, float)[:, None]


# --- KLoM ---


def test_klom_of_identical_populations_is_zero():
    margins = np.random.default_rng(0).normal(size=(8, 50))
    assert np.array_equal(metrics.klom(margins, margins.copy()), np.zeros(50))


def test_klom_of_disjoint_populations_is_its_maximum_log_one_over_eps():
    # All candidate mass in one bin where the reference has none: 1 * ln(1 / 1e-5).
    assert metrics.klom(np.zeros((6, 3)), np.full((6, 3), 10.0)) == pytest.approx([math.log(1e5)] * 3)


def test_klom_matches_a_histogram_worked_by_hand():
    # Range [0, 10], 20 bins of 0.5. Candidate: half at 0 (bin 0), half at 10 (bin 19, closed).
    # Reference: 3/4 in bin 0, 1/4 in bin 19. KL = 1/2 ln((1/2)/(3/4)) + 1/2 ln((1/2)/(1/4)) = 1/2 ln(4/3).
    assert metrics.klom(column(0, 0, 10, 10), column(0, 0, 0, 10)) == pytest.approx([0.5 * math.log(4 / 3)])


def test_klom_counts_margins_equal_to_the_maximum():
    # Candidate 0 and 10; reference 0 and 5 (bin 10). The candidate's 10 sits in the last bin, where the
    # reference is empty: 1/2 ln((1/2)/(1/2)) + 1/2 ln((1/2)/1e-5) = 1/2 ln(5e4).
    assert metrics.klom(column(0, 10), column(0, 5)) == pytest.approx([0.5 * math.log(5e4)])


def test_klom_clips_margins_to_plus_minus_100():
    assert metrics.klom(column(500, 500), column(100, 100)) == pytest.approx([0.0])


# --- U-LiRA ---


def test_ulira_of_identical_populations_is_one_half():
    margins = np.random.default_rng(1).normal(size=(8, 40))
    assert np.array_equal(metrics.ulira(margins, margins.copy()), np.full(40, 0.5))


def test_ulira_of_disjoint_populations_is_one():
    rng = np.random.default_rng(2)
    assert np.array_equal(metrics.ulira(rng.normal(size=(8, 40)) + 50, rng.normal(size=(8, 40))), np.ones(40))


def test_ulira_matches_a_case_worked_by_hand():
    """Models 1-2 are shadows and 3-4 targets, then the other way round.

    Fold 1: candidate shadows 0, 2 (mean 1, var 2), reference shadows 6, 8 (mean 7, var 2): the
    candidate target 7 is called reference (wrong), 0, 8 and 6 are right: 3/4. Fold 2: candidate
    shadows 0, 7 (mean 3.5, var 24.5), reference shadows 8, 6 (mean 7, var 2); log-likelihood
    ratios at 0, 2, 6, 8 are +10.75, +4.95, -1.13, -1.42: all right. Mean (3/4 + 1) / 2 = 7/8.
    """
    assert metrics.ulira(column(0, 2, 0, 7), column(6, 8, 8, 6)) == pytest.approx([0.875])


def test_ulira_needs_four_models_a_side():
    with pytest.raises(ValueError, match="at least 4 models"):
        metrics.ulira(np.zeros((3, 2)), np.zeros((3, 2)))


# --- Forget quality ---


def test_single_threshold_epsilon_of_a_case_worked_by_hand():
    """Retrained 0,1,2,3 vs unlearned 1.5,2.5,3.5,4.5 (positive: the larger median). The best
    threshold, in (2, 2.5], misses the unlearned 1.5 (FNR 1/4) and passes the retrained 3 (FPR 1/4):
    eps = ln(1 - d - 1/4) - ln(1/4). No interval of the double family does better."""
    unlearned, retrained = np.array([1.5, 2.5, 3.5, 4.5]), np.array([0.0, 1, 2, 3])
    expected = math.log(0.75 - DELTA) - math.log(0.25)
    assert metrics.epsilon_from_rates(*metrics.single_threshold_rates(unlearned, retrained)) == pytest.approx(expected)
    assert metrics.sample_epsilon(unlearned, retrained) == pytest.approx(expected)


def test_double_threshold_catches_a_peaky_set_inside_a_wide_one():
    """Unlearned 4.5..6 sit between retrained 0, 1 and 9, 10. One threshold does at best
    FPR 1/2, FNR 1/4 (eps = ln(1/2 - d) - ln(1/4) ~ ln 2); the interval [4, 7] holds every
    unlearned and no retrained margin: a perfect attack, so eps is the cap, 50."""
    unlearned, retrained = np.array([4.5, 5, 5.5, 6]), np.array([0.0, 1, 9, 10])
    single = metrics.epsilon_from_rates(*metrics.single_threshold_rates(unlearned, retrained))
    assert single == pytest.approx(math.log(0.5 - DELTA) - math.log(0.25))
    assert metrics.epsilon_from_rates(*metrics.double_threshold_rates(unlearned, retrained)) == math.inf
    assert metrics.sample_epsilon(unlearned, retrained) == 50.0


def test_near_constant_rule_gives_the_cap_below_a_one_percent_spread_ratio():
    retrained = np.array([0.0, 1, 2, 3])  # spread 3
    assert metrics.sample_epsilon(np.full(4, 3.0), retrained) == 50.0  # ratio 0
    assert metrics.sample_epsilon(np.array([3, 3.001, 3, 3]), retrained) == 50.0  # ratio 0.00033
    # Ratio 0.033: no rule. Single thresholds all have a zero rate; the best interval holds the
    # three unlearned 3s and the retrained 3 but not 3.1: FNR 1/4, FPR 1/4, eps = ln 3 (less d).
    assert metrics.sample_epsilon(np.array([3, 3.1, 3, 3]), retrained) == pytest.approx(
        math.log(0.75 - DELTA) - math.log(0.25))


def test_constant_sets_are_indistinguishable_when_equal_and_perfectly_apart_when_not():
    assert metrics.sample_epsilon(np.full(4, 3.0), np.full(4, 3.0)) == 0.0
    assert metrics.sample_epsilon(np.full(4, 3.0), np.full(4, 5.0)) == 50.0


def test_forget_scores_bucket_epsilons_below_what_n_models_can_certify():
    """N = 4: ceil(ln 3) = 2, so buckets [0, .5), [.5, 1), [1, 1.5), [1.5, 2) score 1, 1/2, 1/4, 1/8.
    Sample 0: eps ln 3 = 1.0986 -> 1/4. Sample 1: identical sets, eps 0 -> 1. Sample 2: eps 50 -> 0."""
    retrained = np.array([[0.0, 0, 0], [1, 1, 1], [9, 2, 9], [10, 3, 10]])
    unlearned = np.array([[1.5, 0, 4.5], [2.5, 1, 5], [3.5, 2, 5.5], [4.5, 3, 6]])
    retrained[:, 0] = [0, 1, 2, 3]
    assert metrics.forget_scores(unlearned, retrained) == pytest.approx([0.25, 1.0, 0.0])
    assert metrics.forget_quality(unlearned, retrained, ra_ratio=0.9, ta_ratio=0.5) == pytest.approx(1.25 / 3 * 0.45)


def test_forget_scores_with_two_models_have_no_bucket():
    # ceil(ln 1) = 0: not one bucket, so even identical sets score 0.
    assert np.array_equal(metrics.forget_scores(np.zeros((2, 3)), np.zeros((2, 3))), np.zeros(3))


def _brute_force_rates(positive: np.ndarray, negative: np.ndarray) -> set[tuple[int, int]]:
    """Every interval of the challenge's double-threshold grid, tested one by one."""
    if np.ptp(positive) >= np.ptp(negative):
        positive, negative = negative, positive
    width = np.ptp(positive)
    low, high = positive.min() + width - 2, positive.max() + 2
    right = np.linspace(low, high, math.ceil((high - low) * 100))
    left = np.linspace(right - width - 2, right - width + 2, 400, axis=1)
    right = np.broadcast_to(right[:, None], left.shape)

    def inside(values: np.ndarray) -> np.ndarray:
        return ((left[None] <= values[:, None, None]) & (values[:, None, None] <= right[None])).sum(0).ravel()

    return set(zip(inside(negative).tolist(), (len(positive) - inside(positive)).tolist()))


def test_double_threshold_rates_equal_testing_every_interval_of_the_grid():
    rng = np.random.default_rng(3)
    for trial in range(12):
        a, b = rng.normal(size=rng.integers(2, 6)) * 2, rng.normal(size=rng.integers(2, 6)) + rng.uniform(-2, 2)
        if trial % 2:  # ties and values on the grid
            a, b = np.round(a * 2) / 2, np.round(b * 2) / 2
        fpr, fnr = metrics.double_threshold_rates(a, b)
        positive, negative = (b, a) if np.ptp(a) >= np.ptp(b) else (a, b)
        counts = np.rint(fpr * len(negative)).astype(int), np.rint(fnr * len(positive)).astype(int)
        found = set(zip(counts[0].tolist(), counts[1].tolist()))
        assert found == _brute_force_rates(a, b), (a, b)


# --- Sanity checks and statistics ---


def test_confidence_of_extreme_margins_is_zero_or_one_without_a_warning():
    # Memorised or badly wrong samples reach margins of +-1000 in float64; exp(1000) overflows.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = metrics.confidence(np.array([-1000.0, 0.0, 1000.0]))
    assert p.tolist() == [0.0, 0.5, 1.0]


def test_mia_efficacy_counts_forget_samples_called_non_members():
    rng = np.random.default_rng(0)
    logit = lambda p: np.log(p) - np.log1p(-p)  # noqa: E731
    members, non_members = logit(rng.uniform(0.97, 0.999, 200)), logit(rng.uniform(0.3, 0.6, 200))
    assert metrics.mia_efficacy(members, non_members, logit(rng.uniform(0.3, 0.6, 50))) == 100.0
    assert metrics.mia_efficacy(members, non_members, logit(rng.uniform(0.97, 0.999, 50))) == 0.0


def test_divergences_match_hand_computed_values():
    p, q = np.log([[0.5, 0.5]]), np.log([[0.25, 0.75]])
    kl = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    m = (0.375, 0.625)
    js = 0.5 * (0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])) + 0.5 * (
        0.25 * math.log(0.25 / m[0]) + 0.75 * math.log(0.75 / m[1]))
    assert metrics.divergences(p, q)[0] == pytest.approx([kl])
    assert metrics.divergences(p, q)[1] == pytest.approx([js])
    assert metrics.divergences(p, p)[0] == pytest.approx([0.0])


def test_avg_gap_is_the_mean_absolute_difference_of_the_means():
    reference = {"ua": 5.0, "mia": 10.0, "ra": 100.0, "ta": 94.0}
    assert metrics.avg_gap({"ua": 1.0, "mia": 12.0, "ra": 99.0, "ta": 93.0}, reference) == pytest.approx(2.0)


def test_mean_ci_uses_sample_std_and_student_t():
    # 1, 2, 3, 4: mean 2.5, std (ddof 1) sqrt(5/3) = 1.291, t(0.975, 3) = 3.1824: half-width 3.1824 * 1.291 / 2
    mean, std, low, high = metrics.mean_ci(np.array([1.0, 2, 3, 4]))
    assert (mean, std) == pytest.approx((2.5, math.sqrt(5 / 3)))
    assert (low, high) == pytest.approx((2.5 - 2.0543, 2.5 + 2.0543), abs=1e-4)
    assert math.isnan(metrics.mean_ci(np.array([1.0]))[1])


def test_bootstrap_ci_of_a_constant_is_that_constant():
    assert metrics.bootstrap_ci(np.full(30, 0.7), lambda d: d.mean(1)) == pytest.approx((0.7, 0.7))
