"""One training run: ``train(cfg, dataset, callbacks) -> TrainResult``. Knows nothing of MLflow or Optuna.

Callers observe progress through ordinary Keras callbacks (the tracking module supplies one that logs to
MLflow; the tuning module one that reports to Optuna).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from fer_ablate import interrupts
from fer_ablate.data import NUM_CLASSES, Dataset
from fer_ablate.models import MirrorAverage, build_from_config
from fer_ablate.models.augmentation import RandomAffine
from fer_ablate.training import checkpoints
from fer_ablate.training.batches import EpochBatches, ShuffleEpoch
from fer_ablate.training.hardware import choose_device_count, current_machine, resolve_precision
from fer_ablate.training.metrics import degenerate_verdict, evaluate_probabilities

log = logging.getLogger(__name__)
EPOCH_METRICS = {  # Keras log name -> the one name used everywhere (MLflow, reports, Optuna)
    "loss": "train_loss",
    "accuracy": "train_accuracy",
    "val_loss": "val_loss",
    "val_accuracy": "val_accuracy",
    "learning_rate": "lr",
    "wall_seconds": "wall_seconds",  # training time so far: accuracy against time, not only epochs
}


@dataclass
class TrainResult:
    """What one run produced: the inference model, per-epoch history and final metrics per split."""

    model: keras.Model
    history: dict[str, list[float]]
    metrics: dict[str, Any]
    predictions: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    param_count: int = 0
    best_epoch: int = 0
    epochs_run: int = 0
    train_seconds: float = 0.0
    images_per_second: float = 0.0
    precision: str = "float32"  # the dtype policy actually used (``train.precision: auto`` resolved)
    precision_reason: str = ""  # why that policy: the machine's bf16 support, or where the config set it
    devices: int = 1  # data-parallel replicas
    degenerate: bool = False  # validation predictions in one class, or accuracy within noise of the majority
    degenerate_reason: str = ""
    resumed_from: int = 0  # epochs a checkpoint had already done (0: trained from the start)
    checkpoint_seconds: float = 0.0  # time spent writing checkpoints


def build_augmenter(aug_cfg: dict[str, Any], seed: int) -> list[keras.layers.Layer]:
    """Keras preprocessing layers for training batches only (they are identity at inference).

    ``augment.method: single_warp`` (default) is one ``RandomAffine`` layer; ``keras_layers`` is Keras' own
    flip, rotation, zoom and translation layers, one resampling each (the slower, blurrier way).
    """
    if not aug_cfg["enabled"]:
        return []
    if aug_cfg["method"] == "single_warp":
        if not (aug_cfg["horizontal_flip"] or aug_cfg["rotation"] or aug_cfg["zoom"] or aug_cfg["shift"]):
            return []
        return [RandomAffine(aug_cfg["horizontal_flip"], aug_cfg["rotation"], aug_cfg["zoom"], aug_cfg["shift"],
                             seed=seed, name="aug_affine")]
    layers = []
    if aug_cfg["horizontal_flip"]:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed, name="aug_flip"))
    if aug_cfg["rotation"]:
        layers.append(keras.layers.RandomRotation(aug_cfg["rotation"], fill_mode="nearest", seed=seed + 1,
                                                  name="aug_rotation"))
    if aug_cfg["zoom"]:
        layers.append(keras.layers.RandomZoom(aug_cfg["zoom"], fill_mode="nearest", seed=seed + 2,
                                              name="aug_zoom"))
    if aug_cfg["shift"]:
        layers.append(keras.layers.RandomTranslation(aug_cfg["shift"], aug_cfg["shift"], fill_mode="nearest",
                                                     seed=seed + 3, name="aug_shift"))
    return layers


def build_models(cfg: dict[str, Any], precision: str | None = None) -> tuple[keras.Model, keras.Model, int]:
    """(inference model, training model, parameter count of the CNN).

    The inference model takes grey pixels as float32 ``[-1, 48, 48, 1]`` in 0-255 and rescales them
    itself, so every consumer (evaluate, predict, serving) feeds raw pixels. The training model adds
    the augmentation layers in front and shares the same weights. ``precision`` is the Keras dtype policy
    already resolved for this machine (``train`` resolves it once per run); None resolves
    ``train.precision`` here.
    """
    size = cfg["model"]["input_size"]
    precision = precision or resolve_precision(cfg["train"]["precision"])[0]
    # Layers take the dtype policy in force when they are built: set it for this model only.
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(precision)
    try:
        cnn = build_from_config(cfg["model"])
        if cfg["model"]["test_time_flip"]:
            cnn = MirrorAverage(cnn, name="test_time_flip")
        pixels = keras.Input((size, size, 1), name="pixels")
        scaled = keras.layers.Rescaling(1.0 / 255, name="rescale")(pixels)
        inference = keras.Model(pixels, cnn(scaled), name=f"fer_{cfg['model']['name']}")
        x = scaled
        for layer in build_augmenter(cfg["augment"], cfg["train"]["seed"]):
            x = layer(x)
        training = keras.Model(pixels, cnn(x), name="training_graph")
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    return inference, training, inference.count_params()


def _optimizer(train_cfg: dict[str, Any], steps_per_epoch: int) -> keras.optimizers.Optimizer:
    lr: Any = train_cfg["learning_rate"]
    if train_cfg["lr_schedule"] == "cosine":
        # One linear warm-up epoch (Adam's early steps on a fresh BatchNorm net are erratic), then a cosine
        # decay to 1% over the remaining epochs: the whole budget is used, no plateau to wait for.
        total = steps_per_epoch * train_cfg["epochs"]
        warmup = min(steps_per_epoch, total // 10)
        lr = keras.optimizers.schedules.CosineDecay(lr / 10, total - warmup, alpha=0.01, warmup_target=lr,
                                                    warmup_steps=warmup)
    # train.optimizer is a Keras optimizer name from config.settings.OPTIMIZERS (the one list; the schema refuses
    # others), with Keras' defaults (AdamW: weight decay 0.004) except SGD, which gets Nesterov momentum 0.9.
    extra = {"sgd": {"momentum": 0.9, "nesterov": True}}.get(train_cfg["optimizer"], {})
    return keras.optimizers.get({"class_name": train_cfg["optimizer"], "config": {"learning_rate": lr, **extra}})


# Test-only switch: tracing a tiny model's train/test/predict graphs is ~70% of a 1-epoch test run's CPU time
# (10-13 CPU-s each, ~100 such runs in the suite), so the suite trains eagerly except in the tests that are
# about graph mode, XLA or bf16 (tests/conftest.py). Never set it for a real run: eager is far slower there.
RUN_EAGERLY_ENV = "FER_ABLATE_RUN_EAGERLY"


def run_eagerly() -> bool:
    """True when ``$FER_ABLATE_RUN_EAGERLY`` is ``1``/``true`` (tests only); ConfigError for another value."""
    value = os.environ.get(RUN_EAGERLY_ENV, "").strip().lower()
    if value in ("", "0", "false"):
        return False
    if value in ("1", "true"):
        return True
    from fer_ablate.config.settings import ConfigError

    raise ConfigError(f"${RUN_EAGERLY_ENV} must be 0 or 1 (a test-only switch), got {value!r}")


def compile_for_training(model: keras.Model, train_cfg: dict[str, Any], train_images: int) -> None:
    """Compile ``model`` with the configured optimizer, schedule, loss and XLA setting (eager, without XLA,
    under the test-only ``$FER_ABLATE_RUN_EAGERLY``)."""
    eager = run_eagerly()
    model.compile(
        optimizer=_optimizer(train_cfg, max(1, -(-train_images // train_cfg["batch_size"]))),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=train_cfg["label_smoothing"]),
        metrics=["accuracy"],
        jit_compile=False if eager else {"auto": "auto", "xla": True, "no_xla": False}[train_cfg["jit_compile"]],
        run_eagerly=eager,
    )


class TimeCosine(keras.callbacks.Callback):
    """``train.lr_schedule: cosine_time``: the learning rate follows the wall clock, not the step count.

    A linear warm-up from 1/10 of ``peak`` over the first 5% of ``budget_seconds``, then a cosine decay to
    1% of ``peak`` at the budget's end, set before every batch. A step-based schedule sized for N epochs is
    cut mid-decay when the machine is slower than planned (and the time budget stops training early); this
    one ends annealed on any machine.
    """

    WARMUP = 0.05

    def __init__(self, peak: float, budget_seconds: float):
        super().__init__()
        self.peak, self.budget, self.started = peak, budget_seconds, 0.0

    def on_train_begin(self, logs=None):
        self.started = time.perf_counter()

    def rate_at(self, elapsed: float) -> float:
        progress = min(elapsed / self.budget, 1.0)
        if progress < self.WARMUP:
            return self.peak * (0.1 + 0.9 * progress / self.WARMUP)
        cosine = 0.5 * (1 + np.cos(np.pi * (progress - self.WARMUP) / (1 - self.WARMUP)))
        return self.peak * (0.01 + 0.99 * cosine)

    def on_train_batch_begin(self, batch, logs=None):
        self.model.optimizer.learning_rate.assign(self.rate_at(time.perf_counter() - self.started))


class InterruptPoint(keras.callbacks.Callback):
    """Raises a held Ctrl-C or SIGTERM between batches (``fer_ablate.interrupts``): never inside TensorFlow
    or Keras internals, where an exception can leave their state half-done."""

    # Batch *begin* hooks: Keras calls them synchronously, and they leave its asynchronous dispatch of
    # batch-end callbacks (and the device pipelining behind it) as it is. Not at an epoch's end: a signal held
    # there waits for the next begin hook, after the epoch's checkpoint and metrics are written.
    def on_train_batch_begin(self, batch, logs=None):
        interrupts.raise_if_held()

    on_test_batch_begin = on_predict_batch_begin = on_epoch_begin = on_train_batch_begin


class BestWeights(keras.callbacks.Callback):
    """Track the best ``val_accuracy`` epoch; with ``restore`` put its weights back when training ends."""

    def __init__(self, target: keras.Model, restore: bool = True):
        super().__init__()
        self.target, self.restore, self.best, self.best_epoch, self.weights = target, restore, -np.inf, 0, None

    def on_epoch_end(self, epoch, logs=None):
        score = (logs or {}).get("val_accuracy", -np.inf)
        if score > self.best:
            self.best, self.best_epoch = score, epoch + 1
            if self.restore:  # a copy per improvement: 24 MB for the paper model
                self.weights = self.target.get_weights()

    def on_train_end(self, logs=None):
        if self.restore and self.weights is not None:
            self.target.set_weights(self.weights)


class EpochClock(keras.callbacks.Callback):
    """Adds ``learning_rate`` and ``wall_seconds`` to the epoch logs, logs the estimated total time after
    epoch 1, and stops before an epoch that would end past ``budget_seconds`` (0 = no budget)."""

    def __init__(self, epochs: int, budget_seconds: float = 0.0):
        super().__init__()
        self.epochs, self.started, self.first_epoch_seconds = epochs, 0.0, None
        self.budget, self.last_end = budget_seconds, 0.0

    def on_train_begin(self, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        elapsed = time.perf_counter() - self.started
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            logs["wall_seconds"] = elapsed
        epoch_seconds, self.last_end = elapsed - self.last_end, elapsed
        if self.budget and elapsed + epoch_seconds > self.budget and epoch + 1 < self.epochs:
            log.info("time budget: %.1f of %.1f min used after epoch %d; the next epoch would overrun, stopping",
                     elapsed / 60, self.budget / 60, epoch + 1)
            self.model.stop_training = True
        if epoch == 0:
            self.first_epoch_seconds = time.perf_counter() - self.started
            total = self.first_epoch_seconds * self.epochs
            if self.budget and total > self.budget:
                log.info("epoch 1 took %.1f s; the %s time budget allows about %d of the %d epochs",
                         self.first_epoch_seconds, _duration(self.budget), self.budget // self.first_epoch_seconds,
                         self.epochs)
            else:
                log.info("epoch 1 took %.1f s; estimated total for %d epochs: %s",
                         self.first_epoch_seconds, self.epochs, _duration(total))


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def _class_weights(y: np.ndarray) -> dict[int, float]:
    counts = np.bincount(y, minlength=NUM_CLASSES).astype(float)
    weights = len(y) / (NUM_CLASSES * np.maximum(counts, 1))
    return {i: float(w) for i, w in enumerate(weights)}


def _as_input(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32)[..., None]


def train(cfg: dict[str, Any], dataset: Dataset, callbacks: list[keras.callbacks.Callback] | None = None,
          checkpoint: Path | None = None) -> TrainResult:
    """Train the configured model on ``dataset`` and evaluate the best epoch on every split.

    ``train.precision: auto`` resolves for this machine (``TrainResult.precision``); ``train.devices`` above
    one trains data-parallel through Keras' ``DataParallel`` (JAX backend only; ConfigError otherwise).
    ``checkpoint``: a file (``training.checkpoints``) written at every epoch's end; when it exists already,
    training continues from it (``TrainResult.resumed_from`` epochs were done), or CheckpointMismatch (a
    ConfigError) when it was made for another config hash or data digest.
    """
    devices = data_parallel_devices(cfg["train"]["devices"])
    distribution = keras.distribution.DataParallel(devices=devices) if len(devices) > 1 else None
    replicas = max(len(devices), 1)
    precision, reason = resolve_precision(cfg["train"]["precision"])
    machine = current_machine()
    log.info("training on %s (%s backend%s), precision %s: %s", ", ".join(g.name for g in machine.gpus)
             or machine.cpu_model, machine.backend, f", data parallel over {replicas} devices" if replicas > 1
             else "", precision, reason)
    if cfg["train"]["batch_size"] % replicas:
        from fer_ablate.config.settings import ConfigError

        raise ConfigError(f"train.batch_size {cfg['train']['batch_size']} must be a multiple of the "
                          f"{replicas} data-parallel devices (train.devices)")
    # Variables made inside the scope are replicated and each batch is split across the devices.
    with distribution.scope() if distribution else contextlib.nullcontext():
        result = _train(cfg, dataset, callbacks, replicas, precision, checkpoint)
    result.precision, result.precision_reason, result.devices = precision, reason, replicas
    return result


def precision_origin(cfg: dict[str, Any]) -> str:
    """Where a fixed ``train.precision`` came from: the defaults, the variant, or an override (``--set``).

    Only a value the user set is "requested"; the default float32 is a choice made for them.
    """
    from fer_ablate.config.settings import load_defaults, load_variants

    value = cfg["train"]["precision"]
    variant = load_variants().get(cfg.get("variant", ""), {}).get("overrides", {})
    if variant.get("train.precision") == value:
        origin = f"set by variant '{cfg['variant']}'"
    elif load_defaults()["train"]["precision"] == value and "train.precision" not in variant:
        origin = "the default of train.precision"
    else:
        origin = "requested (an override of train.precision)"
    return f"{origin}; train.precision=auto would choose for this machine"


def data_parallel_devices(request: str | int) -> list[str]:
    """Keras device names (``["cpu:0", "cpu:1"]``) for ``train.devices``; ``[]`` means no distribution.

    Raises ConfigError for a bad request or more than one device outside the JAX backend.
    """
    from fer_ablate.config.settings import ConfigError

    backend = keras.backend.backend()
    if str(request).strip().lower() == "auto" and backend != "jax":
        return []  # no device probing: TensorFlow on its own uses every core of one CPU device
    visible = keras.distribution.list_devices() if backend == "jax" else ["cpu:0"]
    accelerators = sum(not d.startswith("cpu") for d in visible)
    try:
        count = choose_device_count(request, backend, len(visible), accelerators)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return visible[:count] if count > 1 else []


def _whole_batches(n: int, replicas: int) -> slice:
    """The first ``n`` rounded down to a multiple of ``replicas``: JAX shards each batch evenly over devices."""
    return slice(0, n - n % replicas)


PREDICT_BATCH = 256


def _predict(model: keras.Model, x: np.ndarray, replicas: int) -> np.ndarray:
    """Probabilities ``[n, 7]`` for every row of ``x``, predicted in whole batches of one shape.

    Every split is padded (its last row repeated) to a multiple of the predict batch, and the padding dropped
    again: one traced predict graph serves every split (each new shape was a retrace, and with a grid's fresh
    model per run TensorFlow warned of "excessive retracing"), and JAX shards every batch evenly over devices.
    """
    batch = PREDICT_BATCH - PREDICT_BATCH % replicas
    pad = -len(x) % batch
    padded = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) if pad else x
    return model.predict(_as_input(padded), batch_size=batch, verbose=0, callbacks=[InterruptPoint()])[:len(x)]


def _train(cfg: dict[str, Any], dataset: Dataset, callbacks: list[keras.callbacks.Callback] | None,
           replicas: int, precision: str, checkpoint: Path | None) -> TrainResult:
    t = cfg["train"]
    keras.utils.set_random_seed(t["seed"])
    inference, training, param_count = build_models(cfg, precision)
    inference.run_eagerly = run_eagerly()  # the test-only switch covers predict too
    compile_for_training(training, t, len(dataset.splits["train"][1]))
    x_train, y_train = dataset.splits["train"]
    x_val, y_val = dataset.splits["validation"]
    if replicas > 1:  # fewer than `replicas` images left out; final metrics use every image
        keep, keep_val = _whole_batches(len(y_train), replicas), _whole_batches(len(y_val), replicas)
        (x_train, y_train), (x_val, y_val) = (x_train[keep], y_train[keep]), (x_val[keep_val], y_val[keep_val])
    batches = EpochBatches(x_train, y_train, t["batch_size"], t["seed"], NUM_CLASSES,
                           _class_weights(y_train) if t["class_weights"] else None)
    best = BestWeights(training, restore=t["restore_best"])
    clock = EpochClock(t["epochs"], 60 * t["time_budget_minutes"])
    timed = TimeCosine(t["learning_rate"], 60 * t["time_budget_minutes"]) if t["lr_schedule"] == "cosine_time" else None
    stateful: list[keras.callbacks.Callback] = []
    if t["reduce_lr_on_plateau"]:
        stateful.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=t["plateau_factor"], patience=t["plateau_patience"], min_lr=t["min_lr"]))
    if t["early_stopping_patience"] > 0:
        stateful.append(keras.callbacks.EarlyStopping(
            monitor="val_accuracy", patience=t["early_stopping_patience"], mode="max"))
    resumed = _resume(checkpoint, cfg, dataset, training, best)
    keras_callbacks: list[keras.callbacks.Callback] = [
        InterruptPoint(), ShuffleEpoch(batches), *([timed] if timed else []), clock, best, *stateful]
    saver = None
    if checkpoint is not None:  # after the callbacks whose state it saves, before the callers' (metrics logged
        # after the checkpoint: a kill between the two re-logs the epoch from the checkpoint, never twice)
        saver = checkpoints.EpochCheckpoint(checkpoint, checkpoints.fingerprint(cfg, dataset.digest), best, clock,
                                            timed, stateful, resumed)
        keras_callbacks.append(saver)
    keras_callbacks.extend(callbacks or [])
    start = time.perf_counter()
    done = resumed.epoch if resumed else 0
    fit_history: dict[str, list[float]] = {}
    if resumed and (resumed.stopped or resumed.epoch >= t["epochs"]):
        log.info("checkpoint: training had ended after epoch %d; evaluating", resumed.epoch)
        best.on_train_end()  # the best epoch's weights, as fit's end would have restored them
    else:
        fit_history = training.fit(
            batches,
            validation_data=(_as_input(x_val), keras.utils.to_categorical(y_val, NUM_CLASSES)),
            epochs=t["epochs"],
            initial_epoch=done,
            shuffle=False,  # the batches shuffle themselves, by (seed, epoch)
            callbacks=keras_callbacks,
            # A live bar in a log file is thousands of carriage returns: one line per epoch there.
            verbose=t["verbose"] if t["verbose"] != 1 or sys.stdout.isatty() else 2,
        ).history
    seconds = time.perf_counter() - start + (resumed.elapsed if resumed else 0.0)
    merged = saver.history if saver else fit_history
    history = {EPOCH_METRICS[k]: [float(v) for v in vals] for k, vals in merged.items() if k in EPOCH_METRICS}
    epochs_run = len(history.get("train_loss", []))
    result = TrainResult(model=inference, history=history, metrics={}, param_count=param_count,
                         best_epoch=best.best_epoch, epochs_run=epochs_run, train_seconds=seconds,
                         images_per_second=batches.images_per_epoch * epochs_run / max(seconds, 1e-9),
                         resumed_from=done, checkpoint_seconds=saver.seconds_writing if saver else 0.0)
    if not t["restore_best"]:
        log.info("train.restore_best is false: evaluating the last epoch's weights (best was epoch %d)",
                 best.best_epoch)
    for split, (x, y) in dataset.splits.items():
        probs = _predict(inference, x, replicas)
        result.predictions[split] = (y, probs)
        for name, value in evaluate_probabilities(y, probs).items():
            result.metrics[f"{_prefix(split)}_{name}"] = value
    result.degenerate, result.degenerate_reason = degenerate_verdict(*result.predictions["validation"])
    return result


def _resume(path: Path | None, cfg: dict[str, Any], dataset: Dataset, training: keras.Model, best: BestWeights
            ) -> checkpoints.TrainingState | None:
    """Load the checkpoint at ``path`` into ``training`` and ``best`` (None when there is none)."""
    if path is None or not path.exists():
        return None
    state = checkpoints.read_state(path)
    checkpoints.check_fingerprint(state, checkpoints.fingerprint(cfg, dataset.digest), path)
    training.optimizer.build(training.trainable_variables)  # its variables exist before the first step
    best.weights = checkpoints.restore(path, training)
    best.best, best.best_epoch = state.best, state.best_epoch
    log.info("checkpoint %s: resuming after epoch %d of %d", path, state.epoch, cfg["train"]["epochs"])
    return state


def _prefix(split: str) -> str:
    return {"validation": "val"}.get(split, split)
