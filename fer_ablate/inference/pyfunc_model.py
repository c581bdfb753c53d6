"""A trained model applied to whole photos: detect faces, crop them like FER2013, classify each one.

``FaceClassifier`` is the one implementation; ``fer-ablate predict`` uses it in-process and the MLflow
pyfunc ``PhotoModel`` (what ``promote`` registers and ``mlflow models serve`` serves) wraps it, so the CLI
and the REST endpoint give the same labels for the same image.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from fer_ablate.data import CLASS_NAMES, IMAGE_SIZE
from fer_ablate.inference.faces import Box, FaceDetector, ImageError, as_crop, crop_face, decode_image
from fer_ablate.inference.model_contract import check_model
from fer_ablate.inference.provenance import CONFIG_KEY, notices
from fer_ablate.inference.serving_input import check_request_size, decode_base64_image

log = logging.getLogger(__name__)
PROB_COLUMNS = [f"p_{name}" for name in CLASS_NAMES]
OUTPUT_COLUMNS = ["row", "face", "x", "y", "w", "h", "label", "score", *PROB_COLUMNS, "message", "notice"]


@dataclass
class FacePrediction:
    """One face: its box in the photo (None for a crop), the top label and all 7 probabilities."""

    box: Box | None
    probabilities: np.ndarray

    @property
    def label(self) -> str:
        return CLASS_NAMES[int(np.argmax(self.probabilities))]

    def top(self, n: int = 3) -> list[tuple[str, float]]:
        """The ``n`` most probable labels with their probabilities."""
        order = np.argsort(self.probabilities)[::-1][:n]
        return [(CLASS_NAMES[i], float(self.probabilities[i])) for i in order]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: box, label, score and every class's probability."""
        return {"box": self.box.as_list() if self.box else None, "label": self.label,
                "score": float(self.probabilities.max()),
                "probabilities": {name: round(float(p), 6) for name, p in zip(CLASS_NAMES, self.probabilities,
                                                                               strict=True)}}


class FaceClassifier:
    """A Keras FER model (raw 0-255 ``[n, 48, 48, 1]`` in, 7 softmax probabilities out) plus a face detector.

    Safe to share between threads (MLflow's server predicts in a thread pool): ``tta`` and ``equalize`` are
    defaults fixed at construction, a request's own choice is an argument (``classify_crops(crops, tta=...)``),
    and the OpenCV cascade, whose ``detectMultiScale`` is not thread-safe, runs under a lock.

    ``notices``: caveats from the model's training run (``provenance.notices``), said with every answer.
    """

    def __init__(self, model: Any, tta: bool = False, equalize: bool = False, detector: FaceDetector | None = None,
                 notices: tuple[str, ...] = ()):
        self.model, self.tta, self.equalize, self.notices = model, tta, equalize, tuple(notices)
        self.detector = detector or FaceDetector()
        self._detect_lock = threading.Lock()

    @property
    def notice(self) -> str:
        """The notices as one line ("" for none): what predict records and served rows carry."""
        return "; ".join(self.notices)

    def classify_crops(self, crops: np.ndarray, tta: bool | None = None) -> np.ndarray:
        """Probabilities ``float32 [n, 7]`` for ``uint8 [n, 48, 48]`` crops; with TTA (``tta``, else the
        classifier's default), averaged with the mirrored crops."""
        if len(crops) == 0:
            return np.zeros((0, len(CLASS_NAMES)), np.float32)
        x = crops.astype(np.float32)[..., None]
        probs = self._run(x)
        if self.tta if tta is None else tta:  # faces are left-right symmetric in meaning: a cheap second opinion
            probs = (probs + self._run(x[:, :, ::-1])) / 2
        return probs

    def _run(self, x: np.ndarray) -> np.ndarray:
        # A photo has a few faces: calling the model directly skips predict()'s per-call set-up (tens of
        # ms); large batches go through predict() in chunks of 256.
        if len(x) <= 32:
            return np.asarray(self.model(x, training=False), dtype=np.float32)
        return np.asarray(self.model.predict(x, batch_size=256, verbose=0), dtype=np.float32)

    def analyse(self, grey: np.ndarray, crops_mode: bool = False, tta: bool | None = None) -> list[FacePrediction]:
        """Every face in a grey photo (or the whole image as one face in ``crops_mode``); [] when none.

        ``tta``: this call's test-time flip (None: the classifier's default).
        """
        if crops_mode:
            return [FacePrediction(None, self.classify_crops(as_crop(grey)[None], tta)[0])]
        with self._detect_lock:
            boxes = self.detector.detect(grey)
        crops = np.stack([crop_face(grey, b, equalize=self.equalize) for b in boxes]) if boxes else \
            np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
        return [FacePrediction(b, p) for b, p in zip(boxes, self.classify_crops(crops, tta), strict=True)]


def _decode_record(record: dict[str, Any], row: int) -> np.ndarray:
    """The grey image of one request row: ``image`` (base64 of an encoded image) or ``pixels`` (FER2013 style)."""
    image, pixels = record.get("image"), record.get("pixels")
    if isinstance(image, str) and image:
        return decode_image(decode_base64_image(image, f"row {row}"), f"row {row}")
    if isinstance(pixels, str) and pixels:
        try:
            values = np.array(pixels.split(), dtype=np.int64)
        except ValueError:
            raise ImageError(f"row {row}: 'pixels' must be space-separated integers") from None
        if values.size != IMAGE_SIZE * IMAGE_SIZE or values.min() < 0 or values.max() > 255:
            raise ImageError(f"row {row}: 'pixels' needs {IMAGE_SIZE * IMAGE_SIZE} values in 0..255, got "
                             f"{values.size}")
        return values.astype(np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE)
    raise ImageError(f"row {row}: give 'image' (base64 of a JPEG/PNG) or 'pixels' (2304 grey values)")


def predictions_frame(classifier: FaceClassifier, frame: pd.DataFrame, crops: bool = False,
                      tta: bool | None = None) -> pd.DataFrame:
    """One output row per face found (or per crop), a message row for an image with no face or a bad one.

    ``crops`` and ``tta`` are this request's options; the shared ``classifier`` is never changed.

    Raises ImageError when no row at all could be read (the whole request is bad: HTTP 400 when served).
    """
    check_request_size(list(frame["image"]) if "image" in frame else [])  # before decoding any row
    rows: list[dict[str, Any]] = []
    errors = []
    notice = classifier.notice  # on every row: a client reading one row still learns the model is a toy
    for i, record in enumerate(frame.to_dict("records")):
        try:
            grey = _decode_record(record, i)
        except ImageError as exc:
            errors.append(str(exc))
            rows.append({"row": i, "face": -1, "message": str(exc), "notice": notice})
            continue
        # A pixels row is a FER2013 crop by definition; an image is a photo unless crops mode is asked for.
        faces = classifier.analyse(grey, crops_mode=crops or not record.get("image"), tta=tta)
        if not faces:
            rows.append({"row": i, "face": -1, "message": "no face found", "notice": notice})
        for j, face in enumerate(faces):
            box = face.box.as_list() if face.box else [0, 0, grey.shape[1], grey.shape[0]]
            rows.append({"row": i, "face": j, **dict(zip("xywh", box, strict=True)), "label": face.label,
                         "score": float(face.probabilities.max()), "message": "", "notice": notice,
                         **{c: float(p) for c, p in zip(PROB_COLUMNS, face.probabilities, strict=True)}})
    if frame.shape[0] and len(errors) == frame.shape[0]:
        raise ImageError("; ".join(errors[:5]))
    return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)


class PhotoModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc: a DataFrame of images (``image`` base64 or ``pixels``) in, one row per face out.

    Params: ``tta`` (mirror averaging), ``crops`` (images are face crops already). A request whose rows
    are all unreadable is answered HTTP 400 with the reason; other rows carry their own ``message``. Every
    row's ``notice`` says what the training run's tags, carried in the model's ``model_config`` by
    ``promote``, say about the model (trained on synthetic faces, degenerate); "" when nothing.
    """

    def load_context(self, context: Any) -> None:
        import keras

        from fer_ablate import models  # noqa: F401  (registers the custom layers the saved model may hold)

        model = keras.saving.load_model(context.artifacts["keras_model"], compile=False)
        config = getattr(context, "model_config", None) or {}  # a model saved without one carries no tags
        self.classifier = FaceClassifier(check_model(model, "the photo model's keras_model artifact"),
                                         notices=notices(config.get(CONFIG_KEY) or {}))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
                ) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        params = params or {}
        # Per-request options travel as arguments: the server runs requests in threads sharing this object.
        try:
            return predictions_frame(self.classifier, model_input, crops=bool(params.get("crops", False)),
                                     tta=bool(params.get("tta", False)))
        except ImageError as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from exc
