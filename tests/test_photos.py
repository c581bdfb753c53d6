"""Real photos (scikit-image's astronaut, composed into scenes), OpenCV detection, crops, predict, registry,
and the photo model served for real by ``mlflow models serve`` over HTTP (one server for the module).

The model is trained on synthetic faces and tagged degenerate, so predict and the served rows must say so."""

from __future__ import annotations

import base64
import json
import logging
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pytest
from conftest import REAL_FER2013, TINY, served_model
from mlflow.tracking import MlflowClient
from skimage import data as skdata
from test_field_inputs_inference import _png_declaring

from fer_ablate.config.settings import resolve_config
from fer_ablate.inference.faces import Box, FaceDetector, ImageError, crop_box, crop_face, decode_image
from fer_ablate.inference.predict import predict_paths
from fer_ablate.inference.provenance import SYNTHETIC
from fer_ablate.inference.registered import DEFAULT_MODEL_URI, load_classifier, promote
from fer_ablate.inference.serving_input import write_request
from fer_ablate.runs.single import train_and_track
from fer_ablate.tracking import TrackingError

ASTRONAUT_FACE = Box(177, 66, 95, 95)  # where Haar finds Eileen Collins' face in skimage's astronaut (512x512)
DEGENERATE = "predicts only 'happy' on validation (30 of 30 images)"
TOY_NOTICE = f"{SYNTHETIC}; degenerate model: {DEGENERATE}"


def _iou(a: Box, b: Box) -> float:
    x1, y1 = max(a.x, b.x), max(a.y, b.y)
    x2, y2 = min(a.x + a.w, b.x + b.w), min(a.y + a.h, b.y + b.h)
    inter = max(0, x2 - x1) * max(0, y2 - y1)
    return inter / (a.w * a.h + b.w * b.h - inter)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    """astronaut.jpg, a two-face scene (one copy mirrored and smaller), a faceless photo, a corrupt file."""
    folder = tmp_path_factory.mktemp("photos")
    astronaut = skdata.astronaut()[:, :, ::-1]  # RGB -> BGR for OpenCV
    scene = np.full((560, 1100, 3), 235, np.uint8)
    scene[20:532, 20:532] = astronaut
    small = cv2.resize(astronaut[:, ::-1], (410, 410), interpolation=cv2.INTER_AREA)
    scene[120:530, 640:1050] = small
    paths = {"astronaut": folder / "astronaut.jpg", "scene": folder / "scene.png", "empty": folder / "coffee.jpg",
             "corrupt": folder / "corrupt.jpg"}
    cv2.imwrite(str(paths["astronaut"]), astronaut)
    cv2.imwrite(str(paths["scene"]), scene)
    cv2.imwrite(str(paths["empty"]), skdata.coffee()[:, :, ::-1])
    paths["corrupt"].write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    return paths


def test_faces_found_at_the_right_places(photos):
    detector = FaceDetector()
    [face] = detector.detect(cv2.imread(str(photos["astronaut"]), cv2.IMREAD_GRAYSCALE))
    assert _iou(face, ASTRONAUT_FACE) > 0.8
    boxes = detector.detect(cv2.imread(str(photos["scene"]), cv2.IMREAD_GRAYSCALE))
    assert len(boxes) == 2
    # Expected: the original at offset (20, 20); the mirrored copy scaled by 410/512 at offset (640, 120).
    first = Box(ASTRONAUT_FACE.x + 20, ASTRONAUT_FACE.y + 20, 95, 95)
    s = 410 / 512
    mirrored_x = 512 - ASTRONAUT_FACE.x - ASTRONAUT_FACE.w
    second = Box(round(640 + s * mirrored_x), round(120 + s * ASTRONAUT_FACE.y), round(s * 95), round(s * 95))
    assert _iou(boxes[0], first) > 0.7 and _iou(boxes[1], second) > 0.7
    assert detector.detect(cv2.imread(str(photos["empty"]), cv2.IMREAD_GRAYSCALE)) == []


def _embed_as_training_face(face48: np.ndarray, scale: int = 4) -> tuple[np.ndarray, Box]:
    """A 48x48 face enlarged and set in a larger picture (edges continued): where its frame lies is known."""
    side = 48 * scale
    big = cv2.resize(face48, (side, side), interpolation=cv2.INTER_CUBIC)
    pad = side // 2
    return cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_REPLICATE), Box(pad, pad, side, side)


def _recovery(faces: np.ndarray, box_scale: float | None = None) -> tuple[float, list[float]]:
    """Detection rate and IoUs between the crop frame we would take and the true frame of each face."""
    detector = FaceDetector()
    ious = []
    for face in faces:
        picture, truth = _embed_as_training_face(face)
        boxes = detector.detect(picture)
        if boxes:
            box = max(boxes, key=lambda b: b.w * b.h)
            ious.append(_iou(crop_box(box) if box_scale is None else crop_box(box, box_scale), truth))
    return len(ious) / len(faces), ious


def test_crop_geometry_reproduces_a_tight_face_crop(photos):
    """A FER2013-style crop of a real face, shown enlarged in a bigger picture, is cropped back to itself."""
    grey = cv2.imread(str(photos["astronaut"]), cv2.IMREAD_GRAYSCALE)
    [face] = FaceDetector().detect(grey)
    tight = crop_face(grey, face)
    picture, truth = _embed_as_training_face(tight)
    [found] = FaceDetector().detect(picture)
    assert _iou(crop_box(found), truth) > 0.85
    again = crop_face(picture, found)
    assert np.abs(again.astype(int) - tight.astype(int)).mean() < 12  # grey levels
    # The padded-and-widened crop of the `fer` package (about 1.6x the box here) puts the face elsewhere.
    assert _iou(crop_box(found, 1.6), truth) < 0.5


@pytest.mark.skipif(not REAL_FER2013.exists(), reason=f"real FER2013 not found at {REAL_FER2013}")
def test_crop_geometry_matches_real_fer2013_faces():
    from fer_ablate.data import load_dataset

    cfg = resolve_config("paper", {"data.source": str(REAL_FER2013)})
    faces = load_dataset(cfg["data"]).splits["validation"][0][:300]
    rate, ious = _recovery(faces)
    assert rate > 0.6 and np.median(ious) > 0.85, (rate, np.median(ious))


def test_bad_images_give_clear_errors(tmp_path):
    with pytest.raises(ImageError, match="empty file"):
        decode_image(b"", "a.jpg")
    with pytest.raises(ImageError, match="not a readable image"):
        decode_image(b"GIF89a nonsense", "b.gif")
    ok, huge = cv2.imencode(".png", np.zeros((7000, 7000), np.uint8))  # 49 M pixels in ~50 kB of PNG
    with pytest.raises(ImageError, match="over the 40,000,000 pixel limit"):
        decode_image(huge.tobytes(), "bomb.png")


def _post(port: int, payload: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=payload, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def trained_run() -> str:
    # One dense layer without dropout: TINY's 8-unit layers behind dropout 0.5 can leave a 1-epoch model whose
    # output does not depend on its input at all, and the test-time-flip check below needs one that does.
    cfg = resolve_config("paper", {**TINY, "data.source": "synthetic", "model.dense_units": [16],
                                   "model.dense_dropout": [0.0]})
    run_id, _ = train_and_track(cfg, experiment="photos")
    # Set here, whatever the training code concluded, so that the notice below is known in advance.
    MlflowClient().set_tag(run_id, "degenerate", "true")
    MlflowClient().set_tag(run_id, "degenerate_reason", DEGENERATE)
    return run_id


@pytest.fixture(scope="module")
def champion(trained_run) -> tuple:
    """The trained run promoted twice: the two model versions (the second holds the alias)."""
    return promote(trained_run), promote(trained_run)


@pytest.fixture(scope="module")
def champion_port(champion):
    """``mlflow models serve`` of ``fer-ablate@champion``, shared by this module's HTTP tests (a start is slow)."""
    with served_model(DEFAULT_MODEL_URI) as port:
        yield port


def test_predict_needs_a_registered_model_first():
    with pytest.raises(TrackingError, match="fer-ablate promote RUN_ID"):
        load_classifier("models:/nothing-registered@champion")


def test_promote_predict_and_serve_over_http(champion, champion_port, photos, tmp_path, caplog):
    client = MlflowClient()
    first, second = champion  # a newer version takes the alias
    assert int(second.version) == int(first.version) + 1
    assert client.get_model_version_by_alias("fer-ablate", "champion").version == second.version
    # The run's caveats travel inside the model (served without the store) and show on the version.
    config = mlflow.models.get_model_info(DEFAULT_MODEL_URI).flavors["python_function"]["config"]
    assert config["training_tags"]["data_source"] == "synthetic"
    assert config["training_tags"]["degenerate_reason"] == DEGENERATE
    assert client.get_model_version("fer-ablate", second.version).tags["degenerate"] == "true"

    classifier = load_classifier(DEFAULT_MODEL_URI)
    assert classifier.notice == TOY_NOTICE
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="fer_ablate.inference.predict"):
        records = predict_paths(classifier, [str(p) for p in photos.values()], out_dir=out)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING][:2] == \
        [SYNTHETIC, f"degenerate model: {DEGENERATE}"]
    assert all(r["notice"] == TOY_NOTICE for r in records)
    by_file = {}
    for r in records:
        by_file.setdefault(Path(r["file"]).stem, []).append(r)
    assert [r["face"] for r in by_file["scene"]] == [0, 1]
    assert all(len(r["probabilities"]) == 7 and r["label"] in r["probabilities"] for r in by_file["scene"])
    assert by_file["coffee"] == [{"file": str(photos["empty"]), "output": "annotated/coffee.jpg", "face": None,
                                  "box": None, "label": None, "message": "no face found", "notice": TOY_NOTICE}]
    assert by_file["corrupt"][0]["message"].startswith("error: ") and "not a readable image" in \
        by_file["corrupt"][0]["message"]
    assert (out / "annotated" / "scene.jpg").stat().st_size > 10_000
    assert len((out / "predictions.jsonl").read_text().splitlines()) == len(records)
    predict_paths(classifier, [str(photos["scene"])], out_dir=tmp_path / "csv", fmt="csv")
    rows = (tmp_path / "csv" / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("file,frame,time_s,face,x,y,w,h,label,score,p_angry") and len(rows) == 3
    assert rows[0].endswith(",output,message,notice") and rows[1].endswith(TOY_NOTICE)

    port = champion_port
    # A browser's data URL, wrapped at 76 columns like MIME base64: the same image, the same answer.
    data_url = "data:image/png;base64," + base64.encodebytes(photos["scene"].read_bytes()).decode()
    status, body = _post(port, json.dumps({"dataframe_records": [{"image": _b64(photos["scene"])},
                                                                 {"image": data_url}]}).encode())
    assert status == 200 and all(row["notice"] == TOY_NOTICE for row in body["predictions"])
    served = [row for row in body["predictions"] if row["row"] == 0]
    assert [row["label"] for row in body["predictions"] if row["row"] == 1] == [row["label"] for row in served]
    assert [row["label"] for row in served] == [r["label"] for r in by_file["scene"]]
    assert [[row[k] for k in "xywh"] for row in served] == [r["box"] for r in by_file["scene"]]
    for row, rec in zip(served, by_file["scene"], strict=True):
        assert row["p_happy"] == pytest.approx(rec["probabilities"]["happy"], abs=1e-4)

    status, body = _post(port, json.dumps({"dataframe_records": [{"image": base64.b64encode(
        b"plain text, not a picture").decode()}]}).encode())
    assert status == 400 and "not a readable image" in body["message"]
    status, body = _post(port, b"{this is not json")
    assert 400 <= status < 500
    ok, huge = cv2.imencode(".png", np.zeros((7000, 7000), np.uint8))
    status, body = _post(port, json.dumps({"dataframe_records": [{"image": base64.b64encode(
        huge.tobytes()).decode()}]}).encode())
    assert status == 400 and "pixel limit" in body["message"]
    # 600 M pixels declared in a tiny PNG (over Pillow's own 358 M error limit): refused from the header.
    status, body = _post(port, json.dumps({"dataframe_records": [{"image": base64.b64encode(
        _png_declaring(30_000, 20_000)).decode()}]}).encode())
    assert status == 400 and "over the 40,000,000 pixel limit" in body["message"]
    # A batch of FER2013-style crops (space-separated grey values): one prediction per crop, no detection.
    crop = cv2.resize(cv2.imread(str(photos["astronaut"]), cv2.IMREAD_GRAYSCALE)[66:161, 177:272], (48, 48))
    pixels = " ".join(map(str, crop.ravel()))
    status, body = _post(port, json.dumps({"dataframe_records": [{"pixels": pixels}, {"pixels": pixels}],
                                           "params": {"tta": True}}).encode())
    assert status == 200 and [r["face"] for r in body["predictions"]] == [0, 0]
    expected = classifier.classify_crops(crop[None])[0]
    classifier.tta = True
    mirrored = classifier.classify_crops(crop[None])[0]
    classifier.tta = False
    assert body["predictions"][0]["p_happy"] == pytest.approx(float(mirrored[3]), abs=1e-4)
    assert not np.allclose(mirrored, expected)  # test-time flip really averaged a second view
    status, body = _post(port, json.dumps({"dataframe_records": [{"image": _b64(photos["empty"])}]}).encode())
    assert status == 200 and body["predictions"][0]["message"] == "no face found"
    assert body["predictions"][0]["notice"] == TOY_NOTICE
    status, body = _post(port, json.dumps({"dataframe_records": [{"image": _b64(photos["astronaut"])}]}).encode())
    assert status == 200 and len(body["predictions"]) == 1  # still serving after the bad requests


def test_video_frames_and_timeline(trained_run, photos, tmp_path):
    astronaut = cv2.imread(str(photos["astronaut"]))
    coffee = cv2.resize(cv2.imread(str(photos["empty"])), (512, 512))
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (512, 512))
    for i in range(20):
        writer.write(astronaut if i < 10 else coffee)
    writer.release()
    classifier = load_classifier(f"runs:/{trained_run}/model")
    records = predict_paths(classifier, [str(video)], out_dir=tmp_path / "out", every=2)
    assert {r["notice"] for r in records} == {TOY_NOTICE}  # a run's Keras model: caveats from its run's tags
    assert [r["frame"] for r in records] == list(range(0, 20, 2))
    assert all(r["face"] == 0 for r in records[:5]) and all(r["face"] is None for r in records[5:])
    assert records[1]["time_s"] == pytest.approx(0.2)
    assert all(r["output"] == "timelines/clip_timeline.png" for r in records)
    assert (tmp_path / "out" / "timelines" / "clip_timeline.png").stat().st_size > 5_000


def test_a_plain_keras_file_says_nothing(trained_run, photos, tmp_path, caplog):
    """The same toy model saved as a .keras file carries no training tags: no warning, no notice."""
    from fer_ablate.tracking import load_model

    path = tmp_path / "toy.keras"
    load_model(f"runs:/{trained_run}/model").save(path)
    classifier = load_classifier(str(path))
    with caplog.at_level(logging.WARNING, logger="fer_ablate.inference.predict"):
        [record] = predict_paths(classifier, [str(photos["astronaut"])])
    assert classifier.notices == () and "notice" not in record and record["face"] == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def _big_png(path: Path) -> Path:
    """The astronaut upscaled x2 (1024x1024, colour) as a PNG stored without compression: about 3 MB."""
    big = cv2.resize(skdata.astronaut()[:, :, ::-1], (1024, 1024), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(path), big, [cv2.IMWRITE_PNG_COMPRESSION, 0])
    return path


def test_serving_request_file_over_1mb_as_the_readme_sends_it(champion_port, tmp_path):
    """README: ``fer-ablate serving-request photo.png -o request.json``, then ``curl ... -d @request.json``.

    The body of a 1 MB+ photo is far past the 128 kB that Linux allows one command-line argument, where
    ``-d "...$(base64 photo)..."`` failed with "Argument list too long".
    """
    photo = _big_png(tmp_path / "photo.png")
    assert photo.stat().st_size > 1_000_000
    request = write_request([photo], tmp_path / "request.json", tta=True)
    assert request.stat().st_size > 1_300_000
    url = f"http://127.0.0.1:{champion_port}/invocations"
    if shutil.which("curl"):
        done = subprocess.run(["curl", "-sS", "-X", "POST", url, "-H", "Content-Type: application/json",
                               "-d", f"@{request}", "-w", "\n%{http_code}"], capture_output=True, text=True,
                              timeout=120, check=True)
        text, status = done.stdout.rsplit("\n", 1)
        status, body = int(status), json.loads(text)
    else:
        status, body = _post(champion_port, request.read_bytes())
    assert status == 200, body
    # Her face, at twice its size (Haar also sees a false face or two in the upscaled picture).
    boxes = [Box(*(row[k] for k in "xywh")) for row in body["predictions"]]
    assert max(_iou(box, Box(*(2 * v for v in ASTRONAUT_FACE.as_list()))) for box in boxes) > 0.7
    assert all(row["label"] and row["notice"] == TOY_NOTICE for row in body["predictions"])
