"""The MLflow pyfunc ``PhotoModel``: what ``promote`` registers and ``mlflow models serve`` serves.

It wraps the one ``FaceClassifier`` (``classifier.py``) that ``fer-ablate predict`` uses too, so the CLI
and the REST endpoint give the same labels for the same image; a request goes through ``serving_rows``
within the limits of ``serving_limits``.
"""

from __future__ import annotations

import logging
from typing import Any

import mlflow
import pandas as pd

from fer_ablate.inference.classifier import FaceClassifier, FacePrediction
from fer_ablate.inference.faces import ImageError
from fer_ablate.inference.model_contract import load_model_file
from fer_ablate.inference.provenance import CONFIG_KEY, notices
from fer_ablate.inference.serving_limits import ServingLimits
from fer_ablate.inference.serving_rows import OUTPUT_COLUMNS, PROB_COLUMNS, predictions_frame

__all__ = ["OUTPUT_COLUMNS", "PROB_COLUMNS", "FaceClassifier", "FacePrediction", "PhotoModel", "predictions_frame"]
log = logging.getLogger(__name__)


def _load_uncompiled(path: str) -> Any:
    import keras

    from fer_ablate import models  # noqa: F401  (registers the custom layers the saved model may hold)

    return keras.saving.load_model(path, compile=False)


class PhotoModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc: a DataFrame of images (``image`` base64 or ``pixels``) in, one row per face out.

    Params: ``tta`` (mirror averaging), ``crops`` (images are face crops already). A row's own problem is
    that row's ``message``; a request whose rows are all unreadable, or that breaks a request limit
    (``serving_limits``), is answered HTTP 400 with the reason, without a stack trace. Every row's
    ``notice`` says what the training run's tags, carried in the model's ``model_config`` by ``promote``,
    say about the model (trained on synthetic faces, degenerate); "" when nothing.
    """

    def load_context(self, context: Any) -> None:
        limits = ServingLimits.from_env()  # a bad setting stops the server at start, not each request
        log.info("serving limits: %s (the time budget at most MLflow's %g s request timeout)", limits,
                 limits.mlflow_timeout)
        model = load_model_file(context.artifacts["keras_model"], _load_uncompiled)
        config = getattr(context, "model_config", None) or {}  # a model saved without one carries no tags
        self.classifier = FaceClassifier(model, notices=notices(config.get(CONFIG_KEY) or {}))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
                ) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

        params = params or {}
        # Per-request options travel as arguments: the server runs requests in threads sharing this object.
        # MLflow's server puts the stack trace of any other exception into the response body: only its own
        # MlflowException leaves here.
        try:
            return predictions_frame(self.classifier, model_input, crops=bool(params.get("crops", False)),
                                     tta=bool(params.get("tta", False)))
        except ImageError as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        except Exception as exc:  # a fault of the server, not the request: said in one line, logged in full
            log.error("predict failed", exc_info=exc)
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise MlflowException(f"internal error: {type(exc).__name__}: {first}", error_code=INTERNAL_ERROR
                                  ) from None
