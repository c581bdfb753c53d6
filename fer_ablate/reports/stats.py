"""Statistics for ablation results: bounded 95% CIs of mean accuracies and of paired differences, paired
t-test, Wilcoxon signed-rank test, effect size; for k-fold comparisons the corrected resampled t-test
(Nadeau & Bengio 2003); for two models scored on the same images McNemar's exact test and a paired bootstrap
CI; Holm and Benjamini-Hochberg adjusted p-values for tables of several comparisons.

Accuracies (and macro-F1, recall) live in [0, 1] and their paired differences in [-1, 1]; a plain
``mean ± t * sem`` interval ignores that and, over 2 folds (t = 12.7 with 1 degree of freedom), prints
"[-33.1, 75.7]" percent. Here every interval is computed on an unbounded scale and mapped back, so it
stays inside the bounds, and fewer than ``MIN_N`` values give no interval at all but a reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special, stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

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

    def sentence(self, name: str, reference: str, unit: str = "seeds", adjusted: float | None = None) -> str:
        """Plain-language summary: ``kernel5 vs kernel3: -1.2 points, 95% CI [-2.0, -0.4], p = 0.01 over 5 folds``;
        with ``adjusted`` (the table's Holm-adjusted p) ``..., p = 0.01, Holm-adjusted p = 0.03 over 5 folds``."""
        untested = _untested_sentence(self, name, reference, unit)
        if untested:
            return untested
        return (f"{name} vs {reference}: {100 * self.mean_diff:+.1f} points, 95% CI [{100 * self.ci_low:+.1f}, "
                f"{100 * self.ci_high:+.1f}], paired t-test p = {self.t_pvalue:.3g}{adjusted_clause(adjusted)} over "
                f"{self.n} {unit}")


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


@dataclass(frozen=True)
class CorrectedTTest:
    """Corrected resampled t-test of paired k-fold scores (``corrected_resampled_ttest``), accuracy units.

    ``test_train_ratio`` is the ``n_test / n_train`` the variance was inflated with. ``ci_low``/``ci_high``,
    ``t`` and ``pvalue`` are NaN when ``note`` says no test was possible (fewer than ``MIN_N`` folds, or no
    spread of the differences).
    """

    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    t: float
    pvalue: float
    test_train_ratio: float
    note: str = ""

    @property
    def degenerate(self) -> bool:
        """True when the folds allow no test (see ``note``)."""
        return bool(self.note)

    def sentence(self, name: str, reference: str, adjusted: float | None = None) -> str:
        """``kernel5 vs paper: +1.2 points, 95% CI [+0.1, +2.3], corrected resampled t-test p = 0.04,
        Holm-adjusted p = 0.08 over 5 folds``; ``adjusted`` (the table's Holm p) is said when given."""
        untested = _untested_sentence(self, name, reference, "folds")
        if untested:
            return untested
        return (f"{name} vs {reference}: {100 * self.mean_diff:+.1f} points, 95% CI [{100 * self.ci_low:+.1f}, "
                f"{100 * self.ci_high:+.1f}], corrected resampled t-test p = {self.pvalue:.3g}"
                f"{adjusted_clause(adjusted)} over {self.n} folds")


def _untested_sentence(effect: Any, name: str, reference: str, unit: str) -> str | None:
    """The sentence of an effect with too few pairs or no spread to test (``effect.n``, ``mean_diff``, ``note``,
    ``degenerate``); None when it was tested."""
    if effect.n < MIN_N:
        pairs = "pair" if effect.n == 1 else "pairs"
        diff = "no difference measured" if math.isnan(effect.mean_diff) else f"{100 * effect.mean_diff:+.1f} points"
        return f"{name} vs {reference}: {diff} from {effect.n} {pairs} ({effect.note})"
    if effect.degenerate:
        return (f"{name} vs {reference}: {100 * effect.mean_diff:+.1f} points over {effect.n} {unit}, {effect.note}: "
                "no test possible")
    return None


def adjusted_clause(adjusted: float | None) -> str:
    """``", Holm-adjusted p = 0.08"`` for a sentence, or ``""`` when there is no adjusted p (None or NaN)."""
    return "" if adjusted is None or math.isnan(adjusted) else f", Holm-adjusted p = {adjusted:.3g}"


def p_cell(p: float) -> str:
    """A p-value table cell: ``0.0123`` to 3 significant digits, ``—`` for NaN (no test)."""
    return "—" if math.isnan(p) else f"{p:.3g}"


def corrected_resampled_ttest(values: np.ndarray | list[float], reference: np.ndarray | list[float],
                              n_train: int | list[int], n_test: int | list[int], level: float = 0.95
                              ) -> CorrectedTTest:
    """Compare two models' scores on the same k folds with the corrected resampled t-test.

    Source: C. Nadeau and Y. Bengio, "Inference for the generalization error", Machine Learning 52(3):
    239-281, 2003 (the corrected resampled t-test of their section 4; also Bouckaert & Frank, PAKDD 2004).
    Why: the k training sets overlap (each pair shares (k-2)/(k-1) of its images), so the fold differences
    are positively correlated and the plain paired t-test, which assumes independence, is too liberal.
    With ``d_j = values_j - reference_j`` over the ``J`` folds, mean ``d`` and sample variance ``s**2``:
    ``t = d / sqrt((1/J + n_test/n_train) * s**2)`` with ``J - 1`` degrees of freedom, two-sided p. The
    95% CI has half-width ``t_{J-1} * sqrt((1/J + n_test/n_train) * s**2)``, applied on the Fisher z scale
    like ``fisher_z_interval`` so it stays inside (-1, 1) (for effects of a few points within 0.01 point of
    ``d -/+`` that half-width).

    ``values``/``reference``: 1-D, equal length, one accuracy in [0, 1] per fold. ``n_train``/``n_test``:
    the numbers of images each fold model trained on and was scored on, one int for all folds or one per
    fold (then the ratio is ``sum(n_test) / sum(n_train)``, i.e. of the mean fold). For 5 equal folds the
    ratio is 1/4 and the variance is 0.45 * s**2 instead of 0.2 * s**2. Raises ValueError for unequal
    lengths or non-positive image counts.
    """
    a, b = np.asarray(values, float), np.asarray(reference, float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples need equal lengths, got {a.shape} and {b.shape}")
    train, test = np.atleast_1d(np.asarray(n_train, float)), np.atleast_1d(np.asarray(n_test, float))
    if np.any(train <= 0) or np.any(test <= 0):
        raise ValueError(f"image counts must be positive, got n_train {train.tolist()} and n_test {test.tolist()}")
    ratio = float(test.sum() / train.sum())
    diff = a - b
    n, nan = len(diff), math.nan
    mean = float(diff.mean()) if n else nan
    if n < MIN_N:
        return CorrectedTTest(n, mean, nan, nan, nan, nan, ratio, f"{too_few(n)} or a test")
    if float(np.ptp(diff)) <= SPREAD_TOLERANCE:
        note = f"no spread (all {n} differences equal {100 * float(diff[0]):+.2f} points)"
        return CorrectedTTest(n, mean, nan, nan, nan, nan, ratio, note)
    se = math.sqrt((1 / n + ratio) * float(diff.var(ddof=1)))
    t = mean / se
    p = float(2 * stats.t.sf(abs(t), n - 1))
    # fisher_z_interval divides its std by sqrt(n): pass the std that gives the corrected standard error.
    low, high = fisher_z_interval(mean, se * math.sqrt(n), n, level)
    return CorrectedTTest(n, mean, low, high, float(t), p, ratio)


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's exact test of two models' correctness on the same ``n`` images.

    ``only_a``/``only_b``: images only model a (only model b) classified correctly (the discordant pairs);
    ``acc_a``/``acc_b``: accuracies in [0, 1]; ``pvalue``: two-sided exact binomial p (1.0 with no
    discordant image).
    """

    n: int
    only_a: int
    only_b: int
    acc_a: float
    acc_b: float
    pvalue: float


def _correctness(correct_a: np.ndarray | list, correct_b: np.ndarray | list) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(correct_a), np.asarray(correct_b)
    if a.ndim != 1 or a.shape != b.shape or not len(a):
        raise ValueError(f"per-image correctness needs two non-empty 1-D arrays of equal length, got shapes "
                         f"{a.shape} and {b.shape}")
    for arr in (a, b):
        if not np.isin(arr, (0, 1)).all():
            raise ValueError("per-image correctness must be booleans or 0/1, got values "
                             f"{np.unique(arr)[:5].tolist()}")
    return a.astype(bool), b.astype(bool)


def mcnemar_exact(correct_a: np.ndarray | list, correct_b: np.ndarray | list) -> McNemarResult:
    """McNemar's exact test: do two models scored on the same images differ in accuracy?

    Source: Q. McNemar, "Note on the sampling error of the difference between correlated proportions or
    percentages", Psychometrika 12(2): 153-157, 1947; the exact (binomial) form recommended for comparing
    classifiers on one test set by T. G. Dietterich, "Approximate statistical tests for comparing supervised
    classification learning algorithms", Neural Computation 10(7), 1998. Only the discordant images count:
    with ``b`` images right only for model a and ``c`` right only for model b, under the null each
    discordant image is a fair coin, and ``p = min(1, 2 * P(Binomial(b + c, 1/2) <= min(b, c)))``
    (statsmodels' ``mcnemar(exact=True)``).

    ``correct_a``/``correct_b``: 1-D bool (or 0/1) arrays, one entry per image, the same images in the same
    order. Raises ValueError for other shapes or values.
    """
    a, b = _correctness(correct_a, correct_b)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    table = [[int((a & b).sum()), only_a], [only_b, int((~a & ~b).sum())]]
    return McNemarResult(len(a), only_a, only_b, float(a.mean()), float(b.mean()),
                         float(mcnemar(table, exact=True).pvalue))


@dataclass(frozen=True)
class BootstrapDiff:
    """Paired bootstrap CI of ``acc_a - acc_b`` over images (accuracy units), with how it was made.

    ``ci_low``/``ci_high`` are NaN when ``note`` says why (no discordant image: every resample gives the
    same difference). ``n_resamples``, ``seed``, ``level`` and ``method`` reproduce the interval.
    """

    n: int
    diff: float
    ci_low: float
    ci_high: float
    n_resamples: int
    seed: int
    level: float
    method: str
    note: str = ""

    def sentence(self) -> str:
        """``+1.2 points, 95% CI [+0.4, +2.0] (paired bootstrap over 3589 images, 10000 resamples, seed 0)``."""
        how = f"paired bootstrap over {self.n} images, {self.n_resamples} resamples, seed {self.seed}"
        if self.note:
            return f"{100 * self.diff:+.1f} points ({self.note}; {how})"
        return (f"{100 * self.diff:+.1f} points, {100 * self.level:.0f}% CI [{100 * self.ci_low:+.1f}, "
                f"{100 * self.ci_high:+.1f}] ({how})")


def paired_bootstrap_diff(correct_a: np.ndarray | list, correct_b: np.ndarray | list, n_resamples: int = 10_000,
                          seed: int = 0, level: float = 0.95, method: str = "percentile") -> BootstrapDiff:
    """Confidence interval of the accuracy difference of two models on the same images, by resampling images.

    Source: B. Efron and R. J. Tibshirani, "An Introduction to the Bootstrap", Chapman & Hall 1993 (paired
    bootstrap, ch. 6 and 13; percentile interval ch. 13, BCa ch. 14); as used for comparing systems on one
    test set by Koehn, "Statistical significance tests for machine translation evaluation", EMNLP 2004.
    Images are resampled with replacement, keeping each image's pair of outcomes together, which is
    resampling the per-image differences ``correct_a - correct_b`` in {-1, 0, 1}: scipy's
    ``stats.bootstrap`` of their mean, ``method`` ``"percentile"`` (default) or ``"BCa"``, seeded by ``seed``.

    ``correct_a``/``correct_b``: 1-D bool (or 0/1) arrays, one entry per image, in the same order. Cost:
    ``n_resamples * n`` draws in batches (10,000 resamples of the 3,589 FER2013 test images: ~0.5 s).
    Raises ValueError for other shapes or values, or ``n_resamples < 1``.
    """
    a, b = _correctness(correct_a, correct_b)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    d = a.astype(np.int8) - b.astype(np.int8)
    diff, nan = float(d.mean()), math.nan
    if int(np.ptp(d)) == 0:
        note = "no discordant image: every resample gives the same difference"
        return BootstrapDiff(len(d), diff, nan, nan, n_resamples, seed, level, method, note)
    # Batches of <= 2**24 draws (~130 MB of int64 indices) instead of one n_resamples x n array.
    batch = max(1, 2**24 // len(d))
    res = stats.bootstrap((d,), np.mean, n_resamples=n_resamples, confidence_level=level, method=method,
                          rng=np.random.default_rng(seed), batch=batch, vectorized=True)
    ci = res.confidence_interval
    return BootstrapDiff(len(d), diff, float(ci.low), float(ci.high), n_resamples, seed, level, method)


ADJUSTMENTS = {"holm": "holm", "bh": "fdr_bh"}  # our name -> statsmodels' multipletests method


def adjust_pvalues(pvalues: np.ndarray | list[float], method: str = "holm") -> np.ndarray:
    """Adjusted p-values for a family of comparisons (one report table), same order as ``pvalues``.

    ``"holm"`` (default): S. Holm, "A simple sequentially rejective multiple test procedure", Scandinavian
    Journal of Statistics 6(2): 65-70, 1979; controls the family-wise error rate, uniformly more powerful
    than Bonferroni. ``"bh"``: Y. Benjamini and Y. Hochberg, "Controlling the false discovery rate",
    JRSS B 57(1): 289-300, 1995; controls the false discovery rate. Both via statsmodels'
    ``multipletests``. NaN entries (comparisons with no test, e.g. too few folds) stay NaN and do not count
    in the family size. Returns a float array of values in [0, 1]. Raises ValueError for an unknown method
    (naming the known ones) or a p-value outside [0, 1].
    """
    if method not in ADJUSTMENTS:
        raise ValueError(f"unknown p-value adjustment {method!r}; known: {', '.join(ADJUSTMENTS)}")
    p = np.asarray(pvalues, float)
    out = np.full(p.shape, math.nan)
    tested = ~np.isnan(p)
    if np.any((p[tested] < 0) | (p[tested] > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p[tested].min():.4g}..{p[tested].max():.4g}")
    if tested.any():
        out[tested] = multipletests(p[tested], method=ADJUSTMENTS[method])[1]
    return out
