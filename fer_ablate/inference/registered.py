"""Registered photo models: ``promote`` a run's Keras model as ``fer-ablate@champion``; load what ``predict``
uses.

``promote`` logs a photo model (the MLflow pyfunc ``PhotoModel``: detection + crop + classification, with a
signature and an input example) into the run, registers it and moves the alias to the new version. The run's
``provenance.TRAINING_TAGS`` (synthetic data, degenerate) travel in the photo model's ``model_config`` and as
tags of the version, so a served model says what it is without the tracking store. The MLflow calls are
``tracking.model_registry``'s; this module knows what a photo model is.
"""

from __future__ import annotations

import base64
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from fer_ablate import tracking
from fer_ablate.inference.keras_model import load_keras_model
from fer_ablate.inference.model_contract import check_model, is_model_file
from fer_ablate.inference.provenance import CONFIG_KEY, TRAINING_TAGS, notices, training_tags
from fer_ablate.inference.pyfunc_model import OUTPUT_COLUMNS, PROB_COLUMNS, FaceClassifier, PhotoModel
from fer_ablate.tracking import model_registry
from fer_ablate.tracking.model_registry import ALIAS, DEFAULT_MODEL_URI, REGISTERED_NAME

__all__ = ["ALIAS", "DEFAULT_MODEL_URI", "REGISTERED_NAME", "load_classifier", "photo_signature", "promote"]
PHOTO_MODEL = "photo_model"
PACKAGE = Path(__file__).resolve().parent.parent  # the whole fer_ablate package travels with the model


def photo_signature() -> Any:
    """Input: rows with ``image`` (base64) or ``pixels`` (FER2013 grey values); params ``tta``, ``crops``."""
    numeric = {"row", "face", "x", "y", "w", "h", "score", *PROB_COLUMNS}  # message, notice: strings
    return model_registry.column_signature(
        inputs=[("string", "image", False), ("string", "pixels", False)],
        outputs=[("double" if c in numeric else "string", c) for c in OUTPUT_COLUMNS],
        params=[("tta", "boolean", False), ("crops", "boolean", False)])


def _example_image() -> str:
    """A tiny grey PNG (no face): enough for MLflow to check that serving the example works."""
    import cv2
    import numpy as np

    ok, png = cv2.imencode(".png", np.full((64, 64), 128, np.uint8))
    return base64.b64encode(png.tobytes()).decode()


def _requirements() -> list[str]:
    """Pins for the serving environment: the versions installed here, of the packages that are installed.

    TensorFlow comes as ``tensorflow-cpu`` on x86 Linux and as ``tensorflow`` elsewhere; pin whichever is present.
    """
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("mlflow", "keras", "tensorflow-cpu", "tensorflow", "opencv-python-headless", "pandas", "numpy",
                    "pillow"):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return pins


def log_photo_model(run_id: str, run_tags: Mapping[str, Any] | None = None) -> str:
    """Log the pyfunc photo model into ``run_id`` (from its Keras model) without changing the run's status;
    return its model URI. The ``provenance.TRAINING_TAGS`` among ``run_tags`` go into its ``model_config``."""
    keras_model = tracking.load_model(f"runs:/{run_id}/{tracking.MODEL_NAME}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        keras_model.save(path)
        return model_registry.log_python_model(
            run_id, PHOTO_MODEL, str(PACKAGE / "inference" / "pyfunc_entry.py"), photo_signature(),
            artifacts={"keras_model": str(path)}, code_paths=[str(PACKAGE)],
            model_config={CONFIG_KEY: training_tags(run_tags or {})},
            input_example=(pd.DataFrame({"image": [_example_image()]}), {"tta": False, "crops": False}),
            pip_requirements=_requirements())


def promote(run_id: str, name: str = REGISTERED_NAME, alias: str = ALIAS, tracking_uri: str | None = None) -> Any:
    """Register the run's photo model as a new version of ``name`` and point ``alias`` at it.

    Raises TrackingError when the run is missing or not FINISHED; the run's status never changes.
    """
    tracking.use_store(tracking_uri)
    run = model_registry.finished_run(run_id)
    return model_registry.register_version(log_photo_model(run_id, run.data.tags), name, alias, run,
                                           metric_tags=("val_accuracy", "test_accuracy"), run_tags=TRAINING_TAGS)


def best_grid_run(experiment_name: str, tracking_uri: str | None = None) -> tuple[str, str]:
    """``(run id, a line describing it)`` of the grid child of experiment file ``experiment_name`` with the
    highest ``val_accuracy`` among FINISHED, non-degenerate runs: chosen on validation, never on test.

    Raises TrackingError when the grid has no such run (none finished, or every one degenerate).
    """
    tracking.use_store(tracking_uri)
    children = tracking.search_runs(tracking.tag_filter({"fer_ablate_kind": "ablation-child",
                                                         "fer_ablate_name": experiment_name}))
    usable = [r for r in children if r.info.status == "FINISHED" and "val_accuracy" in r.data.metrics
              and r.data.tags.get("degenerate") != "true"]
    if not usable:
        raise tracking.TrackingError(
            f"grid '{experiment_name}' has no FINISHED, non-degenerate run with a val_accuracy among its "
            f"{len(children)} run(s) in this store; run: fer-ablate ablate --experiment {experiment_name}")
    best = max(usable, key=lambda r: r.data.metrics["val_accuracy"])
    return best.info.run_id, (f"best of grid '{experiment_name}' on validation: {best.info.run_name} "
                              f"(run {best.info.run_id}, val_accuracy {best.data.metrics['val_accuracy']:.4f})")


def load_classifier(model_uri: str = DEFAULT_MODEL_URI, tta: bool = False, equalize: bool = False,
                    tracking_uri: str | None = None) -> FaceClassifier:
    """A FaceClassifier from a registered photo model (``models:/...``), a run's Keras model or a .keras file.

    ``tta`` and ``equalize`` are the classifier's defaults. Its ``notices`` come from the photo model's carried
    training tags, or from the tags of the run that logged a Keras model; a file has none. Raises
    TrackingError (nothing registered, not a fer-ablate model) or ModelError (a model that breaks the contract).
    """
    if is_model_file(model_uri):
        return FaceClassifier(load_keras_model(model_uri), tta, equalize)
    tracking.use_store(tracking_uri)
    if "keras" in model_registry.model_flavors(model_uri):
        return FaceClassifier(load_keras_model(model_uri), tta, equalize,
                              notices=notices(model_registry.source_run_tags(model_uri)))
    photo = model_registry.load_python_model(model_uri)
    if not isinstance(photo, PhotoModel):
        raise tracking.TrackingError(f"{model_uri} is not a fer-ablate model ({type(photo).__name__})")
    model = check_model(photo.classifier.model, model_uri)
    return FaceClassifier(model, tta, equalize, photo.classifier.detector, photo.classifier.notices)
