"""The MLflow model registry and logged models: log a pyfunc model into a finished run without changing its
status, register a version and move an alias, read a model's flavors and its source run's tags, load a pyfunc
model's Python object.

Knows nothing of photos or Keras: ``inference/registered.py`` composes these into ``promote`` and
``load_classifier``, so tracking never imports the inference room.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.environment_variables import MLFLOW_EXPERIMENT_ID
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from fer_ablate.tracking.queries import get_run
from fer_ablate.tracking.store import TrackingError

log = logging.getLogger(__name__)
REGISTERED_NAME = "fer-ablate"
ALIAS = "champion"
DEFAULT_MODEL_URI = f"models:/{REGISTERED_NAME}@{ALIAS}"


def column_signature(inputs: list[tuple[str, str, bool]], outputs: list[tuple[str, str]],
                     params: list[tuple[str, str, Any]]) -> ModelSignature:
    """A pyfunc signature of named columns: inputs ``(type, name, required)``, outputs ``(type, name)``,
    params ``(name, type, default)``; types are MLflow's (``string``, ``double``, ``boolean``...)."""
    return ModelSignature(inputs=Schema([ColSpec(t, n, required=r) for t, n, r in inputs]),
                          outputs=Schema([ColSpec(t, n) for t, n in outputs]),
                          params=ParamSchema([ParamSpec(n, t, d) for n, t, d in params]))


def finished_run(run_id: str) -> Run:
    """The run ``run_id``; TrackingError when it is not in the store or has not FINISHED."""
    run = get_run(run_id)
    if run.info.status != "FINISHED":
        raise TrackingError(f"run {run_id} is {run.info.status}: only a FINISHED run can be promoted")
    return run


def log_python_model(run_id: str, name: str, python_model: str, signature: ModelSignature, **kwargs: Any) -> str:
    """Log a pyfunc model (models-from-code file ``python_model``) into ``run_id``; return its model URI.

    ``kwargs`` go to MLflow (``artifacts``, ``code_paths``, ``input_example``, ``pip_requirements``). The run
    is never started (``Model.log(run_id=...)``): logging into a finished run cannot change its status, even
    when logging fails (an exception there would otherwise end the run FAILED, and a resumed grid would
    train it again). The status is checked afterwards and restored should anything have moved it.
    """
    client = MlflowClient()
    run = client.get_run(run_id)
    status = run.info.status
    exported = os.environ.get(MLFLOW_EXPERIMENT_ID.name)
    try:
        # Model.log puts the logged model in the process's current MLflow experiment (default: "0", whose
        # artifacts land in ./mlruns/0), not the run's. MLflow reads that from MLFLOW_EXPERIMENT_ID when no
        # experiment is active; set it for this call only (set_experiment would stay active and exported,
        # sending every later run of this process, and of its subprocesses, to this experiment).
        os.environ[MLFLOW_EXPERIMENT_ID.name] = run.info.experiment_id
        info = Model.log(artifact_path=None, name=name, flavor=mlflow.pyfunc, run_id=run_id,
                         python_model=python_model, signature=signature, **kwargs)
    finally:
        if exported is None:
            os.environ.pop(MLFLOW_EXPERIMENT_ID.name, None)
        else:
            os.environ[MLFLOW_EXPERIMENT_ID.name] = exported
        if client.get_run(run_id).info.status != status:
            client.set_terminated(run_id, status)
    return info.model_uri


def register_version(model_uri: str, name: str, alias: str, run: Run, metric_tags: tuple[str, ...] = (),
                     run_tags: tuple[str, ...] = ()) -> Any:
    """Register ``model_uri`` as a new version of ``name``, point ``alias`` at it, and tag the version with
    its source run, the run's ``metric_tags`` metrics (4 decimals) and the run's own ``run_tags`` it has;
    return the ModelVersion."""
    client = MlflowClient()
    copied = {key: run.data.tags[key] for key in run_tags if key in run.data.tags}
    version = mlflow.register_model(model_uri, name, tags={"source_run": run.info.run_id, **copied})
    client.set_registered_model_alias(name, alias, version.version)
    for key in metric_tags:
        if key in run.data.metrics:
            client.set_model_version_tag(name, version.version, key, f"{run.data.metrics[key]:.4f}")
    log.info("registered %s version %s from run %s; alias %s -> version %s", name, version.version,
             run.info.run_id, alias, version.version)
    return version


def model_flavors(model_uri: str) -> set[str]:
    """The flavors (``keras``, ``python_function``...) of a logged or registered model.

    Raises TrackingError: "no model registered as ..." (with the command that makes one) when the name,
    version or alias does not exist; MLflow's own words for anything else (an unreachable server...).
    """
    try:
        return set(mlflow.models.get_model_info(model_uri).flavors)
    except MlflowException as exc:
        # Only a missing name, version or alias means "nothing registered"; anything else (a ./mlruns file
        # store that MLflow 3 refuses, an unreachable server) is reported in MLflow's own words.
        missing = exc.error_code == "RESOURCE_DOES_NOT_EXIST" or re.search(r"alias \S+ not found", exc.message)
        if model_uri.startswith("models:/") and missing:
            raise TrackingError(
                f"no model registered as {model_uri} in {mlflow.get_tracking_uri()}: train one "
                "(fer-ablate train ...) and register it with: fer-ablate promote RUN_ID") from exc
        raise TrackingError(f"cannot load model {model_uri} from {mlflow.get_tracking_uri()}: "
                            f"{exc.message}") from exc


def source_run_tags(model_uri: str) -> dict[str, str]:
    """The tags of the run that logged ``model_uri``; {} when the model names no run or the run is gone
    (a model copied from another store), since tags only add caveats and their absence must not stop a load."""
    run_id = mlflow.models.get_model_info(model_uri).run_id
    if not run_id:
        return {}
    try:
        return dict(MlflowClient().get_run(run_id).data.tags)
    except MlflowException as exc:
        log.info("no tags for %s: its run %s cannot be read (%s)", model_uri, run_id, exc.message)
        return {}


def load_python_model(model_uri: str) -> Any:
    """The Python object behind a pyfunc model (``unwrap_python_model``)."""
    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
