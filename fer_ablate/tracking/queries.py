"""Reading tracked runs back: find parents by kind and name, read children, artifacts and models.

Reports and resume logic read through these functions only. They look in the MLflow experiment that the
store's rule (``tracking.store``) gives this process, so what a command wrote is where a report looks.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import mlflow
import numpy as np
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fer_ablate.config.names import quote_filter_value
from fer_ablate.paths import default_tracking_uri
from fer_ablate.tracking.store import (
    TrackingError,
    experiment_name,
    launcher_experiment_id,
)

# The values of the ``fer_ablate_kind`` tag: which driver made a parent run (children: ``<kind>-child``).
ABLATION = "ablation"  # runs/grid.py: one parent per experiment file
KFOLD = "kfold"  # runs/cross_validation.py: one parent per variant, one child per fold
KFOLD_GROUP = "kfold-group"  # runs/cross_validation.py: the variants of one experiment file on the same folds
STUDY = "study"  # tuning/study.py: one parent per Optuna study, one child per trial
NEWEST_FIRST = ["attributes.start_time DESC"]
# A parent's run name says its kind ("grid: smoke", "study: smoke"); resume finds parents by tags, not names.
PARENT_LABELS = {ABLATION: "grid", KFOLD: "kfold", KFOLD_GROUP: "kfold group", STUDY: "study"}
log = logging.getLogger(__name__)


def parent_run_name(kind: str, name: str) -> str:
    """The run name of the parent of ``kind`` named ``name``: ``grid: smoke``, ``kfold: kernel3``."""
    return f"{PARENT_LABELS.get(kind, kind)}: {name}"


def project_experiment_ids() -> list[str]:
    """The MLflow experiment(s) the store's rule points this process at, that exist (may be empty)."""
    ids = []
    launched = launcher_experiment_id()
    if launched:
        ids.append(launched)
    found = mlflow.get_experiment_by_name(experiment_name())
    if found is not None and found.experiment_id not in ids:
        ids.append(found.experiment_id)
    return ids


def search_runs(filter_string: str, experiment_ids: list[str] | None = None, newest_first: bool = True,
                max_results: int = 50000) -> list[Run]:
    """Runs matching an MLflow filter (``tags.x = 'y'``, build it with ``tag_filter``) in ``experiment_ids``
    (default: the project's)."""
    ids = project_experiment_ids() if experiment_ids is None else experiment_ids
    if not ids:
        return []
    order = NEWEST_FIRST if newest_first else ["attributes.start_time ASC"]
    return MlflowClient().search_runs(ids, filter_string, order_by=order, max_results=max_results)


def tag_filter(tags: dict[str, str]) -> str:
    """An MLflow filter string matching runs that carry every one of ``tags`` (``tags.k = 'v' and ...``).

    Values are quoted by ``config.names.quote_filter_value`` (a name with ``'`` is put in double quotes;
    MLflow's parser has no escape character); keys are ours. Raises ValueError for a value holding both quotes.
    """
    return " and ".join(f"tags.{key} = {quote_filter_value(str(value))}" for key, value in tags.items())


def find_parent(kind: str, name: str, hint: str) -> Run:
    """The newest parent run of ``kind`` (see the constants above) named ``name`` in the project's experiment.

    Raises TrackingError naming the MLflow experiment searched and ``hint`` (the command that makes such a
    run); when the run exists in another MLflow experiment, the message says which and how to point there.
    """
    query = tag_filter({"fer_ablate_kind": kind, "fer_ablate_name": name})
    found = search_runs(query, max_results=1)
    if found:
        return found[0]
    where = f"MLflow experiment '{experiment_name()}' of {mlflow.get_tracking_uri()}"
    elsewhere = _elsewhere(query)
    if elsewhere:
        raise TrackingError(f"no {kind} run named '{name}' in {where}, but there is one in MLflow experiment "
                            f"'{elsewhere}' (made by `mlflow run` without --experiment-name?): "
                            f"set MLFLOW_EXPERIMENT_NAME='{elsewhere}'")
    raise TrackingError(f"no {kind} run named '{name}' in {where}; run: {hint}")


def _elsewhere(query: str) -> str | None:
    """The name of another MLflow experiment holding a run that matches ``query`` (for the error message)."""
    client = MlflowClient()
    for experiment in client.search_experiments():
        if client.search_runs([experiment.experiment_id], query, max_results=1):
            return experiment.name
    return None


def get_run(run_id: str) -> Run:
    """A run by id; raises TrackingError naming the store when it is not there."""
    try:
        return MlflowClient().get_run(run_id)
    except MlflowException as exc:
        raise TrackingError(f"run {run_id} not found in {mlflow.get_tracking_uri()}") from exc


def read_text(run_id: str, path: str) -> str:
    """A text artifact of a run (``run_list.json``, ``metrics/history.json``); raises TrackingError when absent."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = MlflowClient().download_artifacts(run_id, path, tmp)
        except (OSError, MlflowException) as exc:
            raise TrackingError(f"run {run_id} has no readable artifact {path}: {exc}") from exc
        return Path(local).read_text()


def read_json(run_id: str, path: str) -> Any:
    """A JSON artifact of a run, or None when it is missing or unreadable (callers then say less)."""
    try:
        return json.loads(read_text(run_id, path))
    except (TrackingError, ValueError):
        return None


class Predictions(NamedTuple):
    """One split's per-image predictions of a run (``tracking.read_predictions``)."""

    probs: np.ndarray  # float32 [n, 7], as the model predicted them: argmax agrees with the run's metrics
    labels: np.ndarray  # int64 [n], class ids in data.CLASS_NAMES order
    row_ids: np.ndarray  # int64 [n], each image's position within the split the run held
    data_digest: str  # the run's Dataset.digest: compare before joining two runs' predictions


def read_predictions(run_id: str, split: str) -> Predictions:
    """The per-image predictions a run logged for ``split`` (``validation`` or ``test``), without its model.

    Reads ``predictions/<split>.npz`` (written by ``records.log_predictions``; see there what ``row_ids``
    means). Unpacks as ``probs, labels, row_ids, digest = read_predictions(run_id, "test")``. Raises
    TrackingError (one line) when the run has no such artifact (a run from before it was logged, a failed run,
    a split the data lacked) or the file is not a predictions file.
    """
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = MlflowClient().download_artifacts(run_id, f"predictions/{split}.npz", tmp)
        except (OSError, MlflowException) as exc:
            raise TrackingError(f"run {run_id} has no predictions for split '{split}' "
                                f"(artifact predictions/{split}.npz): {str(exc).splitlines()[0]}") from None
        try:
            with np.load(local, allow_pickle=False) as npz:
                return Predictions(npz["probs"].astype(np.float32), npz["labels"].astype(np.int64),
                                   npz["row_ids"].astype(np.int64), str(npz["data_digest"]))
        except (OSError, ValueError, KeyError) as exc:
            raise TrackingError(f"run {run_id}: predictions/{split}.npz is not a predictions file: {exc}") from None


def load_model(uri: str) -> Any:
    """The Keras model of an MLflow model URI (``runs:/ID/model``, ``models:/NAME@ALIAS``).

    MLflow imports Keras itself, on this call only. Custom layers must be registered first (importing
    ``fer_ablate.models`` does that). Raises TrackingError when the URI cannot be loaded.
    """
    if not mlflow.is_tracking_uri_set():  # a caller that chose a store (e.g. --tracking-uri) keeps it
        mlflow.set_tracking_uri(default_tracking_uri())
    try:
        return mlflow.keras.load_model(uri)
    except MlflowException as exc:
        raise TrackingError(f"cannot load model {uri}: {exc}") from exc


def active_run_id() -> str | None:
    """The id of the run active in this process, if any."""
    run = mlflow.active_run()
    return run.info.run_id if run else None
