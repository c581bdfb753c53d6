"""A trained model applied to whole photos: detect faces, crop them like FER2013, classify each one.

``FaceClassifier`` is the one implementation: ``fer-ablate predict`` uses it in-process, and the MLflow
pyfunc ``PhotoModel`` (what ``promote`` registers and ``mlflow models serve`` serves) wraps it, so the CLI
and the REST endpoint give the same labels for the same image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fer_ablate.data import CLASS_NAMES, IMAGE_SIZE
from fer_ablate.inference.faces import Box, FaceDetector, as_crop, crop_face


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
    and the detector gives each thread its own OpenCV cascade (``FaceDetector``), so no lock is shared.

    ``notices``: caveats from the model's training run (``provenance.notices``), said with every answer.
    """

    def __init__(self, model: Any, tta: bool = False, equalize: bool = False, detector: FaceDetector | None = None,
                 notices: tuple[str, ...] = ()):
        self.model, self.tta, self.equalize, self.notices = model, tta, equalize, tuple(notices)
        self.detector = detector or FaceDetector()

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

    def face_crops(self, grey: np.ndarray, boxes: list[Box] | None = None) -> tuple[list[Box], np.ndarray]:
        """The faces in a grey photo (``boxes``, else those the detector finds) and their ``uint8 [n, 48, 48]``
        crops (n may be 0)."""
        boxes = self.detector.detect(grey) if boxes is None else boxes
        crops = np.stack([crop_face(grey, b, equalize=self.equalize) for b in boxes]) if boxes else \
            np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
        return boxes, crops

    def analyse(self, grey: np.ndarray, crops_mode: bool = False, tta: bool | None = None) -> list[FacePrediction]:
        """Every face in a grey photo (or the whole image as one face in ``crops_mode``); [] when none.

        ``tta``: this call's test-time flip (None: the classifier's default).
        """
        if crops_mode:
            return [FacePrediction(None, self.classify_crops(as_crop(grey)[None], tta)[0])]
        boxes, crops = self.face_crops(grey)
        return [FacePrediction(b, p) for b, p in zip(boxes, self.classify_crops(crops, tta), strict=True)]
