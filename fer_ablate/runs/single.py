"""One tracked training run: resolve data, train, and log everything to MLflow."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fer_ablate import tracking
from fer_ablate.config.settings import config_hash
from fer_ablate.data import Dataset, load_dataset
from fer_ablate.reports.plots import run_figures
from fer_ablate.tracking.machine_tags import log_machine_tags
from fer_ablate.training.callbacks import EpochLogger
from fer_ablate.training.hardware import run_machine_tags
from fer_ablate.training.loop import precision_origin, train
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
) -> tuple[str, dict[str, Any]]:
    """Train ``cfg`` as one MLflow run and return ``(run_id, final metrics)``.

    ``ctx`` (a grid's, fold's or study's run context: store, experiment, parent run) wins over
    ``experiment`` and ``tracking_uri``, which a lone ``train`` uses. The tracking store is checked before
    any work; a crash ends the run FAILED, Ctrl-C or SIGTERM KILLED, with everything logged so far.
    ``extra_callbacks`` (Keras callbacks) let a driver such as the Optuna objective watch the epochs.
    ``dataset`` (already loaded, e.g. one fold of a k-fold split) replaces loading ``cfg['data']``.
    """
    ctx = ctx or tracking.open_context(experiment, tracking_uri)
    name = run_name or default_run_name(cfg)
    with tracking.tracked_run(ctx.experiment_id, name, tags, ctx.parent_run_id) as run:
        digest = tracking.log_config(cfg, config_hash(cfg))
        machine = run_machine_tags(cfg["train"])  # backend, devices, CPU flags, precision
        if cfg["train"]["precision"] != "auto":  # who set it: read once per run (variants file), not per log line
            machine["precision_reason"] = precision_origin(cfg)
            log.info("train.precision %s: %s", cfg["train"]["precision"], machine["precision_reason"])
        log_machine_tags(machine)
        log.info("run %s: variant %s, config %s", run.info.run_id, cfg["variant"], digest)
        dataset = dataset or load_dataset(cfg["data"])
        tracking.log_dataset(dataset)
        result = train(cfg, dataset, callbacks=[EpochLogger(tracking.log_metrics), *(extra_callbacks or [])])
        _log_result(result, cfg["variant"])
        tracking.set_run_tags(run.info.run_id, {"degenerate": str(result.degenerate).lower(),
                                                "degenerate_reason": result.degenerate_reason})
        summary = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()
                            if k.endswith(("_accuracy", "_macro_f1")))
        log.info("run %s finished: %s", run.info.run_id, summary)
        for warning in caveats(result, dataset):
            log.warning("run %s: %s", run.info.run_id, warning)
    return run.info.run_id, result.metrics


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


def _log_result(result: Any, variant: str) -> None:
    """Confusion matrices and figures are made here (tracking records, it neither computes nor plots)."""
    matrices = {split: confusion(y, probs) for split, (y, probs) in result.predictions.items()}
    with tempfile.TemporaryDirectory() as tmp:
        tracking.log_result(result, matrices, run_figures(matrices, result.history, variant, Path(tmp)))


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
                dataset: Dataset | None = None, extra_callbacks: list | None = None) -> ChildOutcome:
    """Train one child run of ``ctx.parent_run_id``; a training error is recorded (run FAILED with its
    message) and returned, never raised, so the caller's loop goes on. Ctrl-C and SIGTERM propagate (the
    run ends KILLED)."""
    import keras

    try:
        run_id, metrics = train_and_track(cfg, run_name=run_name, tags=tags, ctx=ctx, dataset=dataset,
                                          extra_callbacks=extra_callbacks)
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
