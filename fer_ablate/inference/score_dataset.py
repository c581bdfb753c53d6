"""``fer-ablate evaluate``: a saved model's metrics on every split of a data source."""

from __future__ import annotations

from typing import Any

import numpy as np

from fer_ablate.config.settings import load_defaults
from fer_ablate.data import CLASS_NAMES, load_dataset
from fer_ablate.inference.keras_model import load_keras_model
from fer_ablate.training.metrics import evaluation_report


def evaluate_model(model_uri: str, data: str = "auto", skip_bad_rows: bool = False) -> dict[str, Any]:
    """Load ``model_uri`` and return ``{model, data, splits: {split: metrics + confusion}}``."""
    data_cfg = {**load_defaults()["data"], "source": data, "skip_bad_rows": skip_bad_rows}
    model = load_keras_model(model_uri)  # a model that breaks the contract fails before the data loads
    dataset = load_dataset(data_cfg, purpose="evaluate")  # a held-out file needs no Training rows
    splits = {}
    for split, (x, y) in dataset.splits.items():
        probs = np.asarray(model.predict(x.astype(np.float32)[..., None], batch_size=256, verbose=0))
        splits[split] = evaluation_report(y, probs)
    return {"model": model_uri, "data": dataset.location, "data_source": dataset.source,
            "data_digest": dataset.digest, "splits": splits}


def format_report(report: dict[str, Any]) -> str:
    """Human-readable text: per split accuracy, macro-F1, per-class recall and the confusion matrix."""
    lines = [f"model: {report['model']}", f"data:  {report['data']} ({report['data_source']})", ""]
    for split, m in report["splits"].items():
        lines.append(f"{split} (n={m['n']}): accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}")
        lines.append("  recall: " + "  ".join(f"{c} {m[f'recall_{c}']:.2f}" for c in CLASS_NAMES))
        lines.append("  confusion (rows true, columns predicted):")
        lines.append("  " + " ".join(f"{c[:7]:>8}" for c in ["", *CLASS_NAMES]))
        for name, row in zip(CLASS_NAMES, m["confusion_matrix"], strict=True):
            lines.append("  " + f"{name[:7]:>8} " + " ".join(f"{v:>8}" for v in row))
        lines.append("")
    return "\n".join(lines)
