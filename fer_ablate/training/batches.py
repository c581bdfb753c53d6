"""Training batches whose order is a function of (seed, epoch) alone, so a run resumed at epoch k sees the
same batches as one that never stopped.

Keras' own shuffling of in-memory arrays draws each epoch's permutation from a random state that lives in the
data pipeline (a ``tf.data`` op on TensorFlow, NumPy's global generator on JAX); a resumed process starts that
state afresh and would replay epoch 1's order at epoch k+1. Here epoch ``e``'s permutation is
``numpy.random.default_rng([seed, e])``: nothing to save, identical on both backends.
"""

from __future__ import annotations

import keras
import numpy as np


class EpochBatches(keras.utils.PyDataset):
    """Shuffled full training batches of ``(pixels, one-hot labels, sample weights)``.

    ``x`` is ``uint8 [n, 48, 48]`` (grey faces), ``y`` ``int [n]`` labels in ``0..classes-1``. Each batch is
    ``float32 [batch_size, 48, 48, 1]`` pixels in 0-255 (converted per batch: the whole split as float32 is
    never held), ``float32 [batch_size, classes]`` one-hot labels and ``float32 [batch_size]`` weights
    (``class_weights[label]``, or 1). Only full batches: the ``n % batch_size`` images left over are a
    different few each epoch, and every step has one shape (no retrace or recompile for a short last
    batch). With fewer than ``batch_size`` images, one batch holds them all.

    ``set_epoch(e)`` (the ``ShuffleEpoch`` callback calls it at every epoch's start, before Keras asks for the
    first batch) chooses the permutation ``default_rng([seed, e])``.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, classes: int,
                 class_weights: dict[int, float] | None = None):
        super().__init__()
        self.x, self.y, self.seed, self.classes = x, y, seed, classes
        self.batch_size = min(batch_size, len(y))
        self.weights = (np.array([class_weights.get(c, 1.0) for c in range(classes)], np.float32)
                        if class_weights else np.ones(classes, np.float32))
        self.one_hot = np.eye(classes, dtype=np.float32)
        self.order = np.arange(len(y))
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw epoch ``epoch``'s (0-based) order of the images."""
        self.order = np.random.default_rng([self.seed, epoch]).permutation(len(self.y))

    def __len__(self) -> int:
        return len(self.y) // self.batch_size

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = np.sort(self.order[index * self.batch_size:(index + 1) * self.batch_size])  # sorted: faster gather
        labels = self.y[rows]
        return (self.x[rows].astype(np.float32)[..., None], self.one_hot[labels],
                self.weights[labels])

    @property
    def images_per_epoch(self) -> int:
        """Images seen per epoch: full batches only."""
        return len(self) * self.batch_size


class ShuffleEpoch(keras.callbacks.Callback):
    """Tells ``batches`` which epoch starts (Keras makes the epoch's iterator after ``on_epoch_begin``)."""

    def __init__(self, batches: EpochBatches):
        super().__init__()
        self.batches = batches

    def on_epoch_begin(self, epoch, logs=None):
        self.batches.set_epoch(epoch)
