"""The served photo model's per-request budget (issue 21): every limit refuses with its reason before the
costly step, one bad row never costs the others their answers, and no response carries a stack trace.

In-process checks pin each rule and message; one real ``mlflow models serve`` with lowered limits checks
them over HTTP in the default run; a slow test runs abusive requests beside an ordinary one.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import served_model
from skimage import data as skdata

from fer_ablate.inference import pyfunc_entry
from fer_ablate.inference.classifier import FaceClassifier
from fer_ablate.inference.faces import FaceDetector, ImageError
from fer_ablate.inference.registered import photo_signature
from fer_ablate.inference.serving_limits import RequestBudget, ServingLimits
from fer_ablate.inference.serving_rows import predictions_frame

GOOD_PIXELS = " ".join(str(v) for v in np.random.default_rng(0).integers(0, 256, 2304))
# The row: one value past int64 (numpy raises OverflowError, not ValueError), the string otherwise fine.
HUGE_NUMBER = " ".join(["99999999999999999999", *GOOD_PIXELS.split()[1:]])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _png(grey: np.ndarray) -> bytes:
    return cv2.imencode(".png", grey, [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes()


def _face() -> np.ndarray:
    """skimage's astronaut, grey, cropped to her face and some margin (one Haar face)."""
    return cv2.cvtColor(skdata.astronaut()[20:320, 120:340], cv2.COLOR_RGB2GRAY)


def _tiled(k: int) -> np.ndarray:
    """k x k copies of a 100 px face: k*k faces for the Haar cascade (checked in the tests)."""
    face = cv2.resize(cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2GRAY)[0:220, 150:370], (100, 100))
    return np.tile(face, (k, k))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` but whose pixel data is cut off: refused from the
    header, the request says the limit; decoded, it would say 'truncated'."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 100))


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory) -> Path:
    inputs = keras.Input((48, 48, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(inputs))
    path = tmp_path_factory.mktemp("limits") / "model.keras"
    keras.Model(inputs, keras.layers.Dense(7, activation="softmax")(x)).save(path)
    return path


@pytest.fixture(scope="module")
def classifier(keras_file) -> FaceClassifier:
    return FaceClassifier(keras.saving.load_model(keras_file))


def _messages(out: pd.DataFrame) -> dict[int, str]:
    return {int(r): m for r, m in zip(out["row"], out["message"], strict=True)}


# ---- in-process: each rule and its message

def test_every_exception_in_a_row_is_that_rows_answer(keras_file):
    """OverflowError, bad values, and a real cv2.error (a cascade asked for scale factor 1.0, which OpenCV
    refuses) each become their row's message; the good rows keep their answers."""
    broken = FaceClassifier(keras.saving.load_model(keras_file), detector=FaceDetector(scale_factor=1.0))
    frame = pd.DataFrame({"pixels": [GOOD_PIXELS, HUGE_NUMBER, GOOD_PIXELS.replace("1", "1.5", 1), None, GOOD_PIXELS],
                          "image": [None, None, None, _b64(_png(_face())), None]})
    out = predictions_frame(broken, frame)
    messages = _messages(out)
    assert messages[0] == messages[4] == "" and out["label"].notna().sum() == 2
    assert messages[1] == messages[2].replace("row 2", "row 1") == \
        "row 1: 'pixels' must be space-separated whole numbers in 0..255"
    assert messages[3].startswith("row 3: error: OpenCV(") and "\n" not in messages[3]
    with pytest.raises(ImageError, match=r"^row 0: 'pixels' must be .*; row 1: error: OpenCV\("):
        predictions_frame(broken, pd.DataFrame({"pixels": [HUGE_NUMBER, None],
                                                "image": [None, _b64(_png(_face()))]}))


def test_pixels_length_is_checked_before_splitting(classifier):
    limits = ServingLimits()
    unsplittable = "7" * 20_000_001  # 20 MB with no space: split() would give one value, not this message
    out = predictions_frame(classifier, pd.DataFrame({"pixels": [GOOD_PIXELS, unsplittable]}), limits=limits)
    assert _messages(out)[1] == ("row 1: 'pixels' of 20,000,001 characters is over the 20,000 limit "
                                 "(FER_ABLATE_MAX_PIXELS_CHARS); 2,304 values need at most 9,215")
    spaced = "  ".join(GOOD_PIXELS.split())  # double spaces: 11.5k characters, well within the limit
    assert _messages(predictions_frame(classifier, pd.DataFrame({"pixels": [spaced]})))[0] == ""
    with pytest.raises(ImageError, match=r"^request: 6 rows with about 120.0 kB of images and pixels is over the "
                                         r"100.0 kB limit \(FER_ABLATE_MAX_REQUEST_BYTES\)"):
        predictions_frame(classifier, pd.DataFrame({"pixels": ["1 " * 10_000] * 6}),
                          limits=ServingLimits(max_request_bytes=100_000))


def test_decoded_pixels_are_budgeted_per_request_from_the_headers(classifier):
    flat = _png(np.zeros((6300, 6300), np.uint8))
    assert len(flat) < 60_000  # the 52 kB flat PNG: 39.7 M pixels, under the 40 M limit of one image
    with pytest.raises(ImageError, match=r"^row 0: 6300x6300 pixels is over the 25,000,000 pixel limit per request "
                                         r"\(FER_ABLATE_MAX_REQUEST_PIXELS\), refused from its header"):
        predictions_frame(classifier, pd.DataFrame({"image": [_b64(flat)]}))
    # A header alone proves the order: decoding this one would fail as truncated.
    out = predictions_frame(classifier, pd.DataFrame({"image": [_b64(_png_header_only(6300, 6300)), None],
                                                      "pixels": [None, GOOD_PIXELS]}))
    assert "over the 25,000,000 pixel limit per request" in _messages(out)[0] and _messages(out)[1] == ""
    # Images within the budget one by one, over it together: the request is refused, before decoding any.
    rows = [_b64(_png_header_only(4000, 2000))] * 4
    with pytest.raises(ImageError, match=r"^request: 4 images of 32,000,000 pixels in all \(rows 0, 1, 2, 3\) is "
                                         r"over the 25,000,000 pixel limit per request"):
        predictions_frame(classifier, pd.DataFrame({"image": rows}))


def test_faces_are_capped_per_image_and_per_request(classifier):
    limits = ServingLimits(max_faces_per_image=8, max_faces_per_request=11)
    frame = pd.DataFrame({"image": [_b64(_png(_tiled(3))), _b64(_png(_tiled(2))), _b64(_png(_tiled(2))),
                                    _b64(_png(_tiled(2))), _b64(_png(_face()))]})
    out = predictions_frame(classifier, frame, limits=limits)
    messages = _messages(out)
    assert messages[0] == ("row 0: 9 faces found, over the limit of 8 per image (FER_ABLATE_MAX_FACES_PER_IMAGE): "
                           "send a crop of the photo")
    assert list(out[out["row"] == 1]["face"]) == [0, 1, 2, 3] and messages[2] == ""
    assert messages[3].startswith("row 3: its 4 faces would take the request past its budget of 11 faces "
                                  "(FER_ABLATE_MAX_FACES_PER_REQUEST, 8 used by earlier rows)")
    assert messages[4] == ""  # one more face still fits
    with pytest.raises(ImageError, match=r"^request: 12 crops to classify is over the budget of 11 faces per request"):
        predictions_frame(classifier, pd.DataFrame({"pixels": [GOOD_PIXELS] * 12}), limits=limits)


def test_the_time_budget_stops_between_rows_and_keeps_what_was_answered(classifier):
    """A clock that moves 1 s per reading: the budget of 3.5 s runs out part-way through the request."""
    ticks = iter(range(1000))
    budget = RequestBudget(ServingLimits(max_request_seconds=3.5), clock=lambda: float(next(ticks)))
    out = predictions_frame(classifier, pd.DataFrame({"pixels": [GOOD_PIXELS] * 5}), budget=budget)
    messages = _messages(out)
    answered = [r for r, m in messages.items() if m == ""]
    assert answered == [0, 1, 2]  # the clock read 1, 2, 3 before them; 4 is past the 3.5 s deadline
    assert messages[3] == ("row 3: not processed: the request's 3.5 s budget ran out (FER_ABLATE_MAX_REQUEST_SECONDS);"
                           " send this row again in a smaller request")


def test_limits_come_from_the_environment_and_bad_values_are_named():
    limits = ServingLimits.from_env({"FER_ABLATE_MAX_FACES_PER_IMAGE": "7", "FER_ABLATE_MAX_REQUEST_SECONDS": "90",
                                     "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": "30", "FER_ABLATE_MAX_PIXELS_CHARS": ""})
    assert limits.max_faces_per_image == 7 and limits.max_pixels_chars == 20_000
    assert limits.seconds == 30  # never past MLflow's own timeout, after which the client has its 504
    assert ServingLimits.from_env({}).seconds == 10
    for env, raw in [("FER_ABLATE_MAX_REQUEST_PIXELS", "lots"), ("FER_ABLATE_MAX_IMAGE_BYTES", "-1"),
                     ("FER_ABLATE_MAX_FACES_PER_REQUEST", "2.5")]:
        with pytest.raises(ImageError, match=f"^{env}='{raw}' is not a positive whole number"):
            ServingLimits.from_env({env: raw})


# ---- a real `mlflow models serve` with lowered limits

LOW = {"FER_ABLATE_MAX_IMAGE_BYTES": "200000", "FER_ABLATE_MAX_REQUEST_BYTES": "1000000",
       "FER_ABLATE_MAX_REQUEST_PIXELS": "1000000", "FER_ABLATE_MAX_FACES_PER_IMAGE": "5",
       "FER_ABLATE_MAX_FACES_PER_REQUEST": "20"}


def _photo_model(keras_file: Path) -> Path:
    path = keras_file.parent / "photo_model"
    if not path.exists():
        mlflow.pyfunc.save_model(path, python_model=pyfunc_entry.__file__, artifacts={"keras_model": str(keras_file)},
                                 signature=photo_signature())
    return path


@pytest.fixture(scope="module")
def low_server(keras_file):
    with served_model(str(_photo_model(keras_file)), env={**os.environ, **LOW}) as port:
        yield port


def _post(port: int, body: bytes | dict, timeout: float = 120) -> tuple[int, dict]:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=payload, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _rows(records: list[dict]) -> dict:
    return {"dataframe_records": records}


def test_served_rows_answer_for_themselves_and_limits_refuse_with_the_reason(low_server):
    status, body = _post(low_server, _rows([
        {"pixels": GOOD_PIXELS}, {"pixels": HUGE_NUMBER}, {"pixels": "9 " * 15_000},
        {"image": _b64(_png(_face()))}, {"image": _b64(_png(_tiled(3)))}, {"image": "bm90IGFuIGltYWdl"},
        {"image": _b64(np.random.default_rng(1).integers(0, 256, 210_000, dtype=np.uint8).tobytes())}]))
    assert status == 200 and "stack_trace" not in body, body
    messages = {row["row"]: row["message"] for row in body["predictions"]}
    assert messages[0] == messages[3] == ""
    assert messages[1] == "row 1: 'pixels' must be space-separated whole numbers in 0..255"
    assert messages[2].startswith("row 2: 'pixels' of 30,000 characters is over the 20,000 limit")
    assert messages[4].startswith("row 4: 9 faces found, over the limit of 5 per image")
    assert messages[5].startswith("row 5: not a readable image")
    assert messages[6].startswith("row 6: image of about 210.0 kB is over the 200.0 kB limit")

    refusals = [
        (_rows([{"pixels": "1 " * 50_000}]), "row 0: 'pixels' of 100,000 characters is over the 20,000 limit "
                                             "(FER_ABLATE_MAX_PIXELS_CHARS)"),
        (_rows([{"pixels": "1 " * 9_000}] * 60), "request: 60 rows with about 1.1 MB of images and pixels is over "
                                                 "the 1.0 MB limit (FER_ABLATE_MAX_REQUEST_BYTES)"),
        (_rows([{"image": _b64(_png_header_only(1200, 1000))}]), "row 0: 1200x1000 pixels is over the 1,000,000 "
                                                                 "pixel limit per request"),
        (_rows([{"image": _b64(_png(_tiled(8)))}] * 2), "request: 2 images of 1,280,000 pixels in all"),
        (_rows([{"pixels": GOOD_PIXELS}] * 21), "request: 21 crops to classify is over the budget of 20 faces"),
        (b'{"dataframe_records": [{"pixels": 5}', ""),  # not JSON: MLflow's own refusal
        (_rows([{"pixels": 5}]), "row 0: 'pixels' must be a string, got int"),
    ]
    for request, reason in refusals:
        status, body = _post(low_server, request)
        assert status == 400 and reason in body["message"] and "stack_trace" not in body, (reason, body)
    # The server still answers: nothing above left it stuck or broken.
    assert _post(low_server, _rows([{"pixels": GOOD_PIXELS}]))[0] == 200


@pytest.mark.slow
def test_abusive_requests_end_and_an_ordinary_one_is_answered_beside_them(keras_file):
    """Four requests of twelve 800x800 images of 64 tiled faces each (~0.3 s of detection per image on an
    idle core: more than the 2 s budget per request, however fast the machine), with the ordinary one-face
    request sent while they run. What held the old detector lock for ~43 s."""
    abusive = _rows([{"image": _b64(_png(_tiled(8)))}] * 12)
    ordinary = _rows([{"image": _b64(_png(_face()))}])
    env = {**os.environ, "FER_ABLATE_MAX_REQUEST_SECONDS": "2"}
    with served_model(str(_photo_model(keras_file)), env=env) as port, ThreadPoolExecutor(5) as pool:
        assert _post(port, ordinary)[0] == 200  # warm: this thread's cascade, the model's first call
        heavy = [pool.submit(_post, port, abusive) for _ in range(4)]
        status, body = _post(port, ordinary)
        assert status == 200 and [row["face"] for row in body["predictions"]] == [0]
        results = [f.result(timeout=120) for f in heavy]
    for status, body in results:
        assert status in (200, 400) and "stack_trace" not in body
        messages = [row["message"] for row in body["predictions"]] if status == 200 else [body["message"]]
        assert any("not processed: the request's 2 s budget ran out" in m for m in messages), messages
