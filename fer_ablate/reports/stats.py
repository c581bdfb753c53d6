"""Paired statistics for ablation effects: mean difference, 95% CI, paired t-test, Wilcoxon, effect size."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass
class PairedEffect:
    """Effect of a variant against its reference over matched pairs (seeds or folds).

    Differences are ``values - reference`` in accuracy units. When no test is possible (fewer than 2 pairs,
    or every pair differs by the same amount so the differences have no spread), ``note`` says so and the
    interval, p-values and effect size are NaN: a t statistic divides by the spread, and inventing p = 0
    (or an infinite effect size) from two seeds that differ by the same single image would mislead.
    """

    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    t_pvalue: float
    wilcoxon_pvalue: float
    cohens_dz: float
    note: str = ""  # why no test was run: "" (tests ran), "n < 2" or "no spread (...)"

    @property
    def degenerate(self) -> bool:
        """True when the pairs allow no test (see ``note``)."""
        return bool(self.note)

    def cells(self) -> list[str]:
        """Markdown table cells: difference (points), 95% CI, paired t p, Wilcoxon p, Cohen's dz.

        A degenerate effect puts its ``note`` in the CI cell and a dash in the others.
        """
        diff = "—" if math.isnan(self.mean_diff) else f"{100 * self.mean_diff:+.2f}"
        if self.degenerate:
            return [diff, self.note, "—", "—", "—"]
        return [diff, f"[{100 * self.ci_low:+.2f}, {100 * self.ci_high:+.2f}]", f"{self.t_pvalue:.3g}",
                f"{self.wilcoxon_pvalue:.3g}", f"{self.cohens_dz:.2f}"]

    def sentence(self, name: str, reference: str, unit: str = "seeds") -> str:
        """Plain-language summary: ``kernel5 vs kernel3: -1.2 points, 95% CI [-2.0, -0.4], p = 0.01 over 5 folds``."""
        if self.n < 2:
            pairs = "pair" if self.n == 1 else "pairs"
            diff = "no difference measured" if math.isnan(self.mean_diff) else f"{100 * self.mean_diff:+.1f} points"
            return f"{name} vs {reference}: {diff} from {self.n} {pairs} (n < 2: no test possible)"
        if self.degenerate:
            return (f"{name} vs {reference}: {100 * self.mean_diff:+.1f} points over {self.n} {unit}, {self.note}: "
                    "no test possible")
        return (f"{name} vs {reference}: {100 * self.mean_diff:+.1f} points, 95% CI [{100 * self.ci_low:+.1f}, "
                f"{100 * self.ci_high:+.1f}], paired t-test p = {self.t_pvalue:.3g} over {self.n} {unit}")


# Differences of accuracies computed in floating point (0.6 - 0.5 vs 0.5 - 0.4) can differ by ~1e-16;
# accuracies are multiples of 1/N for N <= ~36,000 images, so real differences are far above this.
SPREAD_TOLERANCE = 1e-12


def paired_effect(values: np.ndarray | list[float], reference: np.ndarray | list[float]) -> PairedEffect:
    """Compare matched samples: differences ``values - reference`` with a t-based 95% CI.

    ``values`` and ``reference`` are 1-D float sequences of equal length (one entry per seed or fold).
    With fewer than 2 pairs, or differences that are all equal (no spread), the CI, p-values and effect size
    are NaN and ``note`` names the case. Raises ValueError when the lengths differ.
    """
    a, b = np.asarray(values, float), np.asarray(reference, float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples need equal lengths, got {a.shape} and {b.shape}")
    diff = a - b
    n = len(diff)
    mean = float(diff.mean()) if n else math.nan
    nan = math.nan
    if n < 2:
        return PairedEffect(n, mean, nan, nan, nan, nan, nan, note="n < 2")
    if float(np.ptp(diff)) <= SPREAD_TOLERANCE:
        note = f"no spread (all {n} differences equal {100 * float(diff[0]):+.2f} points)"
        return PairedEffect(n, mean, nan, nan, nan, nan, nan, note=note)
    sd = float(diff.std(ddof=1))
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
