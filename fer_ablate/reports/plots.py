"""Figures for one run: confusion matrix and learning curves (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fer_ablate.data import CLASS_NAMES  # noqa: E402

PAPER_ACCURACY = 0.66  # Cotigliani et al., final model, validation
TANG_2013_ACCURACY = 0.712  # FER2013 challenge winner


def save_figure(fig, path: Path) -> Path:
    """Lay out, write as PNG (the parent folder created) and close: one place for the figure settings."""
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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


def plot_learning_curves(history: dict[str, list[float]], title: str, path: Path) -> Path:
    """Loss and accuracy per epoch (train and validation) with the 66% and 71.2% reference lines."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = np.arange(1, len(history.get("train_loss", [])) + 1)
    for key, style in (("train_loss", "-"), ("val_loss", "--")):
        if key in history:
            ax_loss.plot(epochs, history[key], style, label=key)
    for key, style in (("train_accuracy", "-"), ("val_accuracy", "--")):
        if key in history:
            ax_acc.plot(epochs, history[key], style, label=key)
    ax_acc.axhline(PAPER_ACCURACY, color="grey", lw=0.8, ls=":", label="paper 66%")
    ax_acc.axhline(TANG_2013_ACCURACY, color="red", lw=0.8, ls=":", label="Tang 2013 71.2%")
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return save_figure(fig, path)


def run_figures(confusions: dict[str, np.ndarray], history: dict[str, list[float]], variant: str,
                folder: Path) -> list[Path]:
    """The PNGs a training run logs: ``confusion_<split>.png`` per ``[7, 7]`` matrix, ``learning_curves.png``."""
    paths = [plot_confusion(matrix, f"{variant} · {split}", Path(folder) / f"confusion_{split}.png")
             for split, matrix in confusions.items()]
    paths.append(plot_learning_curves(history, f"{variant} learning curves", Path(folder) / "learning_curves.png"))
    return paths
