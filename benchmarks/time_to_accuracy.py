"""Validation accuracy against training wall time on FER2013, for variants trained under one time budget.

Each variant is a normal tracked run (``train.time_budget_minutes`` stops it before an epoch that would end
past the budget; every epoch logs ``wall_seconds``). The script prints when each run first reached 60, 63, 66
and 71.2% validation (PublicTest) accuracy and plots the curves, logged to every run as ``time_to_accuracy.png``.

Usage (FER2013 from ../shared; about minutes x variants of wall time, nothing else running):
    python benchmarks/time_to_accuracy.py --variants fast_cpu paper --minutes 60
    python benchmarks/time_to_accuracy.py --variants fast_cpu --minutes 15 --set data.test_fraction=0.1
        # ^ also reports a held-out test split carved from Training (no choice looks at it)
    python benchmarks/time_to_accuracy.py --runs RUN_ID [RUN_ID ...]        # plot finished runs again
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
REAL_FER2013 = ROOT.parent / "shared" / "data" / "fer2013" / "fer2013.csv.gz"
LINES = (0.60, 0.63, 0.66, 0.712)


def train_variants(variants: list[str], minutes: float, data: str, extra: list[str]) -> list[str]:
    from fer_ablate.cli import configure_logging
    from fer_ablate.config.settings import parse_set_args, resolve_config
    from fer_ablate.runs.single import train_and_track

    configure_logging()
    run_ids = []
    for variant in variants:
        cfg = resolve_config(variant, {"data.source": data, "train.time_budget_minutes": minutes,
                                       "train.verbose": 2, **parse_set_args(extra)})
        run_id, metrics = train_and_track(cfg, experiment="time-to-accuracy", run_name=f"{variant} · {minutes:g} min",
                                          tags={"benchmark": "time_to_accuracy"})
        held_out = f", held-out test_accuracy {metrics['test_accuracy']:.4f}" if "test_accuracy" in metrics else ""
        print(f"{variant}: run {run_id}, best val_accuracy {metrics['val_accuracy']:.4f}{held_out}", flush=True)
        run_ids.append(run_id)
    return run_ids


def curves(run_ids: list[str]) -> dict[str, tuple[str, list[float], list[float]]]:
    from fer_ablate import tracking

    tracking.use_store()
    out = {}
    for run_id in run_ids:
        run = tracking.get_run(run_id)
        history = json.loads(tracking.read_text(run_id, "metrics/history.json"))
        tags = run.data.tags  # each run's own machine record: figures of different machine kinds do not mix
        label = (f"{tags.get('variant', run_id[:8])} ({tags.get('machine.cpu_model', '?')}, "
                 f"{tags.get('machine.cpu_flags', '?')}, {tags.get('precision_resolved', '?')})")
        out[run_id] = (label, history["wall_seconds"], history["val_accuracy"])
    return out


def report(data: dict[str, tuple[str, list[float], list[float]]]) -> Path:
    from fer_ablate import tracking
    from fer_ablate.reports.plots import plt, save_figure

    print(f"{'variant':<12} {'epochs':>6} {'minutes':>8} {'best val':>9} " + " ".join(f"{f'@{100 * x:.1f}%':>9}"
                                                                                   for x in LINES))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run_id, (name, seconds, acc) in data.items():
        reached = []
        for line in LINES:
            hit = next((s for s, a in zip(seconds, acc, strict=True) if a >= line), None)
            reached.append("—" if hit is None else f"{hit / 60:.1f} min")
        print(f"{name:<12} {len(acc):>6} {seconds[-1] / 60:>8.1f} {max(acc):>9.4f} " +
              " ".join(f"{r:>9}" for r in reached))
        ax.plot([s / 60 for s in seconds], acc, marker="o", ms=3, label=f"{name} ({run_id[:8]})")
    for line, style in zip(LINES[2:], ("grey", "red"), strict=True):
        ax.axhline(line, color=style, ls=":", label=f"{100 * line:.1f}%")
    ax.set_xlabel("training wall time (min)")
    ax.set_ylabel("validation (PublicTest) accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = save_figure(fig, ROOT / "reports" / "time_to_accuracy.png")
    for run_id in data:
        tracking.log_parent_summary(run_id, {}, files=[path], artifact_dir="plots")
    print(f"plot: {path}")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="*", default=["fast_cpu", "paper"])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--data", default=str(REAL_FER2013))
    parser.add_argument("--set", action="append", default=[], help="extra overrides for every variant")
    parser.add_argument("--runs", nargs="*", default=None, help="plot these finished runs instead of training")
    args = parser.parse_args()
    from machine_header import print_header  # benchmarks/ is sys.path[0] when run as a script

    print_header("time_to_accuracy")
    run_ids = args.runs or train_variants(args.variants, args.minutes, args.data, args.set)
    report(curves(run_ids))


if __name__ == "__main__":
    main()
