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


def test_paired_effect_degenerate_inputs():
    assert math.isnan(paired_effect([0.5], [0.4]).ci_low)
    same = paired_effect([0.5, 0.6], [0.4, 0.5])  # identical differences: zero-width interval
    assert same.ci_low == same.ci_high == pytest.approx(0.1)
    none = paired_effect([0.5, 0.6], [0.5, 0.6])
    assert none.mean_diff == 0 and none.t_pvalue == 1.0


def test_mean_ci_matches_scipy():
    mean, std, low, high = mean_ci(A)
    interval = stats.t.interval(0.95, len(A) - 1, loc=np.mean(A), scale=stats.sem(A))
    assert mean == pytest.approx(np.mean(A)) and std == pytest.approx(np.std(A, ddof=1))
    assert (low, high) == pytest.approx(interval)
    assert math.isnan(mean_ci([0.5])[2])
