"""``fer-ablate evaluate``: a saved model's metrics on every split of a data source."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from fer_ablate.config.settings import load_defaults
from fer_ablate.data import CLASS_NAMES, load_dataset
from fer_ablate.inference.keras_model import load_keras_model
from fer_ablate.inference.model_contract import is_model_file
from fer_ablate.tracking import model_registry
from fer_ablate.training.metrics import evaluation_report


def evaluate_model(model_uri: str, data: str = "auto", skip_bad_rows: bool = False) -> dict[str, Any]:
    """Load ``model_uri`` and return ``{model, data, data_digest, notes, splits: {split: metrics + confusion}}``.

    ``notes`` (a list of one-line strings) says when the data is the model's own training data (see
    ``own_data_note``): its train and validation scores then measure fit, not generalisation.
    """
    data_cfg = {**load_defaults()["data"], "source": data, "skip_bad_rows": skip_bad_rows}
    model = load_keras_model(model_uri)  # a model that breaks the contract fails before the data loads
    dataset = load_dataset(data_cfg, purpose="evaluate")  # a held-out file needs no Training rows
    splits = {}
    for split, (x, y) in dataset.splits.items():
        probs = np.asarray(model.predict(x.astype(np.float32)[..., None], batch_size=256, verbose=0))
        splits[split] = evaluation_report(y, probs)
    note = own_data_note(model_uri, dataset.location, dataset.digest)
    return {"model": model_uri, "data": dataset.location, "data_source": dataset.source,
            "data_digest": dataset.digest, "notes": [note] if note else [], "splits": splits}


def own_data_note(model_uri: str, location: str, digest: str) -> str | None:
    """One line when the data with ``digest`` is what the run behind ``model_uri`` trained on, else None.

    The run's ``data_digest`` tag is compared with ``digest``: equal for a plain run, and for a k-fold child
    (whose digest is ``<data digest[:8]>k<k>f<fold><assignment>``, ``data.folds.fold_dataset``) its first 8
    characters. A local model file names no run, so nothing is said for one.
    """
    if is_model_file(model_uri):
        return None
    tags = model_registry.source_run_tags(model_uri)
    trained_on = tags.get("data_digest", "")
    fold = re.fullmatch(r"([0-9a-f]{8})k\d+f\d+\w*", trained_on)
    if not digest or not (trained_on == digest or (fold and digest.startswith(fold.group(1)))):
        return None
    if fold:  # the folds are made of train (plus validation with --include-validation); a fold chose the epoch
        rows = "its train split (and validation, when the folds pooled it) holds the model's own training rows"
    elif tags.get("selected_on") == "validation":
        rows = "its train split holds the model's own training rows and validation chose its checkpoint"
    else:
        rows = "its train split holds the model's own training rows"
    return (f"note: {location} is the data this model was trained on (data digest {digest}): {rows}; "
            "only test is held out")


def format_report(report: dict[str, Any]) -> str:
    """Human-readable text: notes first, then per split accuracy, macro-F1, per-class recall and the confusion
    matrix."""
    lines = [f"model: {report['model']}", f"data:  {report['data']} ({report['data_source']})",
             *report.get("notes", []), ""]
    for split, m in report["splits"].items():
        lines.append(f"{split} (n={m['n']}): accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}")
        lines.append("  recall: " + "  ".join(f"{c} {m[f'recall_{c}']:.2f}" for c in CLASS_NAMES))
        lines.append("  confusion (rows true, columns predicted):")
        lines.append("  " + " ".join(f"{c[:7]:>8}" for c in ["", *CLASS_NAMES]))
        for name, row in zip(CLASS_NAMES, m["confusion_matrix"], strict=True):
            lines.append("  " + f"{name[:7]:>8} " + " ".join(f"{v:>8}" for v in row))
        lines.append("")
    return "\n".join(lines)
