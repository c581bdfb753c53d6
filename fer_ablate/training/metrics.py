"""Classification metrics from predicted probabilities: accuracy, macro-F1, per-class recall, confusion."""

from __future__ import annotations

from typing import Any

import numpy as np
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
