"""Load the Keras model that ``evaluate``, ``predict`` and serving apply: from a file or from the store.

A local ``.keras`` / ``.h5`` file is read by Keras here; an MLflow URI (``runs:/ID/model``,
``models:/NAME@ALIAS``) through ``tracking.load_model``. Either way the model contract (grey
``[n, 48, 48, 1]`` in, 7 probabilities out) is checked before the model is returned.
"""

from __future__ import annotations

from typing import Any

from fer_ablate import (
    models,  # noqa: F401  (registers the custom layers a saved model may hold)
    tracking,
)
from fer_ablate.inference.model_contract import is_model_file, load_checked


def _load_file(path: str) -> Any:
    import keras

    return keras.saving.load_model(path)


def load_keras_model(uri: str) -> Any:
    """The ``keras.Model`` at ``uri`` (a local model file or an MLflow model URI), contract-checked.

    Raises ModelError (a file that is no usable model, or a model that breaks the contract) or
    TrackingError (an MLflow URI that cannot be loaded).
    """
    return load_checked(uri, _load_file if is_model_file(uri) else tracking.load_model)
