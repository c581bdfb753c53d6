"""One request to the served photo model, row by row, within the request's budget (``serving_limits``).

The work goes in three steps, each bounded before the next, costlier one starts:
1. the strings: each row's ``image`` bytes and ``pixels`` length, the request's total bytes and crop count;
2. the headers: each image's base64 decoded and its width x height read, the request's pixels summed;
3. row by row, while the time budget lasts: decoding, face detection and classification (the crops of
   ``pixels`` rows in batches of 32).
A row's own problem (any exception: bad base64, a corrupt image, ``pixels`` holding 99999999999999999999,
an OpenCV error) becomes that row's ``message``; the other rows are answered. A request whose rows break
a limit together, or whose rows are all unreadable, raises ImageError (HTTP 400 when served).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fer_ablate.data import CLASS_NAMES, IMAGE_SIZE
from fer_ablate.inference.classifier import FaceClassifier
from fer_ablate.inference.faces import MAX_PIXELS, Box, ImageError, as_crop, decode_image, image_size
from fer_ablate.inference.serving_input import decode_base64_image, mb
from fer_ablate.inference.serving_limits import LARGE_PIXELS, LARGE_SLOTS, RequestBudget, ServingLimits

log = logging.getLogger(__name__)
PROB_COLUMNS = [f"p_{name}" for name in CLASS_NAMES]
OUTPUT_COLUMNS = ["row", "face", "x", "y", "w", "h", "label", "score", *PROB_COLUMNS, "message", "notice"]
BATCH = 32  # crops per model call: ~0.2 s of the paper CNN on 2 cores, the time budget's granularity
ENV = ServingLimits.env_name


@dataclass
class Row:
    """One request row on its way through the steps: its input, then its image, faces and answer."""

    index: int
    image: str | None = None  # base64 text
    pixels: str | None = None
    data: bytes | None = None  # the decoded image file
    size: tuple[int, int] | None = None  # from the header
    crop: bool = False  # the whole image is one face (pixels rows, crops=True)
    boxes: list[Box | None] = field(default_factory=list)
    crops: np.ndarray | None = None
    probabilities: list[np.ndarray] = field(default_factory=list)
    error: str | None = None
    shape: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)

    @property
    def name(self) -> str:
        return f"row {self.index}"


def _fail(row: Row, exc: BaseException) -> None:
    """Make ``exc`` the row's answer: an ImageError's own line, anything else its type and first line (the
    traceback goes to the server's log, never into the response)."""
    if isinstance(exc, ImageError):
        row.error = str(exc)
        return
    log.error("%s: unexpected %s", row.name, type(exc).__name__, exc_info=exc)
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    row.error = f"{row.name}: {type(exc).__name__}{': ' + text if text else ''}"


def parse_pixels(text: str, name: str, max_chars: int) -> np.ndarray:
    """A FER2013 ``pixels`` string as ``uint8 [48, 48]``; ImageError naming ``name`` when it is longer than
    ``max_chars`` (checked before splitting), or is not 2,304 whole numbers in 0..255."""
    if len(text) > max_chars:
        raise ImageError(f"{name}: 'pixels' of {len(text):,} characters is over the {max_chars:,} limit "
                         f"({ENV('max_pixels_chars')}); 2,304 values need at most 9,215")
    parts = text.split()
    if len(parts) != IMAGE_SIZE * IMAGE_SIZE:
        raise ImageError(f"{name}: 'pixels' needs {IMAGE_SIZE * IMAGE_SIZE} values in 0..255, got {len(parts)}")
    try:
        values = np.array(parts, dtype=np.int64)
    except (ValueError, OverflowError):  # "1.5", "x", 99999999999999999999 (past int64)
        raise ImageError(f"{name}: 'pixels' must be space-separated whole numbers in 0..255") from None
    if values.min() < 0 or values.max() > 255:
        raise ImageError(f"{name}: 'pixels' values must be in 0..255, got {values.min()}..{values.max()}")
    return values.astype(np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE)


def _rows(frame: pd.DataFrame, crops: bool) -> list[Row]:
    rows = []
    for i, record in enumerate(frame.to_dict("records")):
        image, pixels = record.get("image"), record.get("pixels")
        row = Row(i, image if isinstance(image, str) and image else None,
                  pixels if isinstance(pixels, str) and pixels else None)
        row.crop = crops or row.image is None  # a pixels row is a FER2013 crop by definition
        wrong = [f"'{key}' must be a string, got {type(value).__name__}"
                 for key, value in (("image", image), ("pixels", pixels))
                 if value is not None and not isinstance(value, str) and value == value]  # NaN: a missing key
        if wrong:
            row.error = f"row {i}: {'; '.join(wrong)}"
        elif row.image is None and row.pixels is None:
            row.error = f"row {i}: give 'image' (base64 of a JPEG/PNG) or 'pixels' (2304 grey values)"
        rows.append(row)
    return rows


def check_strings(rows: list[Row], limits: ServingLimits) -> None:
    """Step 1: the request's bytes and crop count, from the strings' lengths (ImageError: refuse it)."""
    total = sum(len(r.image) * 3 // 4 if r.image else len(r.pixels or "") for r in rows)
    if total > limits.max_request_bytes:
        raise ImageError(f"request: {len(rows)} rows with about {mb(total)} of images and pixels is over the "
                         f"{mb(limits.max_request_bytes)} limit ({ENV('max_request_bytes')}): send fewer or "
                         "smaller images per request")
    crops = sum(r.crop and r.error is None for r in rows)
    if crops > limits.max_faces_per_request:
        raise ImageError(f"request: {crops} crops to classify is over the budget of {limits.max_faces_per_request}"
                         f" faces per request ({ENV('max_faces_per_request')}): split the request")


def read_headers(rows: list[Row], limits: ServingLimits) -> None:
    """Step 2: each image's base64 decoded and its size read from its header; a row over the request's
    pixel budget alone is that row's error; rows over it together refuse the request (ImageError)."""
    for row in rows:
        if row.error or row.image is None:
            continue
        try:
            row.data = decode_base64_image(row.image, row.name, limits.max_image_bytes)
            row.image = None  # the text is no longer needed: half the request's memory
            row.size = image_size(row.data)
            w, h = row.size or (0, 0)
            declared = f"{w}x{h}" if h > 1 else f"{w:,}"
            if w * h > MAX_PIXELS:  # over the limit of any image, CLI included: said as the CLI says it
                raise ImageError(f"{row.name}: {declared} pixels is over the {MAX_PIXELS:,} pixel limit (refused "
                                 "from its header, before decoding)")
            if w * h > limits.max_request_pixels:
                raise ImageError(f"{row.name}: {declared} pixels is over the {limits.max_request_pixels:,} pixel "
                                 f"limit per request ({ENV('max_request_pixels')}), refused from its header: send "
                                 "a smaller image")
        except Exception as exc:  # noqa: BLE001 - one row's problem is that row's answer
            _fail(row, exc)
    sized = [r for r in rows if r.error is None and r.size]
    total = sum(r.size[0] * r.size[1] for r in sized)
    if total > limits.max_request_pixels:
        listed = ", ".join(str(r.index) for r in sized[:10]) + (", ..." if len(sized) > 10 else "")
        raise ImageError(f"request: {len(sized)} images of {total:,} pixels in all (rows {listed}) is over the "
                         f"{limits.max_request_pixels:,} pixel limit per request ({ENV('max_request_pixels')}): "
                         "send fewer or smaller images per request")


def answer_rows(classifier: FaceClassifier, rows: list[Row], budget: RequestBudget, tta: bool | None) -> None:
    """Step 3: each row decoded, its faces found (or the row taken as one crop) and classified, in order.

    A row is started only while the time budget lasts, and a started row is finished: at most one row's
    work (its faces capped per image) or one batch of ``BATCH`` crops runs past the deadline. A large image
    waits for one of ``LARGE_SLOTS``, at most until the deadline. Crops from
    ``pixels`` rows (and ``crops`` mode) are classified ``BATCH`` at a time: one model call per row cost
    ~37 ms each on 2 cores, a batch of 32 ~0.2 s.
    """
    pixels_left = budget.limits.max_request_pixels
    pending: list[Row] = []
    for row in rows:
        if row.error:
            continue
        row.error = budget.out_of_time(row.name)
        if row.error:
            continue
        large = row.size is not None and row.size[0] * row.size[1] > LARGE_PIXELS and not row.crop
        if large and not LARGE_SLOTS.acquire(timeout=budget.remaining()):
            row.error = (f"{row.name}: not processed: the request's {budget.limits.seconds:g} s budget ran out "
                         f"waiting for other large images to be searched ({ENV('max_request_seconds')}); send it "
                         "again later")
            continue
        try:
            try:
                pixels_left -= _find_faces(classifier, row, budget, max(pixels_left, 1))
            finally:
                if large:
                    LARGE_SLOTS.release()
            if row.crop:
                pending.append(row)
            else:
                row.probabilities = list(classifier.classify_crops(row.crops, tta))
        except Exception as exc:  # noqa: BLE001 - one row's problem is that row's answer
            _fail(row, exc)
        if len(pending) == BATCH:
            _classify(classifier, pending, tta)
    _classify(classifier, pending, tta)


def _find_faces(classifier: FaceClassifier, row: Row, budget: RequestBudget, max_pixels: int) -> int:
    """Decode ``row`` and set its boxes and crops (one crop for a crop row); return its pixel count."""
    if row.data is None:
        grey = parse_pixels(row.pixels, row.name, budget.limits.max_pixels_chars)
    else:  # images Pillow cannot size (OpenEXR...) are held to what the budget has left
        grey = decode_image(row.data, row.name, max_pixels=max_pixels)
        row.data = None
    row.shape = grey.shape[:2]
    if row.crop:
        row.boxes, row.crops = [None], as_crop(grey)[None]
    else:
        boxes = classifier.detector.detect(grey)
        budget.take_faces(len(boxes), row.name)  # before cropping: 581 crops cost ~30 ms of GIL time
        row.boxes, row.crops = classifier.face_crops(grey, boxes)
    return grey.size


def _classify(classifier: FaceClassifier, pending: list[Row], tta: bool | None) -> None:
    """The crops of ``pending`` rows in one model call; emptied after. An error is each of these rows' error."""
    if not pending:
        return
    try:
        probs = classifier.classify_crops(np.concatenate([row.crops for row in pending]), tta)
        for row, p in zip(pending, probs, strict=True):
            row.probabilities = [p]
    except Exception as exc:  # noqa: BLE001 - these rows get the error, the others go on
        for row in pending:
            _fail(row, exc)
    pending.clear()


def _answer(row: Row, notice: str) -> list[dict[str, Any]]:
    if row.error:
        return [{"row": row.index, "face": -1, "message": row.error, "notice": notice}]
    if not row.boxes:
        return [{"row": row.index, "face": -1, "message": "no face found", "notice": notice}]
    out = []
    for j, (box, p) in enumerate(zip(row.boxes, row.probabilities, strict=True)):
        xywh = box.as_list() if box else [0, 0, row.shape[1], row.shape[0]]
        out.append({"row": row.index, "face": j, **dict(zip("xywh", xywh, strict=True)),
                    "label": CLASS_NAMES[int(np.argmax(p))], "score": float(p.max()), "message": "",
                    "notice": notice, **{c: float(v) for c, v in zip(PROB_COLUMNS, p, strict=True)}})
    return out


def predictions_frame(classifier: FaceClassifier, frame: pd.DataFrame, crops: bool = False,
                      tta: bool | None = None, limits: ServingLimits | None = None,
                      budget: RequestBudget | None = None) -> pd.DataFrame:
    """One output row per face found (or per crop), a message row for an image with no face or a bad one.

    ``crops`` and ``tta`` are this request's options; the shared ``classifier`` is never changed.
    ``limits``: the request's limits (default: ``budget``'s, else ``ServingLimits.from_env()``, the server's
    environment); ``budget``: its running account (default: a new one, its clock started now).

    Raises ImageError when the rows together break a limit, or no row at all could be read (the whole
    request is bad: HTTP 400 when served).
    """
    limits = limits or (budget.limits if budget else ServingLimits.from_env())
    budget = budget or RequestBudget(limits)
    rows = _rows(frame, crops)
    check_strings(rows, limits)
    read_headers(rows, limits)
    answer_rows(classifier, rows, budget, tta)
    errors = [row.error for row in rows if row.error]
    if rows and len(errors) == len(rows):
        raise ImageError("; ".join(errors[:5]))
    notice = classifier.notice  # on every row: a client reading one row still learns the model is a toy
    return pd.DataFrame([out for row in rows for out in _answer(row, notice)], columns=OUTPUT_COLUMNS)
