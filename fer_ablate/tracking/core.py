"""Every MLflow call of the package lives here: store setup, runs, params, metrics, artifacts, models.

Training code never imports mlflow; it receives ``EpochLogger`` as an ordinary Keras callback.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
from mlflow.entities import Param
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import Schema, TensorSpec

from fer_ablate import models  # noqa: F401  (registers the custom layers saved models may hold)
from fer_ablate.config.settings import config_hash, flatten, to_yaml
from fer_ablate.data import CLASS_NAMES, IMAGE_SIZE, NUM_CLASSES, Dataset
from fer_ablate.paths import default_artifact_root, default_tracking_uri, project_root
from fer_ablate.reports.plots import plot_confusion, plot_learning_curves
from fer_ablate.training.metrics import confusion

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per artifact floods logs
log = logging.getLogger(__name__)
DEFAULT_EXPERIMENT = "fer-ablate"
MODEL_NAME = "model"  # artifact name of the logged Keras model: runs:/<id>/model


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be used (unreachable server, bad URI)."""


def model_signature() -> ModelSignature:
    """float32 grey pixels ``[-1, 48, 48, 1]`` (0-255) in, 7 class probabilities out."""
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, IMAGE_SIZE, IMAGE_SIZE, 1), "pixels")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, NUM_CLASSES), "probabilities")]),
    )


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any training, when the tracking server does not answer."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
                if response.status >= 400:
                    raise TrackingError(f"MLflow tracking server {uri} answered HTTP {response.status}")
        except (urllib.error.URLError, OSError) as exc:
            raise TrackingError(
                f"MLflow tracking server {uri} is unreachable ({exc}); start it or set MLFLOW_TRACKING_URI"
            ) from exc
    elif uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).parent
        if not folder.is_dir():
            raise TrackingError(f"tracking store {uri}: folder {folder} does not exist")


def use_store(tracking_uri: str | None = None) -> str:
    """Point MLflow at the store (checked first) without choosing an experiment; return the URI."""
    uri = tracking_uri or default_tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    return uri


def configure(experiment: str = DEFAULT_EXPERIMENT, tracking_uri: str | None = None,
              experiment_id: str | None = None) -> str:
    """Point MLflow at the store (default: the project's SQLite file) and return the experiment id.

    Inside ``mlflow run`` the experiment and tracking URI come from the launcher's environment (read
    once by the caller: MLflow's end_run removes MLFLOW_RUN_ID from the environment). A known
    ``experiment_id`` (a grid's children) is used as is.
    """
    uri = use_store(tracking_uri)
    if experiment_id:
        return experiment_id
    if os.environ.get("MLFLOW_EXPERIMENT_ID") and os.environ.get("MLFLOW_RUN_ID"):
        return os.environ["MLFLOW_EXPERIMENT_ID"]
    try:
        found = mlflow.get_experiment_by_name(experiment)
        if found is not None:
            return found.experiment_id
        artifacts = default_artifact_root() + f"/{experiment}" if uri.startswith("sqlite:") else None
        try:
            return mlflow.create_experiment(experiment, artifact_location=artifacts)
        except mlflow.exceptions.MlflowException:
            # Another machine or worker created it a moment ago (a shared store): use theirs.
            found = mlflow.get_experiment_by_name(experiment)
            if found is None:
                raise
            return found.experiment_id
    except mlflow.exceptions.MlflowException as exc:
        raise TrackingError(f"tracking store {uri}: {exc}") from exc


def git_commit() -> str | None:
    """The project's current git commit (with ``-dirty`` if there are local changes), or None."""
    try:
        root = project_root()
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def active_run_id() -> str | None:
    """The id of the run active in this process, if any."""
    run = mlflow.active_run()
    return run.info.run_id if run else None


def log_parent_summary(run_id: str, metrics: dict[str, float], texts: dict[str, str] | None = None,
                       files: list[Path] | None = None, artifact_dir: str | None = None) -> None:
    """Metrics, text artifacts and files on a parent run that is not active in this process."""
    client = MlflowClient()
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value))
    for name, text in (texts or {}).items():
        client.log_text(run_id, text, name)
    for path in files or []:
        client.log_artifact(run_id, str(path), artifact_dir)


def _param_values(cfg: dict[str, Any]) -> dict[str, str]:
    """Flattened config as MLflow params (lists joined with commas)."""
    return {k: ",".join(map(str, v)) if isinstance(v, list) else str(v) for k, v in flatten(cfg).items()}


def log_config_to(run_id: str, cfg: dict[str, Any]) -> None:
    """The resolved config as params and ``config.yaml`` on a run that is not active (a k-fold parent)."""
    params = [Param(k, v) for k, v in _param_values(cfg).items()]
    client = MlflowClient()
    client.log_batch(run_id, params=params)
    client.log_text(run_id, to_yaml(cfg), "config.yaml")


def log_config(cfg: dict[str, Any]) -> str:
    """Log the resolved config as params and ``config.yaml``; return and tag its hash."""
    digest = config_hash(cfg)
    mlflow.log_params(_param_values(cfg))
    mlflow.log_text(to_yaml(cfg), "config.yaml")
    mlflow.set_tags({"variant": cfg.get("variant", ""), "config_hash": digest})
    commit = git_commit()
    if commit:
        mlflow.set_tags({"git_commit": commit, "mlflow.source.git.commit": commit.removesuffix("-dirty")})
    return digest


def log_dataset(dataset: Dataset) -> None:
    """Data source, digest and split sizes as tags, and the training split as an MLflow dataset input."""
    mlflow.set_tags({
        "data_source": dataset.source,
        "data_location": dataset.location,
        "data_digest": dataset.digest,
        "data_synthetic": str(dataset.source == "synthetic").lower(),
    })
    mlflow.log_params({f"data_n_{split}": n for split, n in dataset.sizes().items()})
    if dataset.skipped:
        mlflow.log_dict(dataset.skipped, "data_skipped_rows.json")
        mlflow.log_metric("data_skipped_rows", sum(dataset.skipped.values()))
    for split, context in (("train", "training"), ("validation", "validation"), ("test", "testing")):
        if split in dataset.splits:
            x, y = dataset.splits[split]
            with warnings.catch_warnings():  # MLflow cannot tell a file path from an artifact path
                warnings.simplefilter("ignore", UserWarning)
                ds = mlflow.data.from_numpy(x[:1].astype(np.float32)[..., None], targets=y[:1],
                                            source=dataset.location, name=f"{dataset.source}-{split}",
                                            digest=f"{dataset.digest}-{split}")
            mlflow.log_input(ds, context=context)


class EpochLogger(keras.callbacks.Callback):
    """Logs ``train_loss``, ``train_accuracy``, ``val_loss``, ``val_accuracy`` and ``lr`` every epoch."""

    def __init__(self, names: dict[str, str]):
        super().__init__()
        self.names = names

    def on_epoch_end(self, epoch, logs=None):
        metrics = {self.names[k]: float(v) for k, v in (logs or {}).items() if k in self.names}
        mlflow.log_metrics(metrics, step=epoch + 1)


def log_result(result: Any, cfg: dict[str, Any]) -> None:
    """Final metrics, cost, confusion matrices, learning curves and the model with its signature.

    Final ``val_accuracy`` etc. share their names with the per-epoch curves; they are logged at the last
    epoch's step (after it), so the run's headline value is the restored best epoch's evaluation.
    """
    step = max(result.epochs_run, 1)
    mlflow.log_metrics({k: v for k, v in result.metrics.items() if isinstance(v, float)}, step=step)
    mlflow.log_metrics({
        "param_count": result.param_count,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "train_seconds": result.train_seconds,
        "images_per_second": result.images_per_second,
    })
    with tempfile.TemporaryDirectory() as tmp:
        for split, (y, probs) in result.predictions.items():
            matrix = confusion(y, probs)
            path = plot_confusion(matrix, f"{cfg.get('variant')} · {split}", Path(tmp) / f"confusion_{split}.png")
            mlflow.log_artifact(str(path), "plots")
            mlflow.log_dict({"classes": list(CLASS_NAMES), "matrix": matrix.tolist()},
                            f"metrics/confusion_{split}.json")
        curves = plot_learning_curves(result.history, f"{cfg.get('variant')} learning curves",
                                      Path(tmp) / "learning_curves.png")
        mlflow.log_artifact(str(curves), "plots")
    mlflow.log_dict(result.history, "metrics/history.json")
    # No input_example: mlflow.keras.save_model writes it before creating its folder (MLflow 3.17).
    mlflow.keras.log_model(
        result.model,
        name=MODEL_NAME,
        signature=model_signature(),
        pip_requirements=[f"keras=={keras.__version__}", f"mlflow=={mlflow.__version__}"],
    )


def load_model(uri: str) -> keras.Model:
    """Load a Keras model from an MLflow model URI (``runs:/...``, ``models:/...``) or a ``.keras`` file."""
    if Path(uri).suffix == ".keras" and Path(uri).is_file():
        return keras.saving.load_model(uri)
    if not mlflow.is_tracking_uri_set():  # a caller that chose a store (e.g. --tracking-uri) keeps it
        mlflow.set_tracking_uri(default_tracking_uri())
    try:
        return mlflow.keras.load_model(uri)
    except mlflow.exceptions.MlflowException as exc:
        raise TrackingError(f"cannot load model {uri}: {exc}") from exc


def get_client() -> MlflowClient:
    """A client on the configured tracking store (for reading runs back)."""
    return MlflowClient()
