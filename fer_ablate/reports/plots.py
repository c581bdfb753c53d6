"""Plotting setup and the figures of one run: confusion matrix and learning curves (matplotlib, PNG).

The one home of the plotting setup: the headless Agg backend is selected here, before pyplot loads, and
every other module (reports, tuning, inference, benchmarks) takes ``plt`` from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fer_ablate.data import CLASS_NAMES  # noqa: E402

PAPER_ACCURACY = 0.66  # Cotigliani et al., final model, validation
TANG_2013_ACCURACY = 0.712  # FER2013 challenge winner
ACCURACY_HEADROOM = 0.05  # above the highest point or the 71.2% line, so neither touches the frame
MAX_MARKERS = 25  # a 100-epoch curve with a dot per epoch is a smear; every k-th epoch keeps ~25 dots


def save_figure(fig, path: Path) -> Path:
    """Lay out, write as PNG (the parent folder created) and close: one place for the figure settings."""
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def epoch_markers(n_points: int) -> dict[str, Any]:
    """``Axes.plot`` keyword arguments for a per-epoch line of ``n_points`` points: a dot per epoch (every
    k-th one beyond ``MAX_MARKERS``), so a 1-epoch run, which draws no line segment, still shows its point."""
    return {"marker": "o", "markersize": 4 if n_points <= MAX_MARKERS else 2.5,
            "markevery": max(1, -(-n_points // MAX_MARKERS))}


def epoch_axis(ax, n_epochs: int) -> None:
    """Label ``ax``'s x axis "epoch", spanning epochs 1..``n_epochs`` with half an epoch either side and
    whole-number ticks (a 1-epoch run would otherwise get ticks 0.96, 0.98, ...)."""
    ax.set_xlabel("epoch")
    ax.set_xlim(0.5, max(n_epochs, 1) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def accuracy_axis(ax) -> None:
    """Make ``ax``'s y axis (accuracy, 0-1) start at 0 and reach past the 71.2% line and every point drawn,
    capped at 1: a bar or dot is read against zero and both baselines, never against a cropped window."""
    top = max(ax.get_ylim()[1], TANG_2013_ACCURACY + ACCURACY_HEADROOM)
    ax.set_ylim(0.0, min(1.0, top))


def finish_plot(fig, ax, path: Path) -> Path:
    """For an accuracy plot: reference lines at 66% (the paper) and 71.2% (Tang 2013), y axis from 0 with
    both lines in view (``accuracy_axis``), legend, grid; save as PNG at ``path`` and close. Returns ``path``."""
    ax.axhline(PAPER_ACCURACY, color="grey", ls=":", label="paper 66%")
    ax.axhline(TANG_2013_ACCURACY, color="red", ls=":", label="Tang 2013 71.2%")
    accuracy_axis(ax)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_confusion(matrix: np.ndarray, title: str, path: Path) -> Path:
    """Row-normalised confusion matrix with counts; rows are true classes."""
    norm = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6, 5.2))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=45, ha="right")
    ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
    for i in range(len(CLASS_NAMES)):
        for j in range(len(CLASS_NAMES)):
            ax.text(j, i, f"{matrix[i, j]}\n{norm[i, j]:.0%}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(fig, path)


def learning_curves_figure(history: dict[str, list[float]], title: str):
    """The learning-curves figure, not yet saved: loss and accuracy per epoch (train and validation), a dot
    per epoch (``epoch_markers``), the 66% and 71.2% lines, accuracy from 0. ``history`` maps a Keras
    metric name to one float per epoch; returns the matplotlib Figure (axes: loss, accuracy)."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, keys in ((ax_loss, ("train_loss", "val_loss")), (ax_acc, ("train_accuracy", "val_accuracy"))):
        for key, style in zip(keys, ("-", "--"), strict=True):
            if history.get(key):
                values = history[key]
                ax.plot(np.arange(1, len(values) + 1), values, style, label=key, **epoch_markers(len(values)))
    ax_acc.axhline(PAPER_ACCURACY, color="grey", lw=0.8, ls=":", label="paper 66%")
    ax_acc.axhline(TANG_2013_ACCURACY, color="red", lw=0.8, ls=":", label="Tang 2013 71.2%")
    accuracy_axis(ax_acc)
    longest = max((len(values) for values in history.values()), default=1)
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        epoch_axis(ax, longest)
        ax.set_ylabel(name)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig


def plot_learning_curves(history: dict[str, list[float]], title: str, path: Path) -> Path:
    """``learning_curves_figure`` written as a PNG at ``path``; returns ``path``."""
    return save_figure(learning_curves_figure(history, title), path)


def run_figures(confusions: dict[str, np.ndarray], history: dict[str, list[float]], variant: str,
                folder: Path) -> list[Path]:
    """The PNGs a training run logs: ``confusion_<split>.png`` per ``[7, 7]`` matrix, ``learning_curves.png``."""
    paths = [plot_confusion(matrix, f"{variant} · {split}", Path(folder) / f"confusion_{split}.png")
             for split, matrix in confusions.items()]
    paths.append(plot_learning_curves(history, f"{variant} learning curves", Path(folder) / "learning_curves.png"))
    return paths
