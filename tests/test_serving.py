"""The served photo model under concurrent requests: each request's options (``tta``) are its own.

MLflow's scoring server runs ``predict`` in a thread pool on one shared model object, so a request that
asks for the test-time flip must not change what a simultaneous request without it gets. Checked on the
loaded pyfunc model from many threads, and over HTTP against a real ``mlflow models serve`` process.
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
from fer_ablate.inference.pyfunc_model import PROB_COLUMNS
from fer_ablate.inference.registered import photo_signature
from fer_ablate.training.loop import build_models

REQUESTS = 16  # per check: 4 threads, alternating tta, so requests overlap with ones of the other kind
THREADS = 4


@pytest.fixture(scope="module")
def photo_model(tmp_path_factory) -> Path:
    """An untrained tiny CNN saved as the MLflow photo model (no tracking store, no training needed)."""
    folder = tmp_path_factory.mktemp("served")
    # One dense layer without dropout, so the output depends on the input (and on its mirror image).
    cfg = resolve_config("paper", {**TINY, "model.dense_units": [16], "model.dense_dropout": [0.0]})
    inference, _, _ = build_models(cfg)
    # Untrained logits are near zero (probabilities ~1/7 whatever the face): scale them up so the mirrored
    # view moves the probabilities far more than float noise, and a mixed-up option shows.
    emotion = inference.get_layer("paper_cnn").get_layer("emotion")
    kernel, bias = emotion.get_weights()
    emotion.set_weights([kernel * 50, bias])
    keras_file = folder / "model.keras"
    inference.save(keras_file)
    path = folder / "photo_model"
    mlflow.pyfunc.save_model(path, python_model=pyfunc_entry.__file__, artifacts={"keras_model": str(keras_file)},
                             signature=photo_signature())
    return path


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
