"""``fer-ablate report --kfold``: per-fold scores of each variant and paired tests between variants.

Built from tracked runs only: a k-fold group run (``kfold --experiment``) and its variant parents, or one
variant's parent. Fold ``i`` of every variant holds the same images (same fold digest), so differences are
paired fold by fold. The test is the corrected resampled t-test (Nadeau & Bengio 2003): the fold models'
training sets overlap, which makes the plain paired t-test too liberal; it is shown only as a secondary,
labelled column, with Wilcoxon signed-rank and Cohen's dz. With more than one pair, Holm-adjusted p-values.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from fer_ablate import tracking
from fer_ablate.config.names import path_under
from fer_ablate.paths import reports_dir
from fer_ablate.reports.caveats import RunNote, caveats
from fer_ablate.reports.document import Report
from fer_ablate.reports.plots import finish_plot, plt, save_figure
from fer_ablate.reports.stats import (
    CorrectedTTest,
    PairedEffect,
    adjust_pvalues,
    corrected_resampled_ttest,
    mean_ci,
    p_cell,
    paired_effect,
)

KIND, GROUP_KIND = tracking.KFOLD, tracking.KFOLD_GROUP
ALL_PAIRS_UP_TO = 5  # more variants than this: each against the base only (n^2 pairs stop being readable)


@dataclass
class FoldScores:
    """One variant's k-fold parent: fold index -> score, for each metric, plus the ensemble's test score."""

    label: str
    run_id: str
    folds_digest: str
    data_digest: str
    k: int
    scores: dict[str, dict[int, float]]
    ensemble: float | None
    test_split: str = ""  # the parent's ``kfold_test_split`` tag: the held-out split, "none", or "" (not tagged)

    @classmethod
    def from_run(cls, run: Any) -> FoldScores:
        """Read the per-fold metrics (``fold<i>_<metric>``) a k-fold parent logged."""
        scores: dict[str, dict[int, float]] = {}
        for key, value in run.data.metrics.items():
            match = re.fullmatch(r"fold(\d+)_(\w+)", key)
            if match:
                scores.setdefault(match.group(2), {})[int(match.group(1))] = value
        tags = run.data.tags
        return cls(tags.get("fer_ablate_name", run.info.run_name), run.info.run_id, tags.get("kfold_folds", ""),
                   tags.get("data_digest", "?"), int(tags.get("kfold_k", 0)), scores,
                   run.data.metrics.get("ensemble_test_accuracy"), tags.get("kfold_test_split", ""))


def collect(target: str, tracking_uri: str | None = None) -> tuple[str, str, list[FoldScores]]:
    """(title, run to log the report to, variants) for a group or variant parent run id, or a name.

    A name is an experiment file's (``kfold --experiment``: the group) or a variant's, looked up in the
    MLflow experiment of the store's rule. Raises TrackingError when there is no such k-fold run.
    """
    tracking.use_store(tracking_uri)
    if re.fullmatch(r"[0-9a-f]{32}", target):
        run = tracking.get_run(target)
        kind = run.data.tags.get("fer_ablate_kind")
        if kind not in (KIND, GROUP_KIND):
            raise tracking.TrackingError(f"run {target} is not a k-fold parent or group run (kind {kind!r})")
    else:
        try:
            run = tracking.find_parent(GROUP_KIND, target, f"fer-ablate kfold --experiment {target}")
        except tracking.TrackingError as no_group:
            try:
                run = tracking.find_parent(KIND, target, f"fer-ablate kfold --variant {target} (or --experiment "
                                           f"{target})")
            except tracking.TrackingError as no_variant:
                # A group found in another MLflow experiment says more than "no variant run".
                raise (no_group if "but there is one" in str(no_group) else no_variant) from None
    name = run.data.tags.get("fer_ablate_name", target)
    if run.data.tags.get("fer_ablate_kind") == KIND:
        return name, run.info.run_id, [FoldScores.from_run(run)]
    members = tracking.search_runs(tracking.tag_filter({"kfold_group_run": run.info.run_id}), [run.info.experiment_id],
                                   newest_first=False)
    by_label: dict[str, FoldScores] = {}
    for member in members:  # oldest first: a later parent of the same label (other settings) wins
        scores = FoldScores.from_run(member)
        by_label.pop(scores.label, None)
        by_label[scores.label] = scores
    return name, run.info.run_id, list(by_label.values())


def pairs(variants: list[FoldScores]) -> list[tuple[FoldScores, FoldScores]]:
    """Every pair of variants when there are few, else each variant against the first (the base)."""
    if len(variants) <= ALL_PAIRS_UP_TO:
        return [(b, a) for a, b in combinations(variants, 2)]
    return [(v, variants[0]) for v in variants[1:]]


def unpaired_reason(a: FoldScores, b: FoldScores) -> str | None:
    """Why ``a`` and ``b`` cannot be paired fold by fold (other data, other folds), or None when they can."""
    if a.data_digest != b.data_digest:
        return (f"different data: {a.label} (run {a.run_id}) trained on data {a.data_digest}, {b.label} "
                f"(run {b.run_id}) on {b.data_digest}")
    if a.folds_digest != b.folds_digest:
        return f"different fold assignments ({a.folds_digest} vs {b.folds_digest})"
    return None


@dataclass
class FoldEffect:
    """``a`` against ``b`` over their common folds: the corrected resampled t-test (the test this report
    uses), the plain paired statistics (secondary), and the fold sizes behind ``n_test / n_train``."""

    corrected: CorrectedTTest
    plain: PairedEffect
    sizes_source: str  # "folds.json" (recorded fold sizes) or "assumed 1/(k-1)" (none recorded)


def fold_sizes(run_id: str, k: int) -> tuple[dict[int, int], dict[int, int]] | None:
    """Fold -> images trained on, fold -> images scored on, from the parent's ``folds.json`` (the fold id
    of every pool image: fold ``i`` scores on its own images and trains on all others); None when absent."""
    raw = tracking.read_json(run_id, "folds.json")
    if not raw or "fold_of" not in raw:
        return None
    counts = np.bincount(np.asarray(raw["fold_of"], dtype=np.int64), minlength=max(k, 1))
    total = int(counts.sum())
    return {f: total - int(c) for f, c in enumerate(counts)}, {f: int(c) for f, c in enumerate(counts)}


def fold_effect(a: FoldScores, b: FoldScores, metric: str = "val_accuracy") -> FoldEffect | None:
    """Effect of ``a`` against ``b`` over their common folds; None when ``unpaired_reason`` says no.

    ``n_test / n_train`` of the corrected test comes from the fold sizes ``a``'s parent recorded (both
    parents share the fold assignment); without ``folds.json`` it is ``1 / (k - 1)`` (equal folds).
    """
    if unpaired_reason(a, b):
        return None
    x, y = a.scores.get(metric, {}), b.scores.get(metric, {})
    common = sorted(set(x) & set(y))
    values, reference = [x[f] for f in common], [y[f] for f in common]
    sizes = fold_sizes(a.run_id, a.k)
    if sizes and all(f in sizes[1] and sizes[1][f] > 0 and sizes[0][f] > 0 for f in common) and common:
        n_train, n_test, source = [sizes[0][f] for f in common], [sizes[1][f] for f in common], "folds.json"
    else:
        n_train, n_test, source = max(a.k - 1, 1), 1, "assumed 1/(k-1)"
    return FoldEffect(corrected_resampled_ttest(values, reference, n_train, n_test),
                      paired_effect(values, reference), source)


def fold_notes(v: FoldScores) -> list[RunNote]:
    """What each fold run behind ``v``'s scores says about itself (degenerate, synthetic, epochs), named
    ``label · fold i/k``: the runs of the parent's ``fold_runs.json``. Without that list (or when none of its
    runs can be read), the parent itself, whose ``data_source`` tag still tells synthetic faces."""
    listed = tracking.read_json(v.run_id, "fold_runs.json")
    notes = []
    for fold, run_id in sorted((listed or {}).items(), key=lambda item: int(item[0])):
        try:
            notes.append(RunNote.from_run(f"{v.label} · fold {int(fold) + 1}/{v.k}", tracking.get_run(run_id)))
        except tracking.TrackingError:
            continue  # a deleted fold run: its scores are on the parent, its tags are gone
    return notes or [RunNote.from_run(v.label, tracking.get_run(v.run_id))]


def _test_sentence(variants: list[FoldScores]) -> str:
    splits = {v.test_split for v in variants}
    if splits == {"none"}:
        return "No held-out test split: the test columns are empty."
    named = sorted(s for s in splits if s not in ("", "none"))
    if not named:
        return "Test = the held-out split no fold trains on."
    return f"Test = the held-out split ({', '.join(named)}) that no fold trains on."


SUMMARY_COLUMNS = ["variant", "folds", "val acc % (mean ± std)", "95% CI", "val macro-F1 %",
                   "test acc % (fold models)", "test acc % (fold ensemble)", "data"]


def _summary_rows(variants: list[FoldScores]) -> list[list[str]]:
    rows = []
    for v in variants:
        acc = mean_ci(list(v.scores.get("val_accuracy", {}).values()))
        f1 = mean_ci(list(v.scores.get("val_macro_f1", {}).values()))
        test = mean_ci(list(v.scores.get("test_accuracy", {}).values()))
        ens = "—" if v.ensemble is None else f"{100 * v.ensemble:.1f}"
        rows.append([v.label, f"{acc.n}/{v.k}", _pm(acc.mean, acc.std), acc.cell(), _pm(f1.mean, f1.std),
                     _pm(test.mean, test.std), ens, v.data_digest])
    return rows


def _pm(mean: float, std: float) -> str:
    return "—" if math.isnan(mean) else f"{100 * mean:.1f} ± {100 * std:.1f}"


EFFECT_COLUMNS = ["variant", "against", "folds", "difference (points)", "95% CI (corrected)",
                  "corrected t p (Nadeau-Bengio)", "Holm p", "paired t p (uncorrected)", "Wilcoxon p",
                  "Cohen's dz", "n_test/n_train"]
HOLM_COLUMN = EFFECT_COLUMNS.index("Holm p")


def effect_columns(count: int) -> list[str]:
    """The effect table's columns: the Holm-adjusted p column only when the table has more than one pair."""
    return EFFECT_COLUMNS if count > 1 else EFFECT_COLUMNS[:HOLM_COLUMN] + EFFECT_COLUMNS[HOLM_COLUMN + 1:]


def holm_pvalues(effects: list[tuple[FoldScores, FoldScores, FoldEffect | None]]) -> list[float]:
    """Holm-adjusted corrected-t p-values over the table's pairs (NaN for pairs with no test)."""
    raw = [math.nan if e is None else e.corrected.pvalue for _, _, e in effects]
    return list(adjust_pvalues(raw, "holm"))


def _effect_rows(effects: list[tuple[FoldScores, FoldScores, FoldEffect | None]], holm: list[float]
                 ) -> list[list[str]]:
    rows = []
    for (a, b, e), adjusted in zip(effects, holm, strict=True):
        if e is None:
            rows.append([a.label, b.label, "—", f"not paired: {unpaired_reason(a, b)}",
                         *[""] * (len(EFFECT_COLUMNS) - 4)])
            continue
        c, plain = e.corrected, e.plain.cells()  # plain: difference, CI, t p, Wilcoxon p, dz
        ci = c.note or f"[{100 * c.ci_low:+.2f}, {100 * c.ci_high:+.2f}]"  # degenerate: a note, no p
        rows.append([a.label, b.label, str(c.n), plain[0], ci, p_cell(c.pvalue), p_cell(adjusted), *plain[2:],
                     f"{c.test_train_ratio:.3f} ({e.sizes_source})"])
    if len(effects) <= 1:
        rows = [row[:HOLM_COLUMN] + row[HOLM_COLUMN + 1:] for row in rows]
    return rows


def _test_paragraph(count: int) -> str:
    holm = (f" Holm p: the corrected t p-values adjusted over the table's {count} pairs (Holm 1979), also in "
            "the sentences.") if count > 1 else ""
    return ("Test: the corrected resampled t-test (Nadeau & Bengio 2003, Machine Learning 52): the fold models' "
            "training sets overlap, so the fold differences are correlated and the plain paired t-test is too "
            "liberal; the variance is inflated by 1/k + n_test/n_train, with k - 1 degrees of freedom. The plain "
            f"paired t p is shown for comparison only.{holm}")


def _plot_folds(variants: list[FoldScores], path: Path) -> Path:
    """Per-fold points, mean bar with 95% CI (when there are enough folds), and the ensemble's test accuracy,
    against 66% and 71.2%, on an accuracy axis from 0."""
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(variants)), 4.2))
    drawn_ci = False
    for i, v in enumerate(variants):
        folds = v.scores.get("val_accuracy", {})
        if not folds:
            continue
        ci = mean_ci(list(folds.values()))
        ax.bar(i, ci.mean, width=0.55, color="C0", alpha=0.35, label="mean val acc" if i == 0 else None)
        if not math.isnan(ci.low):  # no interval below 3 folds: the fold dots are the whole story
            ax.errorbar(i, ci.mean, yerr=[[ci.mean - ci.low], [ci.high - ci.mean]], color="C0", capsize=5,
                        label="95% CI" if not drawn_ci else None)
            drawn_ci = True
        ax.scatter([i] * len(folds), list(folds.values()), color="C0", s=16, zorder=3,
                   label="fold val acc" if i == 0 else None)
        if v.ensemble is not None:
            ax.scatter([i + 0.3], [v.ensemble], marker="*", color="C3", s=90, zorder=3,
                       label="fold ensemble, test" if i == 0 else None)
    ax.set_xticks(range(len(variants)), [v.label for v in variants], rotation=30, ha="right")
    ax.set_ylabel("accuracy")
    ax.set_title("k-fold validation accuracy per variant")
    return finish_plot(fig, ax, path)


def _plot_differences(effects: list[tuple[FoldScores, FoldScores, FoldEffect | None]], path: Path) -> Path:
    """Fold-by-fold differences of each pair with the mean and its corrected 95% CI; zero line = no effect."""
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.5 * len(effects) + 1)))
    for i, (a, b, e) in enumerate(effects):
        if e is None:
            continue
        c = e.corrected
        x, y = a.scores.get("val_accuracy", {}), b.scores.get("val_accuracy", {})
        diffs = [100 * (x[f] - y[f]) for f in sorted(set(x) & set(y))]
        ax.scatter(diffs, [i] * len(diffs), color="C0", s=14, alpha=0.6)
        if not math.isnan(c.ci_low):
            spread = [[100 * (c.mean_diff - c.ci_low)], [100 * (c.ci_high - c.mean_diff)]]
            ax.errorbar(100 * c.mean_diff, i, xerr=spread, fmt="o", color="C3", capsize=4)
    ax.axvline(0, color="grey", lw=1)
    ax.set_yticks(range(len(effects)), [f"{a.label} vs {b.label}" for a, b, _ in effects])
    ax.set_xlabel("difference in validation accuracy (points): dots = folds, red = mean and corrected 95% CI")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def write_kfold_report(target: str, out_dir: str | Path | None = None, tracking_uri: str | None = None) -> Path:
    """Write report.md, report.html and PNGs for a k-fold group or variant, and log them to its run."""
    name, run_id, variants = collect(target, tracking_uri)
    folder = Path(out_dir) if out_dir else path_under(reports_dir(), f"kfold-{name}")  # name: a run's tag
    folder.mkdir(parents=True, exist_ok=True)
    effects = [(a, b, fold_effect(a, b)) for a, b in pairs(variants)]
    images = [_plot_folds(variants, folder / "kfold_accuracy.png")]
    if effects:
        images.append(_plot_differences(effects, folder / "kfold_differences.png"))
    report = Report(f"K-fold report: {name}")
    report.paragraph(f"{variants[0].k} folds, fold assignment {variants[0].folds_digest}; reference lines: 66% "
                     f"(the paper) and 71.2% (Tang 2013, FER2013 winner). {_test_sentence(variants)} Variants on "
                     "different data or different folds are never paired.")
    warnings = caveats([note for v in variants for note in fold_notes(v)])
    if warnings:
        report.heading("Read this first")
        report.bullets(warnings)
    report.table(SUMMARY_COLUMNS, _summary_rows(variants))
    if effects:
        holm = holm_pvalues(effects)
        report.heading("Differences in validation accuracy (paired by fold)")
        report.paragraph(_test_paragraph(len(effects)))
        report.table(effect_columns(len(effects)), _effect_rows(effects, holm))
        report.bullets([e.corrected.sentence(a.label, b.label, p if len(effects) > 1 else None)
                        for (a, b, e), p in zip(effects, holm, strict=True) if e is not None])
    report.heading("Figures")
    report.figures(images)
    written = report.write(folder)
    tracking.log_parent_summary(run_id, {}, files=[*written, *images], artifact_dir="report")
    return folder
