"""Statistics against scipy (and hand-computed values) on known inputs; intervals stay inside their bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special, stats

from fer_ablate.reports.stats import MIN_N, mean_ci, paired_effect

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
