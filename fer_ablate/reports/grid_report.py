"""``fer-ablate report``: compare the variants of an experiment file's grid against the 66% and 71.2% baselines.

Built only from tracked runs: the latest parent run of the grid (its ``run_list.json`` says what was
expected) and its children's metrics and artifacts. Works on any MLflow store, no local state. Runs that
trained on different data (``data_digest``) are never paired. Writes report.md, a self-contained
report.html (real tables, images embedded) and PNGs, and logs them to the parent.
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fer_ablate import tracking
from fer_ablate.config.names import path_under, safe_name
from fer_ablate.data import CLASS_NAMES
from fer_ablate.paths import reports_dir
from fer_ablate.reports.caveats import RunNote, caveats
from fer_ablate.reports.document import Report
from fer_ablate.reports.plots import epoch_axis, epoch_markers, finish_plot, plot_confusion, plt, save_figure
from fer_ablate.reports.stats import adjust_pvalues, mean_std, p_cell, paired_effect

KIND = tracking.ABLATION


@dataclass
class VariantRuns:
    """The expected and tracked runs of one variant (label) of an experiment."""

    label: str
    levels: dict[str, str]
    expected_seeds: list[int]
    runs: dict[int, Any] = field(default_factory=dict)  # seed -> latest FINISHED run
    failed: dict[int, str] = field(default_factory=dict)  # seed -> error of the latest failed attempt

    def metric(self, key: str) -> dict[int, float]:
        """Seed -> value of ``key`` over the finished runs that logged it."""
        return {seed: run.data.metrics[key] for seed, run in self.runs.items() if key in run.data.metrics}

    def digests(self) -> dict[int, str]:
        """Seed -> ``data_digest`` tag of the finished run (what the run trained and was scored on)."""
        return {seed: run.data.tags.get("data_digest", "?") for seed, run in self.runs.items()}

    def notes(self) -> list[RunNote]:
        """What each finished run says about itself (degenerate, synthetic, epochs), named ``label · seed N``."""
        return [RunNote.from_run(f"{self.label} · seed {seed}", run) for seed, run in sorted(self.runs.items())]

    def recall(self) -> dict[str, float]:
        """Class -> validation recall (0-1) averaged over seeds, for the classes the runs logged."""
        found = {c: list(self.metric(f"val_recall_{c}").values()) for c in CLASS_NAMES}
        return {c: float(np.mean(vals)) for c, vals in found.items() if vals}


def collect(experiment_file: str, tracking_uri: str | None = None) -> tuple[str, dict[str, Any], list[VariantRuns]]:
    """Parent run id, its run list, and the variants with their finished and failed children.

    ``experiment_file`` is the experiment file's name (``paper_ablation``); its grid's parent run is looked
    up in the MLflow experiment of the store's rule (``tracking.store``). Raises TrackingError when absent.
    """
    tracking.use_store(tracking_uri)
    parent = tracking.find_parent(KIND, experiment_file, f"fer-ablate ablate --experiment {experiment_file}")
    plan = json.loads(tracking.read_text(parent.info.run_id, "run_list.json"))
    variants: dict[str, VariantRuns] = {}
    for item in plan["runs"]:
        v = variants.setdefault(item["label"], VariantRuns(item["label"], item["levels"], []))
        v.expected_seeds.append(item["seed"])
    keys = {item["key"] for item in plan["runs"]}
    for run in tracking.child_runs(parent.info.experiment_id, KIND, experiment_file):  # newest first
        tags = run.data.tags
        v = variants.get(tags.get("run_label"))
        if v is None or tags.get("child_key") not in keys:
            continue  # a run of an older version of the experiment file (or of other data)
        seed = int(tags["seed"])
        if run.info.status == "FINISHED" and seed not in v.runs:
            v.runs[seed] = run
        elif run.info.status != "FINISHED" and seed not in v.runs and seed not in v.failed:
            v.failed[seed] = f"{run.info.status}: {tags.get('error', 'no error recorded')}"
    return parent.info.run_id, plan, list(variants.values())


def _fmt(mean: float, std: float) -> str:
    return "—" if math.isnan(mean) else f"{100 * mean:.1f} ± {100 * std:.1f}"


def summary_table(variants: list[VariantRuns]) -> list[dict[str, Any]]:
    """One row per variant: what it changes, mean ± std over seeds, cost, and what is missing."""
    base = variants[0]
    rows = []
    for v in variants:
        changes = ", ".join(f"{k}={lvl}" for k, lvl in v.levels.items() if base.levels.get(k) != lvl) or "(base)"
        row = {"variant": v.label, "changes": changes, "seeds": f"{len(v.runs)}/{len(v.expected_seeds)}"}
        for key in ("val_accuracy", "test_accuracy", "val_macro_f1", "train_seconds", "images_per_second"):
            row[key] = mean_std(list(v.metric(key).values()))
        params = list(v.metric("param_count").values())
        row["params"] = int(params[0]) if params else None
        missing = sorted(set(v.expected_seeds) - set(v.runs))
        row["missing"] = "; ".join(f"seed {s}: {v.failed.get(s, 'not run')}" for s in missing)
        rows.append(row)
    return rows


def effects(variants: list[VariantRuns], sequence: bool) -> tuple[list[tuple[str, str, Any]], list[str]]:
    """Each variant against the base (or, for a sequence, against the previous step), paired by seed.

    Two runs are paired only when they trained on the same data (equal ``data_digest`` tags); each refused
    pair is returned as a sentence naming both runs and both digests.
    """
    out, refused = [], []
    for i, v in enumerate(variants[1:], 1):
        ref = variants[i - 1] if sequence else variants[0]
        a, b = v.metric("val_accuracy"), ref.metric("val_accuracy")
        da, db = v.digests(), ref.digests()
        seeds = []
        for s in sorted(set(a) & set(b)):
            if da[s] == db[s]:
                seeds.append(s)
            else:
                refused.append(f"{v.label} seed {s} (run {v.runs[s].info.run_id}, data {da[s]}) not paired with "
                               f"{ref.label} seed {s} (run {ref.runs[s].info.run_id}, data {db[s]}): "
                               "different data")
        out.append((v.label, ref.label, paired_effect([a[s] for s in seeds], [b[s] for s in seeds])))
    return out, refused


def data_digests(variants: list[VariantRuns]) -> dict[str, list[str]]:
    """``data_digest`` -> the runs (``label seed N``) that trained on it; more than one key means mixed data."""
    found: dict[str, list[str]] = {}
    for v in variants:
        for seed, digest in v.digests().items():
            found.setdefault(digest, []).append(f"{v.label} seed {seed}")
    return found


def _plot_accuracy(variants: list[VariantRuns], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(variants)), 4.2))
    for i, v in enumerate(variants):
        for key, color, dx in (("val_accuracy", "C0", -0.12), ("test_accuracy", "C1", 0.12)):
            vals = list(v.metric(key).values())
            if not vals:
                continue
            mean, std = mean_std(vals)
            ax.errorbar(i + dx, mean, yerr=std, fmt="o", color=color, capsize=4,
                        label=key if i == 0 else None)
            ax.scatter([i + dx] * len(vals), vals, color=color, alpha=0.35, s=12)
    ax.set_xticks(range(len(variants)), [v.label for v in variants], rotation=30, ha="right")
    ax.set_ylabel("accuracy (mean ± std over seeds; dots = seeds)")
    return finish_plot(fig, ax, path)


def _histories(v: VariantRuns) -> list[list[float]]:
    histories = (tracking.read_json(run.info.run_id, "metrics/history.json") for run in v.runs.values())
    return [h["val_accuracy"] for h in histories if h and "val_accuracy" in h]


def _plot_curves(variants: list[VariantRuns], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    longest = 1
    for i, v in enumerate(variants):
        curves = _histories(v)
        if not curves:
            continue
        length = min(len(c) for c in curves)
        arr = np.array([c[:length] for c in curves])
        epochs, longest = np.arange(1, length + 1), max(longest, length)
        ax.plot(epochs, arr.mean(axis=0), color=f"C{i % 10}", label=v.label, **epoch_markers(length))
        if len(curves) > 1:
            ax.fill_between(epochs, arr.min(axis=0), arr.max(axis=0), color=f"C{i % 10}", alpha=0.15)
    epoch_axis(ax, longest)
    ax.set_ylabel("val_accuracy (mean over seeds, band = min-max)")
    return finish_plot(fig, ax, path)


def recall_summary(recall: dict[str, float]) -> str:
    """What per-class recalls (class -> 0-1) show, from the numbers only: the classes never recalled when
    there are two or more (a model stuck on few classes), else the two lowest and the highest, in percent."""
    if not recall:
        return "no per-class recall logged"
    ranked = sorted(recall.items(), key=lambda item: (item[1], item[0]))
    zero = [c for c, r in ranked if r == 0]
    if len(zero) >= 2:
        recalled = [f"{c} {r:.0%}" for c, r in ranked if r > 0]
        return (f"recall 0% for {len(zero)} of {len(recall)} classes ({', '.join(zero)}); "
                + (f"recalled: {', '.join(recalled)}" if recalled else "no class recalled"))
    low = ", ".join(f"{c} {r:.0%}" for c, r in ranked[:2])
    return f"lowest recall: {low}; highest: {ranked[-1][0]} {ranked[-1][1]:.0%}"


def recall_title(variants: list[VariantRuns]) -> str:
    """The per-class recall figure's title: ``recall_summary`` of the recalls averaged over the variants that
    logged them (what the bars show), never a claim written in advance."""
    per_variant = [v.recall() for v in variants if v.recall()]
    pooled = {c: float(np.mean([r[c] for r in per_variant if c in r])) for c in CLASS_NAMES
              if any(c in r for r in per_variant)}
    over = "seeds" if len(per_variant) == 1 else f"seeds and {len(per_variant)} variants"
    return f"per-class validation recall (mean over {over}): {recall_summary(pooled)}"


def _plot_recall(variants: list[VariantRuns], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / max(len(variants), 1)
    for i, v in enumerate(variants):
        recall = v.recall()
        ax.bar(np.arange(len(CLASS_NAMES)) + i * width, [recall.get(c, 0.0) for c in CLASS_NAMES], width,
               label=v.label)
    ax.set_xticks(np.arange(len(CLASS_NAMES)) + 0.4 - width / 2, CLASS_NAMES)
    ax.set_ylabel("validation recall (mean over seeds)")
    ax.set_ylim(0, 1.05)
    ax.set_title(textwrap.fill(recall_title(variants), 90), fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _confusions(variants: list[VariantRuns], folder: Path) -> list[Path]:
    paths = []
    for v in variants:
        total = np.zeros((len(CLASS_NAMES), len(CLASS_NAMES)), int)
        for run in v.runs.values():
            found = tracking.read_json(run.info.run_id, "metrics/confusion_validation.json")
            if found:
                total += np.array(found["matrix"])
        if total.sum():
            paths.append(plot_confusion(total, f"{v.label}: validation, summed over seeds",
                                        path_under(folder, f"confusion_{v.label}.png")))  # a tag's label
    return paths


SUMMARY_COLUMNS = ["variant", "changes", "seeds", "val acc %", "test acc %", "val macro-F1 %", "params",
                   "train s", "img/s", "missing or failed"]
EFFECT_COLUMNS = ["variant", "against", "n", "difference (points)", "95% CI", "paired t p", "Holm p", "Wilcoxon p",
                  "Cohen's dz"]
HOLM_COLUMN = EFFECT_COLUMNS.index("Holm p")


def effect_table(effect_rows: list[tuple[str, str, Any]]) -> tuple[list[str], list[list[str]], list[str]]:
    """Columns, rows and sentences of the paired effects; with more than one effect the paired t p-values
    are Holm-adjusted over the table (Holm 1979, via ``adjust_pvalues``) in a ``Holm p`` column and the
    sentences, and with one there is no such column."""
    several = len(effect_rows) > 1
    holm = adjust_pvalues([e.t_pvalue for _, _, e in effect_rows], "holm") if several else [None] * len(effect_rows)
    rows, sentences = [], []
    for (label, ref, e), adjusted in zip(effect_rows, holm, strict=True):
        cells = e.cells()  # difference, CI, paired t p, Wilcoxon p, dz
        extra = [p_cell(adjusted)] if several else []
        rows.append([label, ref, str(e.n), *cells[:3], *extra, *cells[3:]])
        sentences.append(e.sentence(label, ref, adjusted=adjusted))
    columns = EFFECT_COLUMNS if several else EFFECT_COLUMNS[:HOLM_COLUMN] + EFFECT_COLUMNS[HOLM_COLUMN + 1:]
    return columns, rows, sentences


def _number(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.0f}"


def build(name: str, plan: dict, variants: list[VariantRuns], images: list[Path]) -> Report:
    """The report's content: summary table, data check, paired effects, figures."""
    rows = summary_table(variants)
    effect_rows, refused = effects(variants, sequence=plan["design"] == "sequence")
    report = Report(f"Ablation report: {name}")
    report.paragraph(plan.get("description", ""))
    report.paragraph(f"Design: {plan['design']}; base: {plan['base']}; seeds: {plan['seeds']}. Reference lines: "
                     "66% (the paper's final model) and 71.2% (Tang 2013, FER2013 winner).")
    warnings = caveats([note for v in variants for note in v.notes()])
    if warnings:
        report.heading("Read this first")
        report.bullets(warnings)
    report.table(SUMMARY_COLUMNS, [
        [r["variant"], r["changes"], r["seeds"], _fmt(*r["val_accuracy"]), _fmt(*r["test_accuracy"]),
         _fmt(*r["val_macro_f1"]), str(r["params"] or "—"), _number(r["train_seconds"][0]),
         _number(r["images_per_second"][0]), r["missing"] or ""] for r in rows])
    digests = data_digests(variants)
    if len(digests) > 1:
        report.heading("Data: the runs did not all train on the same data")
        report.paragraph("Runs on different data are never paired; rerun the grid on one data source.")
        report.bullets([f"data digest {d}: {', '.join(runs)}" for d, runs in digests.items()])
    report.heading("Effects on validation accuracy (paired by seed)")
    columns, table_rows, sentences = effect_table(effect_rows)
    if len(effect_rows) > 1:
        report.paragraph(f"Holm p: the paired t p-values adjusted over this table's {len(effect_rows)} "
                         "comparisons (Holm 1979): reading p < 0.05 in this column keeps the chance of any false "
                         "positive among them at or below 5%.")
    report.table(columns, table_rows)
    report.bullets(sentences + refused)
    recalls = [f"{v.label}: {recall_summary(v.recall())}" for v in variants if v.recall()]
    if recalls:
        report.heading("Per-class validation recall (mean over seeds)")
        report.bullets(recalls)
    report.heading("Figures")
    report.figures(images)
    return report


def write_report(experiment: str, out_dir: str | Path | None = None, tracking_uri: str | None = None) -> Path:
    """Build the report of the grid of experiment file ``experiment`` (a name, or a path whose stem is the
    name), write report.md, report.html and PNGs to ``out_dir`` (default ``reports/<name>/``), log them to
    the grid's parent run under ``report/``, and return the folder. Raises TrackingError when no grid ran."""
    name = safe_name(Path(experiment).stem if experiment.endswith((".yaml", ".yml")) else experiment,
                     "experiment file")  # as load_experiment_file checked it (NFC), and refused before any search
    parent, plan, variants = collect(name, tracking_uri)
    folder = Path(out_dir) if out_dir else path_under(reports_dir(), name)
    folder.mkdir(parents=True, exist_ok=True)
    images = [_plot_accuracy(variants, folder / "accuracy.png"),
              _plot_curves(variants, folder / "learning_curves.png"),
              _plot_recall(variants, folder / "per_class_recall.png"), *_confusions(variants, folder)]
    written = build(name, plan, variants, images).write(folder)
    tracking.log_parent_summary(parent, {}, files=[*written, *images], artifact_dir="report")
    return folder
