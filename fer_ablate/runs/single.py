"""One tracked training run: resolve data, train, and log everything to MLflow."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fer_ablate import tracking
from fer_ablate.config.errors import ConfigError
from fer_ablate.config.settings import config_hash
from fer_ablate.data import Dataset, load_dataset
from fer_ablate.reports.plots import run_figures
from fer_ablate.tracking.machine_tags import log_machine_tags
from fer_ablate.training import checkpoints
from fer_ablate.training.callbacks import EpochLogger
from fer_ablate.training.hardware import run_machine_tags
from fer_ablate.training.loop import EPOCH_METRICS, precision_origin, train
from fer_ablate.training.metrics import confusion

log = logging.getLogger(__name__)


def default_run_name(cfg: dict[str, Any]) -> str:
    """A name a person can read in the MLflow UI: ``kernel5 · seed 2``."""
    return f"{cfg['variant']} · seed {cfg['train']['seed']}"


def train_and_track(
    cfg: dict[str, Any],
    experiment: str | None = None,
    run_name: str | None = None,
    tracking_uri: str | None = None,
    tags: dict[str, str] | None = None,
    extra_callbacks: list | None = None,
    dataset: Dataset | None = None,
    ctx: tracking.RunContext | None = None,
    resume_run_id: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """Train ``cfg`` as one MLflow run and return ``(run_id, final metrics)``.

    ``ctx`` (a grid's, fold's or study's run context: store, experiment, parent run) wins over
    ``experiment`` and ``tracking_uri``, which a lone ``train`` uses. The tracking store is checked before
    any work; a crash ends the run FAILED, Ctrl-C or SIGTERM KILLED, with everything logged so far.
    Every epoch ends with a checkpoint (``training.checkpoints``, deleted when the run FINISHED);
    ``resume_run_id`` continues that ended run in place from its checkpoint's epoch (``resumable`` finds
    one): per-epoch metrics go on at the next step, and an epoch the checkpoint holds but the store missed
    is logged from the checkpoint. CheckpointMismatch (one line) when it was made for another config or data.
    ``extra_callbacks`` (Keras callbacks) let a driver such as the Optuna objective watch the epochs.
    ``dataset`` (already loaded, e.g. one fold of a k-fold split) replaces loading ``cfg['data']``.
    """
    ctx = ctx or tracking.open_context(experiment, tracking_uri)
    name = run_name or default_run_name(cfg)
    resumed = None
    if resume_run_id:  # checked before the run is touched: a refusal leaves it as it was
        dataset = dataset or load_dataset(cfg["data"])
        resumed = _check_resumable(resume_run_id, cfg, dataset)
    with tracking.tracked_run(ctx.experiment_id, name, tags, ctx.parent_run_id, resume_run_id) as run:
        run_id = run.info.run_id
        digest = tracking.log_config(cfg, config_hash(cfg))
        tracking.set_run_tags(run_id, selection_tags(cfg["train"]))  # at the start: a KILLED run says it too
        machine = run_machine_tags(cfg["train"])  # backend, devices, CPU flags, precision
        if cfg["train"]["precision"] != "auto":  # who set it: read once per run (variants file), not per log line
            machine["precision_reason"] = precision_origin(cfg)
            log.info("train.precision %s: %s", cfg["train"]["precision"], machine["precision_reason"])
        log_machine_tags(machine)
        log.info("run %s: variant %s, config %s", run_id, cfg["variant"], digest)
        dataset = dataset or load_dataset(cfg["data"])
        tracking.log_dataset(dataset)
        path = checkpoints.checkpoint_path(run_id)
        if resumed:
            _log_missing_epochs(run_id, resumed)
            tracking.set_run_tags(run_id, {f"resume.{run.data.tags['resumes']}.from_epoch": resumed.epoch})
            log.info("run %s resumes after epoch %d of %d", run_id, resumed.epoch, cfg["train"]["epochs"])
        result = train(cfg, dataset, callbacks=[EpochLogger(tracking.log_metrics), *(extra_callbacks or [])],
                       checkpoint=path)
        _log_result(result, cfg["variant"], dataset.digest)
        tracking.set_run_tags(run_id, {"degenerate": str(result.degenerate).lower(),
                                       "degenerate_reason": result.degenerate_reason})
        summary = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()
                            if k.endswith(("_accuracy", "_macro_f1")))
        log.info("run %s finished: %s", run_id, summary)
        for warning in caveats(result, dataset):
            log.warning("run %s: %s", run_id, warning)
    checkpoints.remove(path)  # FINISHED: the run's state is in the store now
    return run_id, result.metrics


def resume_run(run_id: str, tracking_uri: str | None = None) -> tuple[str, dict[str, Any]]:
    """``fer-ablate train --resume RUN_ID``: continue an ended run (KILLED, or FAILED) in place from its
    checkpoint, with the config it logged (``config.yaml``, checked again) and under its own experiment and
    parent. Returns ``(run_id, final metrics)``. Raises ConfigError (one line) for an unknown run, one without a
    checkpoint here, a run still RUNNING or FINISHED, or a checkpoint made for another config or data."""
    import yaml

    from fer_ablate.config.settings import validate

    ctx = tracking.open_context(tracking_uri=tracking_uri)
    try:
        run = tracking.get_run(run_id)
    except Exception as exc:  # MLflow's "Run with id=... not found" (RESOURCE_DOES_NOT_EXIST)
        raise ConfigError(f"run {run_id}: not found in the tracking store {ctx.tracking_uri} ({exc})") from None
    logged = yaml.safe_load(tracking.read_text(run_id, "config.yaml"))
    cfg = {"variant": logged.get("variant", run.data.tags.get("variant", "")), **validate(logged)}
    ctx = tracking.RunContext(ctx.tracking_uri, run.info.experiment_id, run.data.tags.get("mlflow.parentRunId"))
    return train_and_track(cfg, run_name=run.info.run_name, ctx=ctx, resume_run_id=run_id)


def resumable(runs: list[Any]) -> str | None:
    """The run id a rerun continues among ``runs`` (one child's earlier attempts, any order): the newest that
    ended KILLED or FAILED by its machine (``tracking.resumable_status``) and left a checkpoint here; None
    when there is none (the rerun starts a new run: without a checkpoint its logged epochs would repeat)."""
    candidates = [r for r in runs
                  if tracking.resumable_status(r) and checkpoints.checkpoint_path(r.info.run_id).exists()]
    return max(candidates, key=lambda r: r.info.start_time).info.run_id if candidates else None


def _check_resumable(run_id: str, cfg: dict[str, Any], dataset: Dataset) -> checkpoints.TrainingState:
    """The checkpoint's record of run ``run_id``, once it is known to fit ``cfg`` and ``dataset``; ConfigError."""
    path = checkpoints.checkpoint_path(run_id)
    if not path.exists():
        raise ConfigError(f"run {run_id}: no checkpoint at {path} to resume from (a run resumes on the machine "
                          "that trained it, after at least one complete epoch); start a new run instead")
    state = tracking.get_run(run_id)
    if state.info.status not in ("KILLED", "FAILED"):
        raise ConfigError(f"run {run_id} is {state.info.status}: only a KILLED or FAILED run can be resumed")
    state = checkpoints.read_state(path)
    checkpoints.check_fingerprint(state, checkpoints.fingerprint(cfg, dataset.digest), path)
    return state


def _log_missing_epochs(run_id: str, state: checkpoints.TrainingState) -> None:
    """Epochs the checkpoint holds whose metrics never reached the store (killed between the two writes)."""
    logged = tracking.metric_history(run_id, EPOCH_METRICS["loss"])
    for step in range(1, state.epoch + 1):
        if step not in logged:
            tracking.log_metrics({EPOCH_METRICS[k]: values[step - 1] for k, values in state.history.items()
                                  if k in EPOCH_METRICS and len(values) >= step}, step)


def caveats(result: Any, dataset: Dataset) -> list[str]:
    """Warning lines a person must see at the end of a run: a degenerate model, a toy run on synthetic faces."""
    lines = []
    if result.degenerate:
        lines.append(f"DEGENERATE model (validation: {result.degenerate_reason}): it has not learned to tell "
                     "expressions apart (tag degenerate=true)")
    if dataset.source == "synthetic":
        lines.append(f"trained {result.epochs_run} epoch(s) on the built-in synthetic faces: a check of the "
                     "machinery, not a result about real faces (put FER2013 in data/ or pass --data)")
    return lines


def _log_result(result: Any, variant: str, data_digest: str) -> None:
    """Confusion matrices and figures are made here (tracking records, it neither computes nor plots); the
    validation and test predictions go to ``predictions/<split>.npz`` with ``data_digest``."""
    matrices = {split: confusion(y, probs) for split, (y, probs) in result.predictions.items()}
    with tempfile.TemporaryDirectory() as tmp:
        tracking.log_result(result, matrices, run_figures(matrices, result.history, variant, Path(tmp)),
                            data_digest)


def selection_tags(train_cfg: dict[str, Any]) -> dict[str, str]:
    """Which split chose what in a run, as tags: ``selected_on.checkpoint`` (the restored best epoch),
    ``.early_stopping``, ``.plateau`` (ReduceLROnPlateau) and ``.schedule``, each ``validation`` or ``none``
    (not chosen by any split), and ``selected_on``: ``validation`` when any of them is, else ``none``.

    ``training.loop`` gives Keras' ``fit`` only the validation split, and BestWeights and EarlyStopping
    monitor ``val_accuracy``, ReduceLROnPlateau ``val_loss``; the test split is predicted once, after
    training, so no value here is ever ``test``. ``none``: ``restore_best: false`` keeps the last epoch,
    ``early_stopping_patience: 0`` and ``reduce_lr_on_plateau: false`` switch those off, and every
    ``lr_schedule`` (constant, cosine by step, cosine_time by wall clock) ignores the data.
    """
    parts = {
        "selected_on.checkpoint": "validation" if train_cfg["restore_best"] else "none",
        "selected_on.early_stopping": "validation" if train_cfg["early_stopping_patience"] > 0 else "none",
        "selected_on.plateau": "validation" if train_cfg["reduce_lr_on_plateau"] else "none",
        "selected_on.schedule": "none",
    }
    return {"selected_on": "validation" if "validation" in parts.values() else "none", **parts}


@dataclass
class ChildOutcome:
    """How one child run ended: its MLflow run id, success, a short detail line, its val_accuracy and its
    final metrics (picklable: it travels back from worker processes)."""

    run_id: str
    ok: bool
    detail: str
    value: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def train_child(cfg: dict[str, Any], run_name: str, tags: dict[str, str], ctx: tracking.RunContext,
                dataset: Dataset | None = None, extra_callbacks: list | None = None,
                resume_run_id: str | None = None) -> ChildOutcome:
    """Train one child run of ``ctx.parent_run_id`` (or continue ``resume_run_id``, an earlier attempt with a
    checkpoint); a training error is recorded (run FAILED with its message) and returned, never raised, so
    the caller's loop goes on. Ctrl-C and SIGTERM propagate (the run ends KILLED)."""
    import keras

    try:
        run_id, metrics = train_and_track(cfg, run_name=run_name, tags=tags, ctx=ctx, dataset=dataset,
                                          extra_callbacks=extra_callbacks, resume_run_id=resume_run_id)
        value = metrics.get("val_accuracy")
        floats = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        return ChildOutcome(run_id, True, f"val_accuracy {value:.4f}", value, floats)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        log.exception("run %s failed", run_name)
        return ChildOutcome("", False, f"{type(exc).__name__}: {exc}")
    finally:
        keras.utils.clear_session()
