"""``fer-ablate report``: compare an experiment's variants against the 66% and 71.2% baselines.

Built only from tracked runs: the latest parent run of the experiment (its ``run_list.json`` says what
was expected) and its children's metrics and artifacts. Works on any MLflow store, no local state.
Writes report.md, a self-contained report.html (images embedded) and PNGs, and logs them to the parent.
"""

from __future__ import annotations

import base64
import html
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fer_ablate import tracking  # noqa: E402
from fer_ablate.data import CLASS_NAMES  # noqa: E402
from fer_ablate.paths import project_root  # noqa: E402
from fer_ablate.reports.plots import PAPER_ACCURACY, TANG_2013_ACCURACY, plot_confusion, save_figure  # noqa: E402
from fer_ablate.reports.stats import mean_std, paired_effect  # noqa: E402

KIND = "ablation"


@dataclass
class VariantRuns:
    """The expected and tracked runs of one variant (label) of an experiment."""

    label: str
    levels: dict[str, str]
    expected_seeds: list[int]
    runs: dict[int, Any] = field(default_factory=dict)  # seed -> latest FINISHED run
    failed: dict[int, str] = field(default_factory=dict)  # seed -> error of the latest failed attempt

    def metric(self, key: str) -> dict[int, float]:
        return {seed: run.data.metrics[key] for seed, run in self.runs.items() if key in run.data.metrics}


def collect(experiment: str, tracking_uri: str | None = None) -> tuple[str, dict[str, Any], list[VariantRuns]]:
    """Parent run id, its run list, and the variants with their finished and failed children."""
    tracking.use_store(tracking_uri)
    client = tracking.get_client()
    all_experiments = [e.experiment_id for e in client.search_experiments()]  # `mlflow run` may pick any
    parents = client.search_runs(all_experiments, f"tags.fer_ablate_kind = '{KIND}' and "
                                 f"tags.fer_ablate_name = '{experiment}'", order_by=["attributes.start_time DESC"])
    if not parents:
        raise tracking.TrackingError(f"no tracked ablation named '{experiment}' in "
                                     f"{tracking.mlflow.get_tracking_uri()}; run: fer-ablate ablate --experiment "
                                     f"{experiment}")
    parent = parents[0]
    experiment_id = parent.info.experiment_id
    plan = json.loads(_read_text(parent.info.run_id, "run_list.json"))
    variants: dict[str, VariantRuns] = {}
    for item in plan["runs"]:
        v = variants.setdefault(item["label"], VariantRuns(item["label"], item["levels"], []))
        v.expected_seeds.append(item["seed"])
    keys = {item["key"] for item in plan["runs"]}
    for run in tracking.child_runs(experiment_id, KIND, experiment):  # newest first
        tags = run.data.tags
        v = variants.get(tags.get("run_label"))
        if v is None or tags.get("child_key") not in keys:
            continue  # a run of an older version of the experiment
        seed = int(tags["seed"])
        if run.info.status == "FINISHED" and seed not in v.runs:
            v.runs[seed] = run
        elif run.info.status != "FINISHED" and seed not in v.runs and seed not in v.failed:
            v.failed[seed] = f"{run.info.status}: {tags.get('error', 'no error recorded')}"
    return parent.info.run_id, plan, list(variants.values())


def _read_text(run_id: str, path: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        local = tracking.get_client().download_artifacts(run_id, path, tmp)
        return Path(local).read_text()


def _read_json(run_id: str, path: str) -> Any:
    """A JSON artifact of a run, or None when it is missing or unreadable (the report says less)."""
    try:
        return json.loads(_read_text(run_id, path))
    except (OSError, ValueError, tracking.mlflow.exceptions.MlflowException):
        return None


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


def effects(variants: list[VariantRuns], sequence: bool) -> list[tuple[str, str, Any]]:
    """Each variant against the base (or, for a sequence, against the previous step), paired by seed."""
    out = []
    for i, v in enumerate(variants[1:], 1):
        ref = variants[i - 1] if sequence else variants[0]
        a, b = v.metric("val_accuracy"), ref.metric("val_accuracy")
        seeds = sorted(set(a) & set(b))
        out.append((v.label, ref.label, paired_effect([a[s] for s in seeds], [b[s] for s in seeds])))
    return out


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


def finish_plot(fig, ax, path: Path) -> Path:
    """Reference lines at 66% (the paper) and 71.2% (Tang 2013), legend, grid; save and close."""
    ax.axhline(PAPER_ACCURACY, color="grey", ls=":", label="paper 66%")
    ax.axhline(TANG_2013_ACCURACY, color="red", ls=":", label="Tang 2013 71.2%")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def _histories(v: VariantRuns) -> list[list[float]]:
    histories = (_read_json(run.info.run_id, "metrics/history.json") for run in v.runs.values())
    return [h["val_accuracy"] for h in histories if h and "val_accuracy" in h]


def _plot_curves(variants: list[VariantRuns], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, v in enumerate(variants):
        curves = _histories(v)
        if not curves:
            continue
        length = min(len(c) for c in curves)
        arr = np.array([c[:length] for c in curves])
        epochs = np.arange(1, length + 1)
        ax.plot(epochs, arr.mean(axis=0), marker="o" if length < 3 else None, color=f"C{i % 10}", label=v.label)
        if len(curves) > 1:
            ax.fill_between(epochs, arr.min(axis=0), arr.max(axis=0), color=f"C{i % 10}", alpha=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val_accuracy (mean over seeds, band = min-max)")
    return finish_plot(fig, ax, path)


def _plot_recall(variants: list[VariantRuns], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / max(len(variants), 1)
    for i, v in enumerate(variants):
        means = [mean_std(list(v.metric(f"val_recall_{c}").values()))[0] for c in CLASS_NAMES]
        ax.bar(np.arange(len(CLASS_NAMES)) + i * width, np.nan_to_num(means), width, label=v.label)
    ax.set_xticks(np.arange(len(CLASS_NAMES)) + 0.4 - width / 2, CLASS_NAMES)
    ax.set_ylabel("validation recall (mean over seeds)")
    ax.set_title("per-class recall: disgust and fear are where FER models fail")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _confusions(variants: list[VariantRuns], folder: Path) -> list[Path]:
    paths = []
    for v in variants:
        total = np.zeros((len(CLASS_NAMES), len(CLASS_NAMES)), int)
        for run in v.runs.values():
            found = _read_json(run.info.run_id, "metrics/confusion_validation.json")
            if found:
                total += np.array(found["matrix"])
        if total.sum():
            paths.append(plot_confusion(total, f"{v.label}: validation, summed over seeds",
                                        folder / f"confusion_{v.label}.png"))
    return paths


def _markdown(name: str, plan: dict, rows: list[dict], effect_rows: list, images: list[Path]) -> str:
    lines = [f"# Ablation report: {name}", "", plan.get("description", "").strip(), "",
             f"Design: {plan['design']}; base: {plan['base']}; seeds: {plan['seeds']}. Reference lines: "
             "66% (the paper's final model) and 71.2% (Tang 2013, FER2013 winner).", "",
             "| variant | changes | seeds | val acc % | test acc % | val macro-F1 % | params | train s | img/s |"
             " missing or failed |", "|" + "---|" * 10]
    for r in rows:
        ips, secs = r["images_per_second"], r["train_seconds"]
        lines.append(
            f"| {r['variant']} | {r['changes']} | {r['seeds']} | {_fmt(*r['val_accuracy'])} | "
            f"{_fmt(*r['test_accuracy'])} | {_fmt(*r['val_macro_f1'])} | {r['params'] or '—'} | "
            f"{'—' if math.isnan(secs[0]) else f'{secs[0]:.0f}'} | {'—' if math.isnan(ips[0]) else f'{ips[0]:.0f}'} | "
            f"{r['missing'] or ''} |")
    lines += ["", "## Effects on validation accuracy (paired by seed)", "",
              "| variant | against | n | difference (points) | 95% CI | paired t p | Wilcoxon p | Cohen's dz |",
              "|" + "---|" * 8]
    for label, ref, e in effect_rows:
        lines.append(f"| {label} | {ref} | {e.n} | {' | '.join(e.cells())} |")  # degenerate: a note, no p
    lines += [""] + [f"- {e.sentence(label, ref)}" for label, ref, e in effect_rows]
    lines += ["", "## Figures", ""] + [f"![{p.stem}]({p.name})" for p in images]
    return "\n".join(lines) + "\n"


def html_page(markdown_text: str, images: list[Path]) -> str:
    """A self-contained page: the report's tables as preformatted text and every PNG embedded."""
    body = [f"<pre>{html.escape(markdown_text.split('## Figures')[0])}</pre>"]
    for p in images:
        data = base64.b64encode(p.read_bytes()).decode()
        body.append(f'<figure><img alt="{p.stem}" src="data:image/png;base64,{data}"><figcaption>{p.stem}'
                    "</figcaption></figure>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>fer-ablate report</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}pre{white-space:pre-wrap}"
            "img{max-width:100%}</style></head><body>" + "\n".join(body) + "</body></html>")


def write_report(experiment: str, out_dir: str | Path | None = None, tracking_uri: str | None = None) -> Path:
    """Build the report of ``experiment`` (its name in MLflow), write it, and log it to the parent run."""
    name = Path(experiment).stem if experiment.endswith((".yaml", ".yml")) else experiment
    parent, plan, variants = collect(name, tracking_uri)
    folder = Path(out_dir) if out_dir else project_root() / "reports" / name
    folder.mkdir(parents=True, exist_ok=True)
    rows = summary_table(variants)
    effect_rows = effects(variants, sequence=plan["design"] == "sequence")
    images = [_plot_accuracy(variants, folder / "accuracy.png"),
              _plot_curves(variants, folder / "learning_curves.png"),
              _plot_recall(variants, folder / "per_class_recall.png"), *_confusions(variants, folder)]
    markdown_text = _markdown(name, plan, rows, effect_rows, images)
    (folder / "report.md").write_text(markdown_text)
    (folder / "report.html").write_text(html_page(markdown_text, images))
    tracking.log_parent_summary(parent, {}, files=[folder / "report.md", folder / "report.html", *images],
                                artifact_dir="report")
    return folder
