"""The served photo model under concurrent requests: each request's options (``tta``) are its own.

MLflow's scoring server runs ``predict`` in a thread pool on one shared model object, so a request that
asks for the test-time flip must not change what a simultaneous request without it gets. Checked on the
loaded pyfunc model from many threads, and over HTTP against a real ``mlflow models serve`` process.

Also: the request body written from photo files (``serving_input.write_request``), and the ``notice`` a
photo model carrying its training run's tags puts on every row (none for a model without them).
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import TINY, served_model
from skimage import data as skdata

from fer_ablate.config.settings import resolve_config
from fer_ablate.data.synthetic import make_synthetic_faces
from fer_ablate.inference import pyfunc_entry
from fer_ablate.inference.faces import ImageError
from fer_ablate.inference.provenance import SYNTHETIC
from fer_ablate.inference.pyfunc_model import PROB_COLUMNS
from fer_ablate.inference.registered import photo_signature
from fer_ablate.inference.serving_input import decode_base64_image, request_body, write_request
from fer_ablate.training.loop import build_models

REQUESTS = 16  # per check: 4 threads, alternating tta, so requests overlap with ones of the other kind
THREADS = 4
DEGENERATE = "predicts only 'happy' on validation (30 of 30 images)"
TOY_TAGS = {"data_source": "synthetic", "data_synthetic": "true", "degenerate": "true", "degenerate_reason": DEGENERATE}


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory) -> Path:
    """An untrained tiny CNN saved as a .keras file (no tracking store, no training needed)."""
    folder = tmp_path_factory.mktemp("served")
    # One dense layer without dropout, so the output depends on the input (and on its mirror image).
    cfg = resolve_config("paper", {**TINY, "model.dense_units": [16], "model.dense_dropout": [0.0]})
    inference, _, _ = build_models(cfg)
    # Untrained logits are near zero (probabilities ~1/7 whatever the face): scale them up so the mirrored
    # view moves the probabilities far more than float noise, and a mixed-up option shows.
    emotion = inference.get_layer("paper_cnn").get_layer("emotion")
    kernel, bias = emotion.get_weights()
    emotion.set_weights([kernel * 50, bias])
    path = folder / "model.keras"
    inference.save(path)
    return path


def _save_photo_model(keras_file: Path, path: Path, **kwargs) -> Path:
    mlflow.pyfunc.save_model(path, python_model=pyfunc_entry.__file__, artifacts={"keras_model": str(keras_file)},
                             signature=photo_signature(), **kwargs)
    return path


@pytest.fixture(scope="module")
def photo_model(keras_file) -> Path:
    """The photo model as ``mlflow.pyfunc.save_model`` makes it, without training tags (nothing to say)."""
    return _save_photo_model(keras_file, keras_file.parent / "photo_model")


@pytest.fixture(scope="module")
def toy_photo_model(keras_file) -> Path:
    """The same model carrying a synthetic, degenerate training run's tags, as ``promote`` writes them."""
    return _save_photo_model(keras_file, keras_file.parent / "toy_photo_model",
                             model_config={"training_tags": TOY_TAGS})


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    """A few FER2013-style crops (no detection) and a real photo (Haar detection, one face)."""
    faces = make_synthetic_faces(7, seed=5)[0][:3]
    pixels = pd.DataFrame({"pixels": [" ".join(map(str, face.ravel())) for face in faces]})
    ok, jpeg = cv2.imencode(".jpg", skdata.astronaut()[20:320, 120:340, ::-1])  # the face and some margin
    photo = pd.DataFrame({"image": [base64.b64encode(jpeg.tobytes()).decode()]})
    return {"pixels": pixels, "photo": photo}


def _jobs() -> list[tuple[str, bool]]:
    return [(("pixels", "photo")[i % 3 == 2], bool(i % 2)) for i in range(REQUESTS)]


def test_concurrent_requests_with_different_tta_match_sequential_ones(photo_model, frames):
    model = mlflow.pyfunc.load_model(str(photo_model))
    reference = {(kind, tta): model.predict(frame, params={"tta": tta})
                 for kind, frame in frames.items() for tta in (False, True)}
    for kind in frames:  # the flip must change the answer, or the check below could not tell the two apart
        assert np.abs(reference[kind, True][PROB_COLUMNS].to_numpy()
                      - reference[kind, False][PROB_COLUMNS].to_numpy()).max() > 1e-3, kind
    assert len(reference["photo", False]) == 1 and reference["photo", False]["face"][0] == 0  # a face was found

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(lambda job: model.predict(frames[job[0]], params={"tta": job[1]}), _jobs()))
    for job, got in zip(_jobs(), results, strict=True):
        pd.testing.assert_frame_equal(got, reference[job], check_exact=False, atol=1e-6, obj=str(job))
    # The shared classifier keeps its construction-time default: no request left its option behind.
    assert model.unwrap_python_model().classifier.tta is False


def _post(port: int, frame: pd.DataFrame, tta: bool) -> list[dict]:
    payload = json.dumps({"dataframe_records": frame.to_dict("records"), "params": {"tta": tta}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=payload, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())["predictions"]


def test_concurrent_http_requests_with_different_tta(photo_model, frames):
    """The same over HTTP: ``mlflow models serve`` answers overlapping requests from its thread pool."""
    model = mlflow.pyfunc.load_model(str(photo_model))
    reference = {(kind, tta): model.predict(frame, params={"tta": tta})
                 for kind, frame in frames.items() for tta in (False, True)}
    with served_model(str(photo_model)) as port:
        with ThreadPoolExecutor(THREADS) as pool:
            results = list(pool.map(lambda job: _post(port, frames[job[0]], job[1]), _jobs()))
        for job, got in zip(_jobs(), results, strict=True):
            expected = reference[job][PROB_COLUMNS].to_numpy()
            served = np.array([[row[c] for c in PROB_COLUMNS] for row in got])
            np.testing.assert_allclose(served, expected, atol=1e-5, err_msg=str(job))


def test_served_rows_say_when_the_model_is_a_toy(photo_model, toy_photo_model, frames):
    empty = pd.DataFrame({"image": [frames["photo"]["image"][0], base64.b64encode(cv2.imencode(
        ".png", np.full((64, 64), 128, np.uint8))[1].tobytes()).decode()]})  # a face, then no face
    toy = mlflow.pyfunc.load_model(str(toy_photo_model)).predict(empty)
    assert list(toy["message"]) == ["", "no face found"]
    assert list(toy["notice"]) == [f"{SYNTHETIC}; degenerate model: {DEGENERATE}"] * 2
    plain = mlflow.pyfunc.load_model(str(photo_model)).predict(empty)
    assert list(plain["notice"]) == ["", ""]  # a model that carries no training tags says nothing
    pd.testing.assert_frame_equal(plain.drop(columns="notice"), toy.drop(columns="notice"))


def test_request_body_from_photo_files(tmp_path, capsys):
    first, second = tmp_path / "a.jpg", tmp_path / "b.png"
    first.write_bytes(b"\xff\xd8 not checked here: the server answers for the image itself")
    second.write_bytes(bytes(range(256)) * 3)
    body = request_body([first, str(second)], tta=True)
    assert body["params"] == {"tta": True, "crops": False}
    assert [decode_base64_image(row["image"], "x") for row in body["dataframe_records"]] == \
        [first.read_bytes(), second.read_bytes()]
    out = write_request([second], tmp_path / "sub" / "request.json", crops=True)
    assert json.loads(out.read_text()) == {"dataframe_records": [{"image": base64.b64encode(
        second.read_bytes()).decode()}], "params": {"tta": False, "crops": True}}
    assert write_request([first]) is None and json.loads(capsys.readouterr().out) == request_body([first])
    (tmp_path / "empty.jpg").write_bytes(b"")
    for paths, problem in (([], "no photos given"), ([tmp_path / "missing.jpg"], "missing.jpg: no such file"),
                           ([tmp_path], "not a regular file"), ([tmp_path / "empty.jpg"], "empty file")):
        with pytest.raises(ImageError, match=problem):
            request_body(paths)
