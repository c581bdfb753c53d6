"""Statistics for ablation results: bounded 95% CIs of mean accuracies and of paired differences, paired
t-test, Wilcoxon signed-rank test, effect size.

Accuracies (and macro-F1, recall) live in [0, 1] and their paired differences in [-1, 1]; a plain
``mean ± t * sem`` interval ignores that and, over 2 folds (t = 12.7 with 1 degree of freedom), prints
"[-33.1, 75.7]" percent. Here every interval is computed on an unbounded scale and mapped back, so it
stays inside the bounds, and fewer than ``MIN_N`` values give no interval at all but a reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

# Below 3 values the t quantile has 1 degree of freedom (12.7 at 95%): any interval spans most of the range.
MIN_N = 3
# Differences of accuracies computed in floating point (0.6 - 0.5 vs 0.5 - 0.4) can differ by ~1e-16;
# accuracies are multiples of 1/N for N <= ~36,000 images, so real differences are far above this.
SPREAD_TOLERANCE = 1e-12


def too_few(n: int) -> str:
    """The reason given instead of an interval for ``n`` values: ``"n = 2: too few for an interval"``."""
    return f"n = {n}: too few for an interval"


def _t_quantile(level: float, n: int) -> float:
    return float(stats.t.ppf(0.5 + level / 2, n - 1))


def logit_interval(mean: float, std: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Confidence interval of a mean proportion ``mean`` in (0, 1), from ``n`` values of sample std ``std``,
    computed on the logit scale and mapped back, so it lies inside (0, 1) and always contains ``mean``.

    Method: the logit-transformed limits of Stata's ``svy: tabulate`` and ``proportion`` (``citype(logit)``,
    StataCorp reference manuals, Methods and formulas; why: J. Pitblado, StataCorp, Statalist 2006-10,
    msg01125, "guaranteed to stay within the parameter space for a proportion"): ``f = logit(mean)``,
    ``se(f) = se(mean) / (mean * (1 - mean))`` (delta method), bounds ``expit(f -/+ t_{n-1} * se(f))`` with
    ``se(mean) = std / sqrt(n)`` and the t quantile of ``n - 1`` degrees of freedom.
    Near 50% and for spreads of a few points it is within 0.1 point of the plain t-interval; near 0 or 1 it
    is asymmetric instead of crossing the bound. Requires ``0 < mean < 1``, ``std > 0``, ``n >= 2``.
    """
    f = float(special.logit(mean))
    half = _t_quantile(level, n) * std / math.sqrt(n) / (mean * (1 - mean))
    return float(special.expit(f - half)), float(special.expit(f + half))


def fisher_z_interval(mean: float, std: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Confidence interval of a mean difference ``mean`` in (-1, 1) (of two accuracies), from ``n`` values of
    sample std ``std``, computed on the Fisher z scale ``atanh`` and mapped back with ``tanh``, so it lies
    inside (-1, 1) and always contains ``mean``.

    ``atanh(d) = logit((1 + d) / 2) / 2``: the logit interval of ``logit_interval`` for a quantity bounded by
    -1 and 1 (Fisher's z, Fisher 1915, is the usual transform for such quantities, e.g. correlations), with
    the delta-method ``se(z) = se(mean) / (1 - mean**2)`` and the t quantile of ``n - 1`` degrees of freedom.
    For ablation effects of a few points it equals the plain t-interval to within 0.01 point.
    Requires ``-1 < mean < 1``, ``std > 0``, ``n >= 2``.
    """
    z = math.atanh(mean)
    half = _t_quantile(level, n) * std / math.sqrt(n) / (1 - mean**2)
    return math.tanh(z - half), math.tanh(z + half)


@dataclass(frozen=True)
class MeanCI:
    """Mean, sample std and 95% CI of ``n`` values in [0, 1] (fold accuracies, macro-F1s).

    ``low``/``high`` are NaN when no interval is given, and ``note`` says why (``too_few``, or no spread);
    otherwise ``0 < low <= mean <= high < 1``.
    """

    n: int
    mean: float
    std: float
    low: float
    high: float
    note: str = ""  # why there is no interval: "" (there is one), "n = 2: too few ..." or "no spread (...)"

    def cell(self) -> str:
        """The interval in percent, ``[58.3, 64.1]``, or the ``note`` (``—`` for no values)."""
        if self.n == 0:
            return "—"
        return self.note or f"[{100 * self.low:.1f}, {100 * self.high:.1f}]"


def mean_ci(values: list[float], level: float = 0.95) -> MeanCI:
    """Mean, sample std and a bounded confidence interval of the mean of values in [0, 1].

    The interval is ``logit_interval`` (t-interval on the logit scale, mapped back: inside (0, 1)). With
    fewer than ``MIN_N`` values, or values that are all equal, the bounds are NaN and ``note`` says why:
    a k-fold parent then logs no ``*_ci95_*`` metric and a report prints the note. Raises ValueError for a
    value outside [0, 1] (this is for accuracies, not for seconds or losses).
    """
    arr = np.asarray(values, float)
    if np.any((arr < 0) | (arr > 1)):
        raise ValueError(f"mean_ci takes proportions in [0, 1], got {arr.min():.4g}..{arr.max():.4g}")
    mean, std = mean_std(list(arr))
    n, nan = len(arr), math.nan
    if n < MIN_N:
        return MeanCI(n, mean, std, nan, nan, too_few(n) if n else "no values")
    if float(np.ptp(arr)) <= SPREAD_TOLERANCE:
        return MeanCI(n, mean, std, nan, nan, f"no spread (all {n} values equal {100 * mean:.1f}%)")
    return MeanCI(n, mean, std, *logit_interval(mean, std, n, level))


@dataclass
class PairedEffect:
    """Effect of a variant against its reference over matched pairs (seeds or folds).

    Differences are ``values - reference`` in accuracy units. When no test is possible (fewer than
    ``MIN_N`` pairs, or every pair differs by the same amount so the differences have no spread), ``note``
    says so and the interval, p-values and effect size are NaN: a t statistic divides by the spread, and
    inventing p = 0 (or an infinite effect size) from two seeds that differ by the same single image would
    mislead. Otherwise the CI is ``fisher_z_interval``: inside (-1, 1).
    """

    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    t_pvalue: float
    wilcoxon_pvalue: float
    cohens_dz: float
    note: str = ""  # why no test was run: "" (tests ran), "n = 2: too few ..." or "no spread (...)"

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
        if self.n < MIN_N:
            pairs = "pair" if self.n == 1 else "pairs"
            diff = "no difference measured" if math.isnan(self.mean_diff) else f"{100 * self.mean_diff:+.1f} points"
            return f"{name} vs {reference}: {diff} from {self.n} {pairs} ({self.note})"
        if self.degenerate:
            return (f"{name} vs {reference}: {100 * self.mean_diff:+.1f} points over {self.n} {unit}, {self.note}: "
                    "no test possible")
        return (f"{name} vs {reference}: {100 * self.mean_diff:+.1f} points, 95% CI [{100 * self.ci_low:+.1f}, "
                f"{100 * self.ci_high:+.1f}], paired t-test p = {self.t_pvalue:.3g} over {self.n} {unit}")


def paired_effect(values: np.ndarray | list[float], reference: np.ndarray | list[float]) -> PairedEffect:
    """Compare matched samples: differences ``values - reference`` with a bounded 95% CI and paired tests.

    ``values`` and ``reference`` are 1-D sequences of accuracies in [0, 1] of equal length (one entry per
    seed or fold). The CI is ``fisher_z_interval`` (inside (-1, 1)); the p-values are scipy's paired t-test
    and Wilcoxon signed-rank test; the effect size is Cohen's dz (mean / sd of the differences). With fewer
    than ``MIN_N`` pairs, or differences that are all equal (no spread), the CI, p-values and effect size
    are NaN and ``note`` names the case. Raises ValueError when the lengths differ.
    """
    a, b = np.asarray(values, float), np.asarray(reference, float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples need equal lengths, got {a.shape} and {b.shape}")
    diff = a - b
    n = len(diff)
    mean = float(diff.mean()) if n else math.nan
    nan = math.nan
    if n < MIN_N:
        return PairedEffect(n, mean, nan, nan, nan, nan, nan, note=f"{too_few(n)} or a test")
    if float(np.ptp(diff)) <= SPREAD_TOLERANCE:
        note = f"no spread (all {n} differences equal {100 * float(diff[0]):+.2f} points)"
        return PairedEffect(n, mean, nan, nan, nan, nan, nan, note=note)
    sd = float(diff.std(ddof=1))
    low, high = fisher_z_interval(mean, sd, n)
    t_p = float(stats.ttest_rel(a, b).pvalue)
    try:
        w_p = float(stats.wilcoxon(a, b).pvalue)
    except ValueError:
        w_p = math.nan
    return PairedEffect(n, mean, low, high, t_p, w_p, mean / sd)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value, NaN for none)."""
    if not values:
        return math.nan, math.nan
    arr = np.asarray(values, float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
