"""Paired statistics for ablation effects: mean difference, 95% CI, paired t-test, Wilcoxon, effect size."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass
class PairedEffect:
    """Effect of a variant against its reference over matched pairs (seeds or folds)."""

    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    t_pvalue: float
    wilcoxon_pvalue: float
    cohens_dz: float

    def sentence(self, name: str, reference: str, unit: str = "seeds") -> str:
        """Plain-language summary: ``kernel5 vs kernel3: -1.2 points, 95% CI [-2.0, -0.4], p = 0.01 over 5 folds``."""
        if self.n < 2:
            return f"{name} vs {reference}: {100 * self.mean_diff:+.1f} points from {self.n} pair (no test possible)"
        return (f"{name} vs {reference}: {100 * self.mean_diff:+.1f} points, 95% CI [{100 * self.ci_low:+.1f}, "
                f"{100 * self.ci_high:+.1f}], paired t-test p = {self.t_pvalue:.3g} over {self.n} {unit}")


def paired_effect(values: np.ndarray | list[float], reference: np.ndarray | list[float]) -> PairedEffect:
    """Compare matched samples: differences ``values - reference`` with a t-based 95% CI.

    With fewer than 2 pairs the CI and p-values are NaN; identical differences give a zero-width CI.
    """
    a, b = np.asarray(values, float), np.asarray(reference, float)
    diff = a - b
    n = len(diff)
    mean = float(diff.mean()) if n else math.nan
    if n < 2:
        return PairedEffect(n, mean, math.nan, math.nan, math.nan, math.nan, math.nan)
    sd = float(diff.std(ddof=1))
    if sd == 0:
        p = 0.0 if mean != 0 else 1.0
        return PairedEffect(n, mean, mean, mean, p, math.nan, math.inf if mean else 0.0)
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    t_p = float(stats.ttest_rel(a, b).pvalue)
    try:
        w_p = float(stats.wilcoxon(a, b).pvalue)
    except ValueError:
        w_p = math.nan
    return PairedEffect(n, mean, mean - half, mean + half, t_p, w_p, mean / sd)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value, NaN for none)."""
    if not values:
        return math.nan, math.nan
    arr = np.asarray(values, float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """Mean, sample std and a t-based confidence interval of the mean (NaN bounds for fewer than 2 values)."""
    mean, std = mean_std(values)
    n = len(values)
    if n < 2:
        return mean, std, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half
