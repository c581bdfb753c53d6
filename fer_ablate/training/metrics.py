"""Classification metrics from predicted probabilities: accuracy, macro-F1, per-class recall, confusion."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import confusion_matrix, f1_score, recall_score

from fer_ablate.data import CLASS_NAMES, NUM_CLASSES


def evaluate_probabilities(y_true: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Scalar metrics for one split: ``accuracy``, ``macro_f1`` and ``recall_<class>`` for each class."""
    y_pred = probs.argmax(axis=1)
    labels = list(range(NUM_CLASSES))
    recalls = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    metrics = {
        "accuracy": float((y_pred == y_true).mean()),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
    }
    metrics.update({f"recall_{name}": float(r) for name, r in zip(CLASS_NAMES, recalls, strict=True)})
    return metrics


def confusion(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Confusion matrix (rows: true class, columns: predicted) over all 7 classes."""
    return confusion_matrix(y_true, probs.argmax(axis=1), labels=list(range(NUM_CLASSES)))


def evaluation_report(y_true: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Metrics plus the confusion matrix as nested lists (JSON-ready)."""
    return {**evaluate_probabilities(y_true, probs), "confusion_matrix": confusion(y_true, probs).tolist(),
            "n": int(len(y_true))}


def degenerate_verdict(y_true: np.ndarray, probs: np.ndarray, alpha: float = 0.05) -> tuple[bool, str]:
    """Is a model no better than always answering the commonest class? ``(degenerate, reason)``.

    ``y_true``: int labels ``[n]``; ``probs``: ``[n, 7]`` class probabilities (validation split). Degenerate when
    every prediction falls in one class, or when the accuracy is not significantly above the majority class's
    share of ``y_true`` (one-sided exact binomial test, ``scipy.stats.binomtest``, at level ``alpha``): on 300
    synthetic faces a model at 0.27 against a 0.25 majority is noise, not learning. The reason is a sentence
    for logs and reports; ``""`` for a model that learned something. Raises ValueError for an empty split.
    """
    n = len(y_true)
    if n == 0:
        raise ValueError("degenerate_verdict needs at least one labelled image")
    y_pred = probs.argmax(axis=1)
    counts = np.bincount(y_pred, minlength=NUM_CLASSES)
    majority = int(np.bincount(y_true, minlength=NUM_CLASSES).argmax())
    share = float((y_true == majority).mean())
    correct = int((y_pred == y_true).sum())
    if counts.max() == n:
        only = CLASS_NAMES[int(counts.argmax())]
        return True, f"predicts only '{only}' ({n} of {n} images): accuracy {correct / n:.3f}"
    p_value = binomtest(correct, n, share, alternative="greater").pvalue
    if p_value >= alpha:
        return True, (f"accuracy {correct / n:.3f} is within noise of always answering '{CLASS_NAMES[majority]}' "
                      f"({share:.3f} of {n} images; one-sided binomial p = {p_value:.2f})")
    return False, ""
