"""Custom layers that end up in saved models; importing ``fer_ablate.models`` registers them for loading."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="fer_ablate")
class MirrorAverage(keras.layers.Layer):
    """Test-time flip: at inference, the mean of ``inner``'s outputs for the image and its mirror image.

    In training it is ``inner`` unchanged (augmentation mirrors already). Because the flip lives in the model,
    the validation accuracy Keras reports each epoch, the best-epoch choice, the logged model and the served
    model all include it.
    """

    def __init__(self, inner: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.inner = inner

    def call(self, inputs, training=None):
        if training:
            return self.inner(inputs, training=True)
        mirrored = ops.flip(inputs, axis=2)  # [batch, height, width, channels]: width is axis 2
        return 0.5 * (self.inner(inputs, training=False) + self.inner(mirrored, training=False))

    def compute_output_shape(self, input_shape):
        return self.inner.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "inner": keras.saving.serialize_keras_object(self.inner)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["inner"] = keras.saving.deserialize_keras_object(config["inner"])
        return cls(**config)
