"""A run's full training state at the end of every epoch, so a killed run continues where it stopped.

One ``.npz`` file per run (written beside, then ``os.replace``d: a reader sees the old or the new file,
never half of one) holds every variable of the training model (weights, BatchNorm statistics and the
random-seed states of dropout and augmentation), every optimizer variable (step count, moments, learning
rate), the best epoch's weights, and a JSON record: epoch, per-epoch history, best metric and epoch, the
early-stopping, plateau and clock counters, whether training had already stopped, and the fingerprint
(config hash and data digest) that a resume must match. The batch order needs no state: it is a function
of (seed, epoch) (``training.batches``).

Where: ``<cache>/checkpoints/<run id>.npz`` (``paths.cache_dir``: ``$FER_ABLATE_CACHE``), kept until the run
ends FINISHED. Its cost per epoch is measured by ``benchmarks/checkpoint_cost.py``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from fer_ablate.config.errors import ConfigError
from fer_ablate.paths import cache_dir

log = logging.getLogger(__name__)
FORMAT = 1


class CheckpointMismatch(ConfigError):
    """A checkpoint made for another config or other data: resuming from it would mix two runs."""


def checkpoint_path(run_id: str) -> Path:
    """Where run ``run_id``'s checkpoint lives (it may not exist)."""
    return cache_dir() / "checkpoints" / f"{run_id}.npz"


@dataclass
class TrainingState:
    """The JSON part of a checkpoint (the arrays travel beside it)."""

    fingerprint: dict[str, str]
    epoch: int  # epochs completed (the next fit starts at this 0-based epoch)
    history: dict[str, list[float]]  # Keras log name -> one value per completed epoch
    best: float = float("-inf")
    best_epoch: int = 0
    stopped: bool = False  # early stopping or the time budget ended training at ``epoch``
    elapsed: float = 0.0  # training seconds before the stop (the clock and time-based schedules go on)
    first_epoch_seconds: float | None = None
    callbacks: dict[str, dict[str, float]] = field(default_factory=dict)  # early stopping, plateau counters
    format: int = FORMAT


def read_state(path: Path) -> TrainingState:
    """The JSON record of the checkpoint at ``path`` (the arrays are not loaded). Raises ConfigError for a
    file that is not a readable checkpoint of this format, naming it."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            record = json.loads(bytes(archive["state"]).decode())
        state = TrainingState(**record)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a readable fer-ablate checkpoint ({type(exc).__name__}: {exc})") from None
    if state.format != FORMAT:
        raise ConfigError(f"{path}: checkpoint format {state.format}, this version reads {FORMAT}")
    return state


def fingerprint(cfg: dict[str, Any], data_digest: str) -> dict[str, str]:
    """What a checkpoint is valid for: the run's config hash and the digest of the data it trains on."""
    from fer_ablate.config.settings import config_hash

    return {"config_hash": config_hash(cfg), "data_digest": data_digest}


def check_fingerprint(state: TrainingState, expected: dict[str, str], path: Path) -> None:
    """Raise CheckpointMismatch (one line) when the checkpoint was made for another config or data."""
    for key, value in expected.items():
        if state.fingerprint.get(key) != value:
            raise CheckpointMismatch(f"{path}: checkpoint made for {key} {state.fingerprint.get(key)}, this run "
                                     f"has {value}; delete it to start the run afresh, or resume with the "
                                     "config and data it was made with")


# Counters of Keras' own callbacks that decide future epochs; everything else they hold is reset per fit.
STATEFUL_ATTRS = {"EarlyStopping": ("wait", "best", "stopped_epoch", "best_epoch"),
                  "ReduceLROnPlateau": ("wait", "best", "cooldown_counter")}


class EpochCheckpoint(keras.callbacks.Callback):
    """Writes the training state at every epoch's end; on ``on_train_begin`` puts a resumed run's callback
    counters back (Keras' callbacks reset them there, so this one must come after them in the list).

    ``best`` is the run's ``BestWeights``, ``clock`` its ``EpochClock``, ``timed`` a ``TimeCosine`` or None,
    ``stateful`` Keras callbacks whose counters matter (``STATEFUL_ATTRS``). ``resumed`` is the state loaded
    before training, or None for a fresh run.
    """

    def __init__(self, path: Path, fingerprint: dict[str, str], best: Any, clock: Any, timed: Any = None,
                 stateful: list[keras.callbacks.Callback] | None = None, resumed: TrainingState | None = None):
        super().__init__()
        self.path, self.fingerprint, self.best, self.clock, self.timed = path, fingerprint, best, clock, timed
        self.stateful, self.resumed = stateful or [], resumed
        self.history: dict[str, list[float]] = {k: list(v) for k, v in (resumed.history if resumed else {}).items()}
        self.seconds_writing = 0.0

    def on_train_begin(self, logs=None):
        state = self.resumed
        if state is None:
            return
        for cb in self.stateful:
            for attr, value in state.callbacks.get(type(cb).__name__, {}).items():
                setattr(cb, attr, value)
        now = time.perf_counter()
        self.clock.started, self.clock.last_end = now - state.elapsed, state.elapsed
        self.clock.first_epoch_seconds = state.first_epoch_seconds
        if self.timed is not None:
            self.timed.started = now - state.elapsed

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        state = TrainingState(
            self.fingerprint, epoch + 1, self.history, float(self.best.best), self.best.best_epoch,
            bool(self.model.stop_training), float(self.clock.last_end), self.clock.first_epoch_seconds,
            {type(cb).__name__: {a: float(getattr(cb, a)) for a in STATEFUL_ATTRS[type(cb).__name__]}
             for cb in self.stateful})
        started = time.perf_counter()
        save(self.path, state, self.model, self.best.weights)
        self.seconds_writing += time.perf_counter() - started


def save(path: Path, state: TrainingState, model: keras.Model, best_weights: list[np.ndarray] | None) -> None:
    """Write ``state`` with ``model``'s variables, its optimizer's and ``best_weights`` to ``path``
    atomically (a temporary file in the same folder, then ``os.replace``; removed if the write fails)."""
    arrays: dict[str, Any] = {"state": np.frombuffer(json.dumps(asdict(state)).encode(), np.uint8)}
    arrays |= {f"model_{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(model.variables)}
    arrays |= {f"optimizer_{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(model.optimizer.variables)}
    arrays |= {f"best_{i}": w for i, w in enumerate(best_weights or [])}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as out:
            np.savez(out, **arrays)
            out.flush()
            os.fsync(out.fileno())  # on disk before the rename makes it the checkpoint
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def restore(path: Path, model: keras.Model) -> list[np.ndarray] | None:
    """Put the checkpoint's variables into ``model`` and its (built) optimizer; return the best weights
    saved with it (None when there were none). Raises CheckpointMismatch when the variables' count or
    shapes differ (another architecture)."""
    with np.load(path, allow_pickle=False) as archive:
        for prefix, variables in (("model", model.variables), ("optimizer", model.optimizer.variables)):
            saved = sorted((k for k in archive.files if k.startswith(prefix + "_")), key=lambda k: int(k.split("_")[1]))
            if len(saved) != len(variables):
                raise CheckpointMismatch(f"{path}: {len(saved)} {prefix} variables saved, the model has "
                                         f"{len(variables)}")
            for key, variable in zip(saved, variables, strict=True):
                value = archive[key]
                if tuple(value.shape) != tuple(variable.shape):
                    raise CheckpointMismatch(f"{path}: {prefix} variable {variable.path} is {tuple(variable.shape)}, "
                                             f"the checkpoint holds {tuple(value.shape)}")
                variable.assign(value)
        best = sorted((k for k in archive.files if k.startswith("best_")), key=lambda k: int(k.split("_")[1]))
        return [archive[k] for k in best] or None


def remove(path: Path) -> None:
    """Delete a finished run's checkpoint (a run's whole state: tens of MB for the paper model)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
