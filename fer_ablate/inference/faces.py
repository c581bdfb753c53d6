"""Faces in ordinary photos: decode, detect (OpenCV's Haar cascade, shipped in the opencv wheel), crop.

Crop geometry matches FER2013's: measured on 600 PublicTest faces upscaled x4 and padded, the Haar box
covers the 48x48 frame almost exactly (median box 0.964 of the frame side, centred within 1.6%; see
``benchmarks/crop_geometry.py``). So a face crop is the detected box, squared, centred, enlarged by
``CROP_SCALE`` = 1/0.964, taken from the grey image (edge pixels repeated past the border), and resized to
48x48. Padding the photo and widening the box, as the PyPI ``fer`` package does, puts hair and background
into a frame the model never saw in training.
"""

from __future__ import annotations

import io
import os
import re
import threading
import warnings
from dataclasses import dataclass

import numpy as np

from fer_ablate.data import IMAGE_SIZE
from fer_ablate.data.images import (
    MAX_PIXELS,
    ImageError,  # noqa: F401  (re-exported: predict and serving catch it here)
    decode_grey,
    fit_face,
    read_grey,
)

CROP_SCALE = 1.0 / 0.964  # frame side / Haar box side on FER2013 faces (benchmarks/crop_geometry.py)
CASCADE = "haarcascade_frontalface_default.xml"


@dataclass(frozen=True)
class Box:
    """A face box in image pixels (x, y = top-left corner)."""

    x: int
    y: int
    w: int
    h: int

    def as_list(self) -> list[int]:
        """``[x, y, w, h]`` for JSON."""
        return [self.x, self.y, self.w, self.h]


def _cv2():
    import cv2  # imported late: only prediction needs OpenCV

    if not hasattr(cv2, "CascadeClassifier"):  # opencv-python-headless 5.x dropped it and the cascade files
        raise ImportError(f"OpenCV {cv2.__version__} has no CascadeClassifier: install opencv-python-headless<5")
    return cv2


def decode_image(data: bytes, name: str = "image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Grey ``uint8 [h, w]`` from encoded bytes: the one decoder of data/images.py (training uses it too).

    ``max_pixels``: refused (ImageError) from the header when the image declares more.
    """
    return decode_grey(data, name, min(max_pixels, MAX_PIXELS))


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` read from an encoded image's header, without decoding its pixels; ``(pixels, 1)``
    for a header over twice Pillow's own limit (Pillow then gives only the count); None when Pillow does not
    identify the bytes (OpenEXR, Radiance HDR: OpenCV decodes those, its own limit checks their header) or
    the header is unreadable (the decoder then says why in one line)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():  # the caller compares the size with its own limits
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:  # lazy: reads the header only
                return img.size
    except Image.DecompressionBombError as exc:  # "Image size (200000000 pixels) exceeds limit of ..."
        found = re.search(r"\((\d+) pixels\)", str(exc))
        return (int(found.group(1)), 1) if found else None
    except Exception:  # noqa: BLE001 - any unreadable header: decode_image raises the one-line ImageError
        return None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Grey image from a file (data/images.py); ImageError names the file when it is missing or unreadable."""
    return read_grey(path, MAX_PIXELS)


class FaceDetector:
    """OpenCV's frontal-face Haar cascade; boxes sorted left to right. Safe to share between threads.

    ``detectMultiScale`` is not thread-safe on one cascade object, so each thread that calls ``detect``
    gets its own (loaded in ~20 ms, a few MB): a request's detection never waits for another's, where one
    shared lock let a 40-second request hold up every other (issue 21).

    ``min_size`` 48: a smaller face has less detail than the model's 48x48 input (and searching the small
    scales is most of the detector's time). ``border``: the image is extended by this fraction of its
    shorter side (edges repeated) before detection, so a face that fills the picture, as in a tight crop,
    is still found; boxes may then reach past the image, which ``crop_face`` handles.
    """

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 5, min_size: int = 48,
                 border: float = 0.15):
        self._local = threading.local()
        self._cascade()  # fails here, at load, when the wheel has no cascade
        self.scale_factor, self.min_neighbors = scale_factor, min_neighbors
        self.min_size, self.border = min_size, border

    def _cascade(self):
        cascade = getattr(self._local, "cascade", None)
        if cascade is None:
            cv2 = _cv2()
            cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, CASCADE))
            if cascade.empty():
                raise ImportError(f"the OpenCV wheel has no {CASCADE}: install opencv-python-headless<5")
            self._local.cascade = cascade
        return cascade

    def detect(self, grey: np.ndarray) -> list[Box]:
        """Face boxes in a grey image (possibly none), in the image's coordinates."""
        cv2 = _cv2()
        pad = int(self.border * min(grey.shape[:2]))
        padded = cv2.copyMakeBorder(grey, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else grey
        found = self._cascade().detectMultiScale(padded, scaleFactor=self.scale_factor,
                                              minNeighbors=self.min_neighbors, minSize=(self.min_size, self.min_size))
        return sorted((Box(int(x) - pad, int(y) - pad, int(w), int(h)) for x, y, w, h in found),
                      key=lambda b: (b.x, b.y))


def crop_box(box: Box, scale: float = CROP_SCALE) -> Box:
    """The square frame around a detected box that FER2013's crops correspond to."""
    side = max(box.w, box.h) * scale
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    return Box(int(round(cx - side / 2)), int(round(cy - side / 2)), int(round(side)), int(round(side)))


def crop_face(grey: np.ndarray, box: Box, scale: float = CROP_SCALE, equalize: bool = False) -> np.ndarray:
    """A ``uint8 [48, 48]`` face crop: frame around ``box``, edge pixels repeated past the image border."""
    cv2 = _cv2()
    frame = crop_box(box, scale)
    pad = max(0, -frame.x, -frame.y, frame.x + frame.w - grey.shape[1], frame.y + frame.h - grey.shape[0])
    source = cv2.copyMakeBorder(grey, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else grey
    patch = source[frame.y + pad: frame.y + pad + frame.h, frame.x + pad: frame.x + pad + frame.w]
    # INTER_AREA when shrinking (the usual case) avoids aliasing; cubic when a tiny face is enlarged.
    method = cv2.INTER_AREA if frame.w >= IMAGE_SIZE else cv2.INTER_CUBIC
    face = cv2.resize(patch, (IMAGE_SIZE, IMAGE_SIZE), interpolation=method)
    return cv2.equalizeHist(face) if equalize else face


def as_crop(grey: np.ndarray) -> np.ndarray:
    """An image that already is a face crop (``--crops``): resized to 48x48 as image folders are."""
    return fit_face(grey, IMAGE_SIZE)
