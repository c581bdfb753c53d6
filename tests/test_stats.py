"""Statistics against scipy, hand-computed values and textbook examples on known inputs; intervals stay inside
their bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special, stats

from fer_ablate.reports.stats import (
    MIN_N,
    adjust_pvalues,
    corrected_resampled_ttest,
    mcnemar_exact,
    mean_ci,
    paired_bootstrap_diff,
    paired_effect,
)

# Five folds of two variants: b is better on four of five folds.
A = [0.612, 0.598, 0.630, 0.605, 0.621]
B = [0.625, 0.611, 0.629, 0.620, 0.640]


def test_paired_effect_matches_scipy():
    e = paired_effect(B, A)
    diff = np.subtract(B, A)
    assert e.n == 5
    assert e.mean_diff == pytest.approx(diff.mean())
    assert e.t_pvalue == pytest.approx(stats.ttest_rel(B, A).pvalue)
    assert e.wilcoxon_pvalue == pytest.approx(stats.wilcoxon(B, A).pvalue)
    half = stats.t.ppf(0.975, 4) * diff.std(ddof=1) / math.sqrt(5)
    # The CI is the t-interval on the Fisher z scale (atanh), mapped back: bounded by -1 and 1, and for an
    # effect of a few points within 0.01 point of the plain t-interval.
    z_half = half / (1 - diff.mean() ** 2)
    expected = (math.tanh(math.atanh(diff.mean()) - z_half), math.tanh(math.atanh(diff.mean()) + z_half))
    assert (e.ci_low, e.ci_high) == pytest.approx(expected)
    assert (e.ci_low, e.ci_high) == pytest.approx((diff.mean() - half, diff.mean() + half), abs=1e-4)
    assert e.cohens_dz == pytest.approx(diff.mean() / diff.std(ddof=1))
    # By hand: differences 1.3, 1.3, -0.1, 1.5, 1.9 points -> mean 1.18, sd 0.758, t = 3.48 with 4 df, p = 0.025.
    assert e.mean_diff == pytest.approx(0.0118)
    assert e.t_pvalue == pytest.approx(0.025, abs=5e-4)
    sentence = e.sentence("kernel5", "kernel3", "folds")
    assert sentence.startswith("kernel5 vs kernel3: +1.2 points, 95% CI [+0.2, +2.1]") and "over 5 folds" in sentence


def test_paired_effect_degenerate_inputs_report_no_test():
    single = paired_effect([0.5], [0.4])
    assert single.degenerate and single.note == "n = 1: too few for an interval or a test"
    assert all(math.isnan(v) for v in (single.ci_low, single.t_pvalue, single.wilcoxon_pvalue, single.cohens_dz))
    assert "n = 1: too few" in single.sentence("kernel5", "kernel3")
    assert "p =" not in single.sentence("kernel5", "kernel3")
    assert paired_effect([], []).note == "n = 0: too few for an interval or a test"
    # Three seeds that differ by the same amount: the differences differ only by rounding (~1e-16), which
    # scipy's t-test divides by (p ~ 1e-28). No test is possible: no p-value, no effect size, and a note.
    assert stats.ttest_rel([0.5, 0.6, 0.7], [0.4972, 0.5972, 0.6972]).pvalue < 1e-20
    same = paired_effect([0.5, 0.6, 0.7], [0.4972, 0.5972, 0.6972])
    assert same.degenerate and same.note == "no spread (all 3 differences equal +0.28 points)"
    assert same.mean_diff == pytest.approx(0.0028)
    assert all(math.isnan(v) for v in (same.ci_low, same.ci_high, same.t_pvalue, same.wilcoxon_pvalue,
                                       same.cohens_dz))
    assert same.cells() == ["+0.28", "no spread (all 3 differences equal +0.28 points)", "—", "—", "—"]
    sentence = same.sentence("kernel5", "kernel3")
    assert "no spread" in sentence and "p =" not in sentence and "+0.3 points over 3 seeds" in sentence
    none = paired_effect([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert none.mean_diff == 0 and none.degenerate and math.isnan(none.t_pvalue)
    with pytest.raises(ValueError, match="equal lengths"):
        paired_effect([0.5, 0.6], [0.5])


def test_effect_with_spread_is_not_degenerate():
    e = paired_effect(B, A)
    assert not e.degenerate and e.note == ""
    assert e.cells() == ["+1.18", "[+0.24, +2.12]", f"{e.t_pvalue:.3g}", f"{e.wilcoxon_pvalue:.3g}",
                         f"{e.cohens_dz:.2f}"]


def test_mean_ci_is_the_logit_t_interval():
    ci = mean_ci(A)
    assert (ci.n, ci.note) == (5, "")
    assert ci.mean == pytest.approx(np.mean(A)) and ci.std == pytest.approx(np.std(A, ddof=1))
    # By hand: t-interval of logit(mean) with the delta-method standard error, mapped back by expit.
    m, se = np.mean(A), stats.sem(A)
    half = stats.t.ppf(0.975, 4) * se / (m * (1 - m))
    expected = (special.expit(special.logit(m) - half), special.expit(special.logit(m) + half))
    assert (ci.low, ci.high) == pytest.approx(expected)
    # Five folds near 61%: within 0.05 point of scipy's plain t-interval.
    plain = stats.t.interval(0.95, len(A) - 1, loc=m, scale=se)
    assert (ci.low, ci.high) == pytest.approx(plain, abs=5e-4)
    assert ci.cell() == f"[{100 * ci.low:.1f}, {100 * ci.high:.1f}]" == "[59.7, 62.9]"


@pytest.mark.parametrize("values", [[0.5], [0.25, 0.8], [0.4, 0.402]])
def test_mean_ci_below_three_values_gives_a_reason_not_an_interval(values):
    """Two folds: the plain t-interval (t = 12.7 with 1 df) was [-33.1, 75.7] percent for 25% and 80%."""
    plain = stats.t.interval(0.95, 1, loc=np.mean([0.25, 0.8]), scale=stats.sem([0.25, 0.8]))
    assert plain[0] < 0 and plain[1] > 1
    ci = mean_ci(values)
    assert MIN_N == 3 and math.isnan(ci.low) and math.isnan(ci.high)
    assert ci.note == f"n = {len(values)}: too few for an interval" == ci.cell()
    assert ci.mean == pytest.approx(np.mean(values))


def test_mean_ci_no_values_no_spread_and_values_out_of_range():
    assert mean_ci([]).cell() == "—" and math.isnan(mean_ci([]).mean)
    same = mean_ci([0.25, 0.25, 0.25])
    assert math.isnan(same.low) and same.note == "no spread (all 3 values equal 25.0%)"
    with pytest.raises(ValueError, match=r"proportions in \[0, 1\]"):
        mean_ci([0.5, 0.6, 61.0])  # a percentage, not an accuracy


def test_intervals_stay_inside_their_bounds_where_the_plain_t_interval_does_not():
    # Three folds far apart, and folds at the bounds themselves.
    for values in ([0.1, 0.9, 0.5], [0.0, 0.02, 0.9], [1.0, 0.98, 0.3], [0.0, 0.0, 1.0]):
        plain = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
        assert plain[0] < 0 or plain[1] > 1
        ci = mean_ci(values)
        assert 0 < ci.low < ci.mean < ci.high < 1, values
    # Paired differences live in [-1, 1]: the variant wins two folds by 80-90 points and loses one by 80.
    e = paired_effect([0.9, 0.95, 0.1], [0.1, 0.05, 0.9])
    plain = stats.t.interval(0.95, 2, loc=e.mean_diff, scale=stats.sem(np.subtract([0.9, 0.95, 0.1],
                                                                                   [0.1, 0.05, 0.9])))
    assert plain[0] < -1 and plain[1] > 1
    assert -1 < e.ci_low < e.mean_diff < e.ci_high < 1 and not e.degenerate
    # Random accuracies of 3-10 folds or seeds: every interval inside its bounds and around its mean.
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(MIN_N, 11))
        a, b = rng.beta(0.5, 0.5, n), rng.beta(0.5, 0.5, n)
        ci, effect = mean_ci(list(a)), paired_effect(a, b)
        assert 0 < ci.low <= ci.mean <= ci.high < 1
        assert -1 < effect.ci_low <= effect.mean_diff <= effect.ci_high < 1


def test_corrected_resampled_ttest_is_nadeau_bengio_by_hand():
    """Nadeau & Bengio (2003): t = mean(d) / sqrt((1/k + n_test/n_train) * s^2), k - 1 degrees of freedom."""
    # FER2013's 28,709 training images in 5 folds: 5,742 scored, 22,967 trained on (ratio 0.25001).
    c = corrected_resampled_ttest(B, A, n_train=22_967, n_test=5_742)
    # By hand, in points: differences 1.3, 1.3, -0.1, 1.5, 1.9; mean 1.18; squared deviations 0.0144, 0.0144,
    # 1.6384, 0.1024, 0.5184 sum to 2.288, so s^2 = 2.288 / 4 = 0.572 points^2.
    ratio = 5_742 / 22_967
    se = math.sqrt((1 / 5 + ratio) * 0.572e-4)
    t = 0.0118 / se
    assert (c.n, c.test_train_ratio, c.note) == (5, pytest.approx(ratio), "")
    assert c.mean_diff == pytest.approx(0.0118)
    assert c.t == pytest.approx(t) and c.t == pytest.approx(2.3258, abs=1e-4)
    assert c.pvalue == pytest.approx(2 * stats.t.sf(t, 4)) and c.pvalue == pytest.approx(0.0806, abs=5e-4)
    # The plain paired t-test (variance s^2 / 5) calls the same folds significant: p = 0.025.
    assert stats.ttest_rel(B, A).pvalue < 0.05 < c.pvalue
    # CI: d -/+ t_4 * se, on the Fisher z scale (inside (-1, 1)); for +1.2 points within 0.01 point of plain.
    half = stats.t.ppf(0.975, 4) * se
    assert (c.ci_low, c.ci_high) == pytest.approx((0.0118 - half, 0.0118 + half), abs=1e-4)
    z_half = half / (1 - 0.0118**2)
    assert (c.ci_low, c.ci_high) == pytest.approx((math.tanh(math.atanh(0.0118) - z_half),
                                                   math.tanh(math.atanh(0.0118) + z_half)))
    assert c.ci_low < 0 < c.ci_high
    assert c.sentence("kernel5", "kernel3", adjusted=0.16) == ("kernel5 vs kernel3: +1.2 points, 95% CI [-0.2, +2.6], "
                                                               "corrected resampled t-test p = 0.0806, "
                                                               "Holm-adjusted p = 0.16 over 5 folds")
    # Unequal folds: the ratio of the mean fold, sum(n_test) / sum(n_train).
    uneven = corrected_resampled_ttest(B, A, n_train=[80, 80, 81, 79, 80], n_test=[20, 20, 19, 21, 20])
    assert uneven.test_train_ratio == pytest.approx(100 / 400)


def test_corrected_resampled_ttest_degenerate_and_bad_input():
    two = corrected_resampled_ttest([0.3, 0.7], [0.25, 0.8], 4, 1)
    assert two.degenerate and math.isnan(two.pvalue) and two.note == "n = 2: too few for an interval or a test"
    assert two.sentence("kernel5", "paper") == ("kernel5 vs paper: -2.5 points from 2 pairs (n = 2: too few for an "
                                                "interval or a test)")
    same = corrected_resampled_ttest([0.5, 0.6, 0.7], [0.4972, 0.5972, 0.6972], 2, 1)
    assert same.note == "no spread (all 3 differences equal +0.28 points)" and math.isnan(same.t)
    with pytest.raises(ValueError, match="equal lengths"):
        corrected_resampled_ttest([0.5, 0.6, 0.7], [0.5, 0.6], 4, 1)
    with pytest.raises(ValueError, match="image counts must be positive"):
        corrected_resampled_ttest(B, A, 0, 1)


def test_mcnemar_exact_is_the_binomial_sum_over_discordant_images():
    # 20 images: 7 right for both, 2 only for a, 9 only for b, 2 for neither.
    a = np.array([1] * 7 + [1] * 2 + [0] * 9 + [0] * 2, bool)
    b = np.array([1] * 7 + [0] * 2 + [1] * 9 + [0] * 2, bool)
    r = mcnemar_exact(a, b)
    # By hand: 11 discordant images, p = 2 * P(Binomial(11, 1/2) <= 2) = 2 * (1 + 11 + 55) / 2^11.
    assert (r.n, r.only_a, r.only_b) == (20, 2, 9)
    assert r.pvalue == pytest.approx(2 * 67 / 2048) == pytest.approx(0.0654296875)
    assert (r.acc_a, r.acc_b) == (pytest.approx(0.45), pytest.approx(0.8))
    assert mcnemar_exact(b, a).pvalue == pytest.approx(r.pvalue)  # two-sided: symmetric
    assert mcnemar_exact(a.astype(int).tolist(), b.astype(int).tolist()).pvalue == pytest.approx(r.pvalue)
    assert mcnemar_exact(a, a).pvalue == 1.0  # no discordant image: no evidence of a difference
    with pytest.raises(ValueError, match="equal length"):
        mcnemar_exact(a, b[:-1])
    with pytest.raises(ValueError, match="booleans or 0/1"):
        mcnemar_exact([0.7, 0.2], [1, 0])  # probabilities, not correctness


def test_holm_and_benjamini_hochberg_match_textbook_values():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm (1979) by hand: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04, made
    # non-decreasing (0.04 -> 0.06), in the original order.
    assert adjust_pvalues(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # Benjamini-Hochberg by hand: p * 4 / rank = 0.02, 0.02, 0.04, 0.04 (non-increasing from the top).
    assert adjust_pvalues(p, "bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert adjust_pvalues(p, "bh") == pytest.approx(stats.false_discovery_control(p, method="bh"))
    # A pair with no test (NaN) stays NaN and is not counted: a family of 2.
    adjusted = adjust_pvalues([0.01, math.nan, 0.04])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)
    assert adjust_pvalues([0.3, 0.9]) == pytest.approx([0.6, 0.9])  # capped at 1 by the monotone step
    assert np.isnan(adjust_pvalues([math.nan])).all() and adjust_pvalues([]).size == 0
    with pytest.raises(ValueError, match="unknown p-value adjustment 'bonferoni'; known: holm, bh"):
        adjust_pvalues(p, "bonferoni")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        adjust_pvalues([0.5, 1.5])


def _two_models(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image correctness of two independent models with true accuracies 70% and 65% (difference +5)."""
    rng = np.random.default_rng(seed)
    return rng.random(n) < 0.70, rng.random(n) < 0.65


def test_paired_bootstrap_ci_covers_the_true_difference_and_narrows_with_n():
    a, b = _two_models(2_000, seed=1)
    r = paired_bootstrap_diff(a, b, n_resamples=4_000, seed=7)
    assert (r.n, r.n_resamples, r.seed, r.method, r.note) == (2_000, 4_000, 7, "percentile", "")
    assert r.diff == pytest.approx(a.mean() - b.mean())
    assert r.ci_low < 0.05 < r.ci_high and r.ci_low < r.diff < r.ci_high
    # Independent check: the normal approximation of the mean of the per-image differences.
    d = a.astype(float) - b.astype(float)
    half = stats.norm.ppf(0.975) * d.std(ddof=1) / math.sqrt(len(d))
    assert (r.ci_low, r.ci_high) == pytest.approx((d.mean() - half, d.mean() + half), abs=0.004)
    # Seeded: the same seed gives the same interval; 16x the images gives a ~4x narrower one.
    assert paired_bootstrap_diff(a, b, n_resamples=4_000, seed=7) == r
    big = paired_bootstrap_diff(*_two_models(32_000, seed=2), n_resamples=1_000, seed=7)
    assert big.ci_low < 0.05 < big.ci_high
    assert 3 < (r.ci_high - r.ci_low) / (big.ci_high - big.ci_low) < 5
    assert r.sentence().endswith("(paired bootstrap over 2000 images, 4000 resamples, seed 7)")


def test_paired_bootstrap_without_discordant_images_and_bad_input():
    a = np.array([1, 0, 1, 1], bool)
    r = paired_bootstrap_diff(a, a, n_resamples=100)
    assert r.diff == 0 and math.isnan(r.ci_low) and "no discordant image" in r.note
    with pytest.raises(ValueError, match="n_resamples must be at least 1"):
        paired_bootstrap_diff(a, ~a, n_resamples=0)
