"""Paired statistics against scipy (and hand-computed values) on known inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fer_ablate.reports.stats import mean_ci, paired_effect

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
    assert (e.ci_low, e.ci_high) == pytest.approx((diff.mean() - half, diff.mean() + half))
    assert e.cohens_dz == pytest.approx(diff.mean() / diff.std(ddof=1))
    # By hand: differences 1.3, 1.3, -0.1, 1.5, 1.9 points -> mean 1.18, sd 0.758, t = 3.48 with 4 df, p = 0.025.
    assert e.mean_diff == pytest.approx(0.0118)
    assert e.t_pvalue == pytest.approx(0.025, abs=5e-4)
    sentence = e.sentence("kernel5", "kernel3", "folds")
    assert sentence.startswith("kernel5 vs kernel3: +1.2 points, 95% CI [+0.2, +2.1]") and "over 5 folds" in sentence


def test_paired_effect_degenerate_inputs_report_no_test():
    single = paired_effect([0.5], [0.4])
    assert single.degenerate and single.note == "n < 2"
    assert all(math.isnan(v) for v in (single.ci_low, single.t_pvalue, single.wilcoxon_pvalue, single.cohens_dz))
    assert "n < 2" in single.sentence("kernel5", "kernel3") and "p =" not in single.sentence("kernel5", "kernel3")
    assert paired_effect([], []).note == "n < 2"
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
    none = paired_effect([0.5, 0.6], [0.5, 0.6])
    assert none.mean_diff == 0 and none.degenerate and math.isnan(none.t_pvalue)
    with pytest.raises(ValueError, match="equal lengths"):
        paired_effect([0.5, 0.6], [0.5])


def test_effect_with_spread_is_not_degenerate():
    e = paired_effect(B, A)
    assert not e.degenerate and e.note == ""
    assert e.cells() == ["+1.18", "[+0.24, +2.12]", f"{e.t_pvalue:.3g}", f"{e.wilcoxon_pvalue:.3g}",
                         f"{e.cohens_dz:.2f}"]


def test_mean_ci_matches_scipy():
    mean, std, low, high = mean_ci(A)
    interval = stats.t.interval(0.95, len(A) - 1, loc=np.mean(A), scale=stats.sem(A))
    assert mean == pytest.approx(np.mean(A)) and std == pytest.approx(np.std(A, ddof=1))
    assert (low, high) == pytest.approx(interval)
    assert math.isnan(mean_ci([0.5])[2])
