"""Training-time augmentation as one Keras layer: flip, rotation, zoom and shift in a single affine warp.

Keras' own ``RandomFlip`` + ``RandomRotation`` + ``RandomZoom`` + ``RandomTranslation`` resample every batch
three times (one projective transform per layer). ``RandomAffine`` draws the same four random choices per
image, composes them into one matrix and resamples once: a third of the interpolation work and one
interpolation blur instead of three (benchmarks/augmentation.py measures both).
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="fer_ablate")
class RandomAffine(keras.layers.Layer):
    """Random mirror, rotation, zoom and shift of ``[batch, height, width, channels]`` images, training only.

    ``rotation`` is a fraction of a full turn (0.03 = up to +-10.8 degrees, as ``keras.layers.RandomRotation``),
    ``zoom`` the largest relative change of scale (0.1 = 0.9x to 1.1x, same factor on both axes), ``shift``
    the largest offset as a fraction of width and height. Pixels from outside the image repeat the nearest
    edge pixel. Computes in float32 whatever the dtype policy, so bf16 training does not round the warp.
    """

    def __init__(self, horizontal_flip: bool = True, rotation: float = 0.0, zoom: float = 0.0, shift: float = 0.0,
                 seed: int | None = None, **kwargs: Any):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        for name, value in (("rotation", rotation), ("zoom", zoom), ("shift", shift)):
            if not 0 <= value < 1:
                raise ValueError(f"RandomAffine: {name} must be in [0, 1), got {value}")
        self.horizontal_flip, self.rotation, self.zoom, self.shift, self.seed = (
            bool(horizontal_flip), float(rotation), float(zoom), float(shift), seed)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = False
        # TensorFlow's warp op (ImageProjectiveTransformV3) has no XLA kernel: tell Keras, which then trains
        # without XLA (with a warning) instead of failing at the first step. JAX's warp compiles.
        self.supports_jit = keras.backend.backend() != "tensorflow"

    def _uniform(self, batch, limit):
        return keras.random.uniform((batch,), -limit, limit, seed=self.seed_generator)

    def transform_matrix(self, batch, height, width):
        """``[batch, 8]`` output-to-input projective rows (the ``keras.ops.image.affine_transform`` convention)."""
        ones = ops.ones((batch,))
        flip = (ops.where(keras.random.uniform((batch,), seed=self.seed_generator) < 0.5, -1.0, 1.0)
                if self.horizontal_flip else ones)
        angle = self._uniform(batch, 2 * math.pi * self.rotation) if self.rotation else 0.0 * ones
        scale = 1.0 + self._uniform(batch, self.zoom) if self.zoom else ones
        shift_x = self._uniform(batch, self.shift * width) if self.shift else 0.0 * ones
        shift_y = self._uniform(batch, self.shift * height) if self.shift else 0.0 * ones
        cos, sin = ops.cos(angle) * scale, ops.sin(angle) * scale
        # input = centre + scale * R(angle) @ diag(flip, 1) @ (output - centre) + shift
        a0, a1, b0, b1 = cos * flip, -sin, sin * flip, cos
        cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
        a2 = cx - a0 * cx - a1 * cy + shift_x
        b2 = cy - b0 * cx - b1 * cy + shift_y
        zeros = 0.0 * ones
        return ops.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)

    def call(self, inputs, training=None):
        if not training:
            return inputs
        shape = ops.shape(inputs)
        return self.warp(inputs, self.transform_matrix(shape[0], inputs.shape[1], inputs.shape[2]))

    @staticmethod
    def warp(images, matrix):
        """Resample ``images`` ``[batch, h, w, c]`` through ``matrix`` ``[batch, 8]`` (the deterministic half of
        ``call``): bilinear, edge pixels repeated. The same numbers on TensorFlow and JAX (tests check both)."""
        return ops.image.affine_transform(images, matrix, interpolation="bilinear", fill_mode="nearest")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "horizontal_flip": self.horizontal_flip, "rotation": self.rotation,
                "zoom": self.zoom, "shift": self.shift, "seed": self.seed}
