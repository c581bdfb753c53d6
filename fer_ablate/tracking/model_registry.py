"""The model registry: ``promote`` a run's model as ``fer-ablate@champion``; load what ``predict`` uses.

``promote`` logs a photo model (the MLflow pyfunc ``PhotoModel``: detection + crop + classification,
with a signature and an input example) into the run, registers it and moves the alias to the new version.
"""

from __future__ import annotations

import base64
import logging
import re
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from fer_ablate import tracking
from fer_ablate.inference.keras_model import load_keras_model
from fer_ablate.inference.model_contract import check_model, is_model_file
from fer_ablate.inference.pyfunc_model import OUTPUT_COLUMNS, PROB_COLUMNS, FaceClassifier, PhotoModel

log = logging.getLogger(__name__)
REGISTERED_NAME = "fer-ablate"
ALIAS = "champion"
DEFAULT_MODEL_URI = f"models:/{REGISTERED_NAME}@{ALIAS}"
PHOTO_MODEL = "photo_model"


def photo_signature() -> ModelSignature:
    """Input: rows with ``image`` (base64) or ``pixels`` (FER2013 grey values); params ``tta``, ``crops``."""
    inputs = Schema([ColSpec("string", "image", required=False), ColSpec("string", "pixels", required=False)])
    numeric = {"row", "face", "x", "y", "w", "h", "score", *PROB_COLUMNS}
    outputs = Schema([ColSpec("double" if c in numeric else "string", c) for c in OUTPUT_COLUMNS])
    params = ParamSchema([ParamSpec("tta", "boolean", False), ParamSpec("crops", "boolean", False)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def _example_image() -> str:
    """A tiny grey PNG (no face): enough for MLflow to check that serving the example works."""
    import cv2
    import numpy as np

    ok, png = cv2.imencode(".png", np.full((64, 64), 128, np.uint8))
    return base64.b64encode(png.tobytes()).decode()


def log_photo_model(run_id: str) -> str:
    """Log the pyfunc photo model into ``run_id`` (from its Keras model); return its model URI.

    The run is never started (``Model.log(run_id=...)``): logging into a finished run cannot change its
    status, even when logging fails (an exception there would otherwise end the run FAILED, and a resumed
    grid would train it again). The status is checked afterwards and restored should anything have moved it.
    """
    keras_model = tracking.load_model(f"runs:/{run_id}/{tracking.MODEL_NAME}")
    client = tracking.get_client()
    status = client.get_run(run_id).info.status
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.keras"
            keras_model.save(path)
            package = Path(__file__).resolve().parent.parent  # the whole fer_ablate package travels with the model
            info = Model.log(
                artifact_path=None, name=PHOTO_MODEL, flavor=mlflow.pyfunc, run_id=run_id,
                python_model=str(package / "inference" / "pyfunc_entry.py"),
                artifacts={"keras_model": str(path)}, code_paths=[str(package)], signature=photo_signature(),
                input_example=(pd.DataFrame({"image": [_example_image()]}), {"tta": False, "crops": False}),
                pip_requirements=_requirements())
    finally:
        if client.get_run(run_id).info.status != status:
            client.set_terminated(run_id, status)
    return info.model_uri


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


def promote(run_id: str, name: str = REGISTERED_NAME, alias: str = ALIAS, tracking_uri: str | None = None) -> Any:
    """Register the run's photo model as a new version of ``name`` and point ``alias`` at it."""
    tracking.use_store(tracking_uri)
    client = tracking.get_client()
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise tracking.TrackingError(f"run {run_id} not found in {mlflow.get_tracking_uri()}") from exc
    if run.info.status != "FINISHED":
        raise tracking.TrackingError(f"run {run_id} is {run.info.status}: only a FINISHED run can be promoted")
    model_uri = log_photo_model(run_id)
    version = mlflow.register_model(model_uri, name, tags={"source_run": run_id})
    client.set_registered_model_alias(name, alias, version.version)
    for key in ("val_accuracy", "test_accuracy"):
        if key in run.data.metrics:
            client.set_model_version_tag(name, version.version, key, f"{run.data.metrics[key]:.4f}")
    log.info("registered %s version %s from run %s; alias %s -> version %s", name, version.version, run_id, alias,
             version.version)
    return version


def load_classifier(model_uri: str = DEFAULT_MODEL_URI, tta: bool = False, equalize: bool = False,
                    tracking_uri: str | None = None) -> FaceClassifier:
    """A FaceClassifier from a registered photo model (``models:/...``), a run's Keras model or a .keras file."""
    if is_model_file(model_uri):
        return FaceClassifier(load_keras_model(model_uri), tta, equalize)
    tracking.use_store(tracking_uri)
    try:
        flavors = mlflow.models.get_model_info(model_uri).flavors
    except MlflowException as exc:
        # Only a missing name, version or alias means "nothing registered"; anything else (a ./mlruns file
        # store that MLflow 3 refuses, an unreachable server) is reported in MLflow's own words.
        missing = exc.error_code == "RESOURCE_DOES_NOT_EXIST" or re.search(r"alias \S+ not found", exc.message)
        if model_uri.startswith("models:/") and missing:
            raise tracking.TrackingError(
                f"no model registered as {model_uri} in {mlflow.get_tracking_uri()}: train one "
                "(fer-ablate train ...) and register it with: fer-ablate promote RUN_ID") from exc
        raise tracking.TrackingError(f"cannot load model {model_uri} from {mlflow.get_tracking_uri()}: "
                                     f"{exc.message}") from exc
    if "keras" in flavors:
        return FaceClassifier(load_keras_model(model_uri), tta, equalize)
    photo = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    if not isinstance(photo, PhotoModel):
        raise tracking.TrackingError(f"{model_uri} is not a fer-ablate model ({type(photo).__name__})")
    check_model(photo.classifier.model, model_uri)
    photo.classifier.tta, photo.classifier.equalize = tta, equalize
    return photo.classifier
