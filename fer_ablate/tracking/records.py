"""What a run records: its config, data, per-epoch metrics, final result, figures and model.

Nothing here trains or plots: the caller hands over numbers, texts and already-made figure files. Nor does it
import ``config`` (whose model check loads Keras): the caller computes the config hash.
"""

from __future__ import annotations

import tempfile
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import yaml
from mlflow.entities import Param
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import Schema, TensorSpec

from fer_ablate.data import CLASS_NAMES, IMAGE_SIZE, NUM_CLASSES, Dataset
from fer_ablate.tracking.store import git_commit, source_tags

MODEL_NAME = "model"  # artifact name of the logged Keras model: runs:/<id>/model


def model_signature() -> ModelSignature:
    """float32 grey pixels ``[-1, 48, 48, 1]`` (0-255) in, 7 class probabilities out."""
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, IMAGE_SIZE, IMAGE_SIZE, 1), "pixels")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, NUM_CLASSES), "probabilities")]),
    )


def param_values(cfg: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: dotted keys (``train.epochs``), lists joined with commas."""
    out: dict[str, str] = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(param_values(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return out


def _yaml(cfg: dict[str, Any]) -> str:
    """The ``config.yaml`` artifact: the resolved config in its own key order."""
    return yaml.safe_dump(cfg, sort_keys=False)


def _unlogged_params(run_id: str, params: dict[str, str]) -> dict[str, str]:
    """``params`` less those the run holds already. A resumed run (a k-fold parent, a continued child) may get a
    config that differs only where the config hash does not look (the data's path or spelling, verbosity,
    devices): MLflow refuses to change a param, so the first value stays and the new ones go to the tag
    ``params_on_resume``."""
    client = MlflowClient()
    logged = client.get_run(run_id).data.params
    changed = {k: v for k, v in params.items() if k in logged and logged[k] != v}
    if changed:
        client.set_tag(run_id, "params_on_resume", "; ".join(f"{k}={v}" for k, v in changed.items())[:5000])
    return {k: v for k, v in params.items() if k not in logged}


def log_config_to(run_id: str, cfg: dict[str, Any]) -> None:
    """The resolved config as params, ``config.yaml`` and Source tags on a run not active here (a parent)."""
    client = MlflowClient()
    client.log_batch(run_id, params=[Param(k, v) for k, v in _unlogged_params(run_id, param_values(cfg)).items()])
    client.log_text(run_id, _yaml(cfg), "config.yaml")
    for key, value in source_tags().items():
        client.set_tag(run_id, key, value)


def log_config(cfg: dict[str, Any], config_hash: str) -> str:
    """The active run's resolved config: params, ``config.yaml``, tags ``variant``, ``config_hash`` (computed
    by the caller: ``config.settings.config_hash``), the git commit and the Source column; returns the hash."""
    mlflow.log_params(_unlogged_params(mlflow.active_run().info.run_id, param_values(cfg)))
    mlflow.log_text(_yaml(cfg), "config.yaml")
    mlflow.set_tags({"variant": str(cfg.get("variant", "")), "config_hash": config_hash})
    if mlflow.active_run().data.tags.get("mlflow.source.type") != "PROJECT":  # `mlflow run` filled it
        mlflow.set_tags(source_tags())
    commit = git_commit()
    if commit:
        mlflow.set_tags({"git_commit": commit, "mlflow.source.git.commit": commit.removesuffix("-dirty")})
    return config_hash


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
            try:
                mlflow.log_input(ds, context=context)
            except mlflow.exceptions.MlflowException:
                # Two workers logging the same new dataset at once: one insert loses MLflow's unique
                # (experiment, name, digest) race; by now the row exists, so the retry links to it.
                mlflow.log_input(ds, context=context)


def log_metrics(metrics: dict[str, float], step: int) -> None:
    """Metrics of the active run at ``step`` (an epoch number from 1): what ``EpochLogger`` is given."""
    mlflow.log_metrics(metrics, step=step)


def _pins() -> list[str]:
    """The serving environment of the logged Keras model: the installed keras and mlflow."""
    pins = []
    for package in ("keras", "mlflow"):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return pins


PREDICTION_SPLITS = ("validation", "test")  # the train split's 28,709 rows would be 8x the bytes, for no report


def prediction_artifact(split: str) -> str:
    """Where a run keeps one split's per-image predictions: ``predictions/<split>.npz``."""
    return f"predictions/{split}.npz"


def log_predictions(predictions: dict[str, tuple[np.ndarray, np.ndarray]], data_digest: str,
                    splits: tuple[str, ...] = PREDICTION_SPLITS) -> dict[str, int]:
    """Per-image class probabilities of the active run, one ``predictions/<split>.npz`` per split in ``splits``.

    ``predictions`` maps a split to ``(labels int [n], probabilities float [n, 7])`` (``TrainResult.predictions``).
    Each file (``np.savez_compressed``, read back by ``tracking.read_predictions``) holds ``probs`` float32
    ``[n, 7]`` as predicted, ``labels`` uint8 ``[n]``, ``row_ids`` int32 ``[n]`` and the scalar strings
    ``data_digest`` and ``split``. Not float16: a near-uniform model's probabilities (all ~0.143) tie there
    and flip the argmax (a 1-epoch run's validation accuracy read back as 0.103 against its logged 0.172),
    while float32 costs about 0.1 MB per FER2013 split, under 1% of the paper model's 24 MB of weights.
    ``row_ids`` is each image's position within the split as the run's ``Dataset`` held it (after
    ``data.eval_limit``'s seeded subset; for a k-fold child, the validation split is the held-out fold in pool
    order): the Dataset does not carry source row numbers, so the position together with the digest and the
    logged config identifies the image. Logging again (a resumed run) overwrites the file. Returns the bytes
    written per split.
    """
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for split in splits:
            if split not in predictions:
                continue
            labels, probs = predictions[split]
            path = Path(tmp) / f"{split}.npz"
            np.savez_compressed(path, probs=np.asarray(probs, dtype=np.float32),
                                labels=np.asarray(labels, dtype=np.uint8),
                                row_ids=np.arange(len(labels), dtype=np.int32),
                                data_digest=np.array(data_digest), split=np.array(split))
            sizes[split] = path.stat().st_size
            mlflow.log_artifact(str(path), str(Path(prediction_artifact(split)).parent))
    return sizes


def log_result(result: Any, confusions: dict[str, np.ndarray], figures: list[Path], data_digest: str = "") -> None:
    """Final metrics, cost, confusion matrices, figures, per-image predictions and the model (with its
    signature) of the active run.

    ``result`` is a ``training.loop.TrainResult`` (``metrics``, ``history``, ``model``, ``predictions``, cost
    fields); ``confusions`` maps a split to its ``[7, 7]`` int matrix (rows true); ``figures`` are PNG files the
    caller made, logged under ``plots/``; ``data_digest`` (the run's ``Dataset.digest``) goes into each
    ``predictions/<split>.npz`` (``log_predictions``). Final ``val_accuracy`` etc. share their names with the
    per-epoch curves; they are logged at the last epoch's step, so the run's headline value is the restored
    best epoch's evaluation.
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
    for split, matrix in confusions.items():
        mlflow.log_dict({"classes": list(CLASS_NAMES), "matrix": np.asarray(matrix).tolist()},
                        f"metrics/confusion_{split}.json")
    for path in figures:
        mlflow.log_artifact(str(path), "plots")
    mlflow.log_dict(result.history, "metrics/history.json")
    log_predictions(result.predictions, data_digest)
    # No input_example: mlflow.keras.save_model writes it before creating its folder (MLflow 3.17).
    mlflow.keras.log_model(result.model, name=MODEL_NAME, signature=model_signature(), pip_requirements=_pins())


def log_parent_summary(run_id: str, metrics: dict[str, float], texts: dict[str, str] | None = None,
                       files: list[Path] | None = None, artifact_dir: str | None = None) -> None:
    """Metrics, text artifacts and files on a run that is not active in this process (a parent)."""
    client = MlflowClient()
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value))
    for name, text in (texts or {}).items():
        client.log_text(run_id, text, name)
    for path in files or []:
        client.log_artifact(run_id, str(path), artifact_dir)


def set_run_tags(run_id: str, tags: dict[str, str]) -> None:
    """Tags on a run that is not active here (tags, unlike params, may change: e.g. a study's best trial)."""
    client = MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))
