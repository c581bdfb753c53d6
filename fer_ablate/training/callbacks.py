"""Keras callbacks that hand each epoch's numbers to whoever drives training, without knowing who it is."""

from __future__ import annotations

from collections.abc import Callable

import keras

from fer_ablate.training.loop import EPOCH_METRICS


class EpochLogger(keras.callbacks.Callback):
    """Calls ``log_metrics(metrics, step)`` after every epoch, with step = epoch number from 1.

    ``metrics`` holds ``train_loss``, ``train_accuracy``, ``val_loss``, ``val_accuracy``, ``lr`` and
    ``wall_seconds`` (``names`` maps Keras' log names to ours; the default is ``EPOCH_METRICS``), as floats.
    A tracked run passes ``tracking.log_metrics``; a test can pass a list's ``append`` wrapper.
    """

    def __init__(self, log_metrics: Callable[[dict[str, float], int], None], names: dict[str, str] | None = None):
        super().__init__()
        self.log_metrics = log_metrics
        self.names = names or EPOCH_METRICS

    def on_epoch_end(self, epoch, logs=None):
        metrics = {self.names[k]: float(v) for k, v in (logs or {}).items() if k in self.names}
        self.log_metrics(metrics, epoch + 1)
