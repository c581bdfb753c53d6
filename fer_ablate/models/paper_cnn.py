"""The paper's CNN (Cotigliani et al.), built from parameters.

Defaults give the final "12 layers" model: 4 blocks of two 3x3 convs (64, 128, 256, 512 filters), ReLU,
BatchNorm after every conv but the first, 2x2/2 max-pool and dropout 0.5 per block, then dense 512, 256,
128 (dropout 0.4, 0.4, 0.5) and softmax 7. The first conv is unpadded with L2 0.01, the rest use 'same'
padding: for a 48x48x1 input that is exactly 5,905,863 parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from fer_ablate.models.registry import register_model


@register_model
def paper_cnn(
    conv_blocks: int = 4,
    convs_per_block: int = 2,
    kernel_size: int = 3,
    base_filters: int = 64,
    filter_growth: float = 2.0,
    conv_dropout: float = 0.5,
    dense_units: Sequence[int] = (512, 256, 128),
    dense_dropout: Sequence[float] = (0.4, 0.4, 0.5),
    l2_first_conv: float = 0.01,
    batch_norm: bool = True,
    bn_first_conv: bool = False,
    bn_momentum: float = 0.99,
    pool_before_bn: bool = False,
    input_size: int = 48,
    num_classes: int = 7,
    name: str = "paper_cnn",
) -> keras.Model:
    """Build the paper's CNN; each argument is one ablation axis (see config/defaults.yaml).

    ``pool_before_bn=True`` (off by default: the paper's order) max-pools a block's last conv before its
    BatchNorm, so BN (memory-bound on a CPU) sees 4x fewer values. Max-pool commutes with BN only for a
    positive scale, so this is a different model, not a rewrite: measure it (benchmarks/time_to_accuracy.py).

    Input ``[n, input_size, input_size, 1]`` float (0-255 scaled inside the training pipeline); output
    ``[n, num_classes]`` float32 probabilities.
    """
    inputs = keras.Input((input_size, input_size, 1), name="face")
    x = inputs
    for block in range(conv_blocks):
        filters = int(round(base_filters * filter_growth**block))
        for conv in range(convs_per_block):
            first = block == 0 and conv == 0
            last = conv == convs_per_block - 1
            normed = batch_norm and (bn_first_conv or not first)
            x = layers.Conv2D(
                filters,
                kernel_size,
                padding="valid" if first else "same",
                activation="relu",
                kernel_regularizer=keras.regularizers.l2(l2_first_conv) if first and l2_first_conv else None,
                name=f"conv{block + 1}_{conv + 1}",
            )(x)
            if last and pool_before_bn:
                x = layers.MaxPooling2D(2, strides=2, name=f"pool{block + 1}")(x)
            if normed:
                x = layers.BatchNormalization(momentum=bn_momentum, name=f"bn{block + 1}_{conv + 1}")(x)
        if not pool_before_bn:
            x = layers.MaxPooling2D(2, strides=2, name=f"pool{block + 1}")(x)
        if conv_dropout:
            x = layers.Dropout(conv_dropout, name=f"drop{block + 1}")(x)
    x = layers.Flatten(name="flatten")(x)
    for i, (units, rate) in enumerate(zip(dense_units, dense_dropout, strict=True)):
        x = layers.Dense(units, activation="relu", name=f"dense{i + 1}")(x)
        if rate:
            x = layers.Dropout(rate, name=f"dense_drop{i + 1}")(x)
    # float32 whatever the compute precision: a bf16 softmax would round probabilities (and the loss).
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="emotion")(x)
    return keras.Model(inputs, outputs, name=name)
