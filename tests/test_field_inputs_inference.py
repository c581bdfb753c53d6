"""Files users bring to predict, evaluate and the served model (issue 15, items 7-10): each kind either works
or is refused in one line. Every input is generated here; the model is a tiny untrained Keras file."""

from __future__ import annotations

import base64
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import cv2
import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from skimage import data as skdata

from fer_ablate.cli import main
from fer_ablate.config.names import path_under, quote_filter_value, safe_name
from fer_ablate.config.settings import ConfigError
from fer_ablate.inference.faces import ImageError, decode_image, read_image
from fer_ablate.inference.model_contract import ModelError, check_model, load_model_file, sniff_model_file
from fer_ablate.inference.predict import predict_paths
from fer_ablate.inference.pyfunc_model import FaceClassifier, predictions_frame
from fer_ablate.inference.registered import load_classifier
from fer_ablate.inference.score_dataset import evaluate_model
from fer_ablate.inference.serving_input import decode_base64_image
from fer_ablate.tracking import TrackingError

PROJECT = Path(__file__).resolve().parent.parent


def _model(shape=(48, 48, 1), classes=7) -> keras.Model:
    inputs = keras.Input(shape)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(inputs))
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(x))


@pytest.fixture(scope="module")
def tiny_keras(tmp_path_factory) -> Path:
    """A contract-keeping model file: grey 48x48 in, 7 probabilities out (untrained: labels do not matter)."""
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    _model().save(path)
    return path


@pytest.fixture(scope="module")
def classifier(tiny_keras) -> FaceClassifier:
    return load_classifier(str(tiny_keras))


# ---- 7. outputs named by file stem must not overwrite each other; records stream; a missing path is a row

def _photo(path: Path, seed: int) -> Path:
    """A face photo (skimage's astronaut, shifted) so every input gives a face record and an annotated image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.roll(skdata.astronaut()[:, :, ::-1], seed * 7, axis=1)
    cv2.imwrite(str(path), image)
    return path


def _video(path: Path, frames: int = 4) -> Path:
    fourcc = {".mp4": "mp4v", ".avi": "MJPG"}[path.suffix]
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (128, 128))
    for i in range(frames):
        writer.write(np.full((128, 128, 3), 40 * i, np.uint8))
    writer.release()
    assert path.stat().st_size > 0
    return path


def test_same_stem_inputs_get_distinct_outputs_and_a_missing_path_is_one_error_row(classifier, tmp_path):
    root = tmp_path / "in"
    photos = [_photo(root / "2023" / "IMG_0001.jpg", 0), _photo(root / "2024" / "IMG_0001.jpg", 1),
              _photo(root / "2024" / "IMG_0001.png", 2)]
    videos = [_video(root / "clips" / "clip.mp4"), _video(root / "clips" / "clip.avi")]
    (root / "2024" / "._IMG_0002.jpg").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")  # hidden: skipped
    missing = root / "2025" / "IMG_0009.jpg"
    out = tmp_path / "out"
    records = predict_paths(classifier, [str(root), str(missing)], out_dir=out)

    by_file: dict[str, set] = {}
    for r in records:
        by_file.setdefault(r["file"], set()).add(r["output"])
    assert set(by_file) == {str(p) for p in [*photos, *videos, missing]}
    outputs = [next(iter(by_file[str(p)])) for p in [*photos, *videos]]
    assert all(len(by_file[str(p)]) == 1 for p in [*photos, *videos])  # one output per input
    assert len(set(outputs)) == 5, outputs
    for name in outputs:
        assert (out / name).is_file() and (out / name).stat().st_size > 1000, name
    assert outputs[:3] == ["annotated/2023/IMG_0001.jpg", "annotated/2024/IMG_0001.jpg",
                           "annotated/2024/IMG_0001_png.jpg"]
    assert sorted(outputs[3:]) == ["timelines/clips/clip_mp4_timeline.png", "timelines/clips/clip_timeline.png"]
    [error] = [r for r in records if r["file"] == str(missing)]
    assert error["message"] == f"error: {missing}: no such file or folder" and error["output"] is None
    # Every record is in the file, each naming its output.
    written = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert written == records


def test_cli_exit_code_1_with_a_missing_input_and_csv_names_outputs(tiny_keras, tmp_path, capsys):
    photo = _photo(tmp_path / "a.jpg", 0)
    out = tmp_path / "out"
    rc = main(["predict", str(photo), str(tmp_path / "gone.jpg"), "--model", str(tiny_keras), "--out", str(out),
               "--format", "csv"])
    assert rc == 1
    header, *rows = (out / "predictions.csv").read_text().splitlines()
    assert header.endswith(",output,message") and len(rows) == 2
    assert rows[0].split(",")[-2] == "annotated/a.jpg" and "gone.jpg: no such file" in rows[1]
    # Without --out each record is printed as a JSON line.
    assert main(["predict", str(photo), "--model", str(tiny_keras)]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["file"] for r in printed] == [str(photo)]


def test_ctrl_c_keeps_every_record_finished_so_far(tiny_keras, tmp_path):
    """A real ``python -m fer_ablate.cli predict`` over many photos, interrupted by a real SIGINT."""
    folder = tmp_path / "many"
    first = _photo(folder / "p0000.jpg", 0)
    for i in range(1, 3000):  # hard links: many inputs, one file's worth of disk
        os.link(first, folder / f"p{i:04d}.jpg")
    out = tmp_path / "out"
    records = out / "predictions.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "fer_ablate.cli", "predict", str(folder), "--model",
                             str(tiny_keras), "--out", str(out)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        while not (records.exists() and len(records.read_bytes().splitlines()) >= 5):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr.decode()[-2000:]
    assert "interrupted" in stderr.decode()
    lines = records.read_text().splitlines()
    kept = [json.loads(line) for line in lines]  # every line is a whole record
    assert 5 <= len(kept) < 3000
    assert all((out / r["output"]).is_file() for r in kept)


# ---- 8. model files are checked against the contract when loaded

@pytest.mark.parametrize(("shape", "classes", "expected"), [
    ((48, 48, 1), 8, "gives [n, 8] (8 classes: a FER+ model?"),
    ((64, 64, 1), 7, "takes [n, 64, 64, 1] and gives [n, 7] (made for 64x64 images)"),
    ((48, 48, 3), 7, "takes [n, 48, 48, 3] and gives [n, 7] (an RGB model)"),
])
def test_models_that_break_the_contract_are_refused_in_one_line(shape, classes, expected, tmp_path, capsys):
    path = tmp_path / "other.keras"
    _model(shape, classes).save(path)
    with pytest.raises(ModelError, match="fer-ablate needs grey") as info:
        load_classifier(str(path))
    assert str(info.value).startswith(f"{path}: the model ") and expected in str(info.value)
    with pytest.raises(ModelError, match="fer-ablate needs grey"):
        evaluate_model(str(path), "synthetic")
    assert main(["evaluate", "--model", str(path), "--data", "synthetic"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and expected in err


def test_open_spatial_size_is_accepted_and_a_good_model_passes(tiny_keras):
    inputs = keras.Input((None, None, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(inputs))
    open_model = keras.Model(inputs, keras.layers.Dense(7, activation="softmax")(x))
    assert check_model(open_model, "open") is open_model
    assert sniff_model_file(tiny_keras).kind == "keras"


def test_an_h5_file_named_keras_says_what_it_is(tmp_path):
    h5 = tmp_path / "model.h5"
    _model().save(h5)
    renamed = tmp_path / "model.keras"
    renamed.write_bytes(h5.read_bytes())
    with pytest.raises(ModelError, match=r"model.keras: this is an HDF5 \(legacy .h5\) Keras file, not a .keras zip: "
                                         r"rename it to model.h5"):
        load_classifier(str(renamed))
    # Named .h5 it loads (Keras 3 reads legacy HDF5) and is checked like any other.
    assert check_model(load_model_file(h5, keras.saving.load_model), "h5") is not None
    missing = tmp_path / "nothing.keras"
    with pytest.raises(ModelError, match="nothing.keras: No such file"):
        load_classifier(str(missing))
    text = tmp_path / "notes.keras"
    text.write_text("hello")
    with pytest.raises(ModelError, match=r"notes.keras: not a Keras model file \(starts with b'hello'"):
        load_classifier(str(text))


def _as_keras2_zip(source: Path, target: Path) -> Path:
    """A .keras file as Keras 2.15 wrote it: its metadata says 2.15.0 and its classes live in keras.engine."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for name in zin.namelist():
            body = zin.read(name)
            if name == "metadata.json":
                body = json.dumps({"keras_version": "2.15.0", "date_saved": "2024-01-01@00:00:00"}).encode()
            elif name == "config.json":
                body = body.replace(b'"keras.src.models.functional"', b'"keras.engine.functional"')
            zout.writestr(name, body)
    return target


def test_keras2_files_say_resave_with_keras3(tiny_keras, tmp_path):
    zipped = _as_keras2_zip(tiny_keras, tmp_path / "old.keras")
    with pytest.raises(ModelError, match=r"old.keras: saved by Keras 2.15.0 .*re-save it with Keras 3"):
        load_classifier(str(zipped))
    # A Keras 2 HDF5 file with a layer Keras 3 does not have (TFOpLambda: TensorFlow ops in a Keras 2 model).
    import h5py

    h5 = tmp_path / "old.h5"
    _model().save(h5)
    with h5py.File(h5, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        config["config"]["layers"][1]["class_name"] = "TFOpLambda"
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = "2.15.0"
    assert sniff_model_file(h5).keras_version == "2.15.0"
    with pytest.raises(ModelError, match=r"old.h5: saved by Keras 2.15.0 .*re-save it with Keras 3"):
        load_model_file(h5, keras.saving.load_model)


# ---- 9. MLflow's own errors are not replaced by "no model registered"

def test_an_unsupported_store_is_reported_in_mlflows_words(tmp_path):
    session_store = os.environ["MLFLOW_TRACKING_URI"]
    try:
        with pytest.raises(TrackingError) as info:
            load_classifier("models:/fer-ablate@champion", tracking_uri=str(tmp_path / "mlruns"))
    finally:  # use_store set it for the process (MLflow 3 also writes it into the environment)
        os.environ["MLFLOW_TRACKING_URI"] = session_store
        mlflow.set_tracking_uri(session_store)
    assert "promote" not in str(info.value) and "filesystem tracking backend" in str(info.value)
    assert str(tmp_path / "mlruns") in str(info.value)


def test_a_missing_alias_still_says_promote():
    MlflowClient().create_registered_model("h6-no-alias")
    with pytest.raises(TrackingError, match="no model registered as models:/h6-no-alias@champion.*promote RUN_ID"):
        load_classifier("models:/h6-no-alias@champion", tracking_uri=os.environ["MLFLOW_TRACKING_URI"])


# ---- 10. serving inputs: base64 spellings, size limits, decompression bombs

def _png_bytes() -> bytes:
    rng = np.random.default_rng(3)
    ok, png = cv2.imencode(".png", rng.integers(0, 256, (40, 40), dtype=np.uint8))
    return png.tobytes()


def test_base64_spellings_clients_send_are_accepted(classifier):
    data = _png_bytes()
    plain = base64.b64encode(data).decode()
    urlsafe = base64.urlsafe_b64encode(data).decode()
    assert "-" in urlsafe or "_" in urlsafe  # the test image really uses the URL-safe letters
    spellings = {
        "plain": plain,
        "wrapped at 76": base64.encodebytes(data).decode(),
        "CRLF wrapped": "\r\n".join(plain[i:i + 76] for i in range(0, len(plain), 76)),
        "data URL": "data:image/png;base64," + plain,
        "data URL, wrapped": "data:image/png;base64,\n" + base64.encodebytes(data).decode(),
        "URL-safe": urlsafe,
        "URL-safe unpadded": urlsafe.rstrip("="),
    }
    assert spellings["URL-safe unpadded"] != urlsafe  # the padding really was dropped
    for name, text in spellings.items():
        assert decode_base64_image(text, name) == data, name
    frame = pd.DataFrame({"image": list(spellings.values())})
    result = predictions_frame(classifier, frame, crops=True)
    assert list(result["message"]) == [""] * len(spellings)
    assert np.allclose(result["p_happy"], result["p_happy"][0])  # the same image every time
    for text, problem in [("data:image/png,abc", "without ';base64'"), ("abcde", "not base64"),
                          ("ab!d", "not base64")]:
        with pytest.raises(ImageError, match=problem):
            decode_base64_image(text, "row 0")


def test_size_limits_refuse_before_decoding(classifier, monkeypatch):
    plain = base64.b64encode(_png_bytes()).decode()
    monkeypatch.setenv("FER_ABLATE_MAX_IMAGE_BYTES", "1000")
    with pytest.raises(ImageError, match=r"row 0: image of about 1.\d kB is over the 1.0 kB limit "
                                         r"\(FER_ABLATE_MAX_IMAGE_BYTES\)"):
        predictions_frame(classifier, pd.DataFrame({"image": [plain]}))
    monkeypatch.delenv("FER_ABLATE_MAX_IMAGE_BYTES")
    monkeypatch.setenv("FER_ABLATE_MAX_REQUEST_BYTES", str(2 * len(plain)))
    with pytest.raises(ImageError, match=r"request: 4 rows .* \(FER_ABLATE_MAX_REQUEST_BYTES\)"):
        predictions_frame(classifier, pd.DataFrame({"image": [plain] * 4}))
    assert len(predictions_frame(classifier, pd.DataFrame({"image": [plain] * 2}), crops=True)) == 2


def _png_declaring(width: int, height: int) -> bytes:
    """A valid 1-bit grey PNG of ``width`` x ``height`` black pixels: tens of kB that declare a huge image."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row * 1000) for _ in range(height // 1000))
    body += packer.compress(row * (height % 1000)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("width", "height"), [(20_000, 10_000), (30_000, 20_000)])
def test_decompression_bombs_are_refused_by_cli_and_endpoint(width, height, classifier, tmp_path):
    """200 M pixels (over Pillow's 179 M warning) and 600 M (over its 358 M error): refused from the header."""
    bomb = _png_declaring(width, height)
    assert len(bomb) < 500_000
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    with pytest.raises(ImageError, match="over the 40,000,000 pixel limit"):
        read_image(path)
    [record] = predict_paths(classifier, [str(path)], out_dir=tmp_path / "out")
    assert record["message"].startswith(f"error: {path}: ") and "over the 40,000,000 pixel limit" in record["message"]
    with pytest.raises(ImageError, match="row 0: .*over the 40,000,000 pixel limit"):
        predictions_frame(classifier, pd.DataFrame({"image": [base64.b64encode(bomb).decode()]}))
    with pytest.raises(ImageError, match="over the 40,000,000 pixel limit"):
        decode_image(bomb, "bomb")


# ---- 12. names that go into MLflow filter strings and file paths

ACCEPTED = ["it's", "run #3", "café 日本", "a-b_c.d", "x = 'y' or tags.z = 'w"]


@pytest.mark.parametrize("name", ACCEPTED)
def test_accepted_names_round_trip_through_mlflow_search_and_paths(name, tmp_path):
    assert safe_name(name, "study") == name
    client = MlflowClient()
    experiment = client.create_experiment(f"h6-names-{ACCEPTED.index(name)}")
    client.create_run(experiment, tags={"fer_ablate_name": name})
    client.create_run(experiment, tags={"fer_ablate_name": name + "x"})
    found = client.search_runs([experiment], f"tags.fer_ablate_name = {quote_filter_value(name)}")
    assert [r.data.tags["fer_ablate_name"] for r in found] == [name]
    folder = path_under(tmp_path / "reports", name)
    folder.mkdir(parents=True)
    assert folder.parent == (tmp_path / "reports").resolve()


@pytest.mark.parametrize(("name", "problem"), [
    ("../escape", r"holds /"), ("..", r"starts with '\.'"), ("a/b", "holds /"), ('say "hi"', 'holds "'),
    ("what?", r"holds \?"), ("", "non-empty"), (" padded", "starts or ends with a space"), ("NUL", "device name"),
    ("tab\there", "control characters"), ("x" * 121, "121 characters"),
])
def test_names_that_cannot_be_paths_or_filters_are_refused(name, problem):
    with pytest.raises(ConfigError, match=f"^study name .*{problem}"):
        safe_name(name, "study")


def test_names_are_unicode_normalised_and_paths_cannot_escape(tmp_path):
    decomposed = "cafe\u0301"
    assert safe_name(decomposed, "variant") == "caf\u00e9"
    assert quote_filter_value("it's") == '"it\'s"' and quote_filter_value("plain") == "'plain'"
    with pytest.raises(ValueError, match="both"):
        quote_filter_value("a'b\"c")
    with pytest.raises(ConfigError, match="outside"):
        path_under(tmp_path / "reports", "../../etc")


# ---- issue 21: videos timed by their container, models giving logits, custom layers Keras cannot locate

def _vint(data: bytes, i: int, keep_marker: bool) -> tuple[int, int]:
    """An EBML variable-length integer at ``i``: (value, index after it)."""
    n = 1
    while n <= 8 and not data[i] & (0x80 >> (n - 1)):
        n += 1
    value = int.from_bytes(data[i:i + n], "big")
    return (value if keep_marker else value & ((1 << (7 * n)) - 1)), i + n


def _patch_webm(data: bytearray, start: int = 0, end: int | None = None, block_ms: int | None = None,
                default_ms: int | None = None) -> bytearray:
    """Edit a WebM (Matroska) in place, walking its EBML tree: every frame's timecode set to ``block_ms``
    (a container without usable timestamps) and/or the track's DefaultDuration, which FFmpeg reports as
    the fps, set to ``default_ms`` (1 ms: the 1000 fps a browser's MediaRecorder file claims)."""
    end = len(data) if end is None else end
    i = start
    while i < end:
        element, j = _vint(data, i, True)
        size, k = _vint(data, j, False)
        stop = min(k + size, end)
        if element in (0x18538067, 0x1F43B675, 0x1654AE6B, 0xAE):  # Segment, Cluster, Tracks, TrackEntry
            _patch_webm(data, k, stop, block_ms, default_ms)
        elif element == 0xA3 and block_ms is not None:  # SimpleBlock: track number, then an int16 timecode
            _, t = _vint(data, k, False)
            data[t:t + 2] = block_ms.to_bytes(2, "big", signed=True)
        elif element == 0x23E383 and default_ms is not None:  # DefaultDuration, in ns
            data[k:stop] = (default_ms * 1_000_000).to_bytes(stop - k, "big")
        i = stop
    return data


def _webm(path: Path, block_ms: int | None = None, default_ms: int | None = None) -> Path:
    """A real 3-second WebM (VP8, 90 frames at 30 fps, written by OpenCV), then patched as asked."""
    raw = path.with_suffix(".raw.webm")
    writer = cv2.VideoWriter(str(raw), cv2.VideoWriter_fourcc(*"VP80"), 30, (64, 64))
    for i in range(90):
        writer.write(np.full((64, 64, 3), i, np.uint8))
    writer.release()
    path.write_bytes(_patch_webm(bytearray(raw.read_bytes()), block_ms=block_ms, default_ms=default_ms))
    return path


@pytest.mark.parametrize(("block_ms", "default_ms", "fps", "times", "warned"), [
    (None, 1, 1000, [0.0, 1.0, 2.0], ["1000 fps, outside the sane range (0, 240]"]),  # browser-recorded
    (0, None, 30, [0.0, 1.0, 2.0], ["frame 1 has no usable timestamp: later frames are timed at 30 fps"]),
    (0, 1, 1000, [0.0, 1.2, 2.4], ["1000 fps, outside", "timed at 25 fps"]),  # neither: 25 fps assumed, said
])
def test_video_times_come_from_the_containers_timestamps(block_ms, default_ms, fps, times, warned, classifier,
                                                         tmp_path, caplog):
    path = _webm(tmp_path / "clip.webm", block_ms, default_ms)
    capture = cv2.VideoCapture(str(path))
    assert capture.get(cv2.CAP_PROP_FPS) == fps  # the header really says what the case is about
    capture.release()
    records = predict_paths(classifier, [str(path)], every=30)
    assert [r["frame"] for r in records] == [0, 30, 60]
    assert [r["time_s"] for r in records] == pytest.approx(times, abs=0.002)
    messages = " ".join(r.getMessage() for r in caplog.records if r.levelno == 30)
    assert all(w in messages for w in warned), messages


def _logits_model(path: Path, scale: float = 400.0) -> Path:
    """A contract-shaped model whose last layer is linear (logits), with weights big enough that its raw
    outputs are far from probabilities (rows summing to hundreds, negative values)."""
    inputs = keras.Input((48, 48, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(7, kernel_initializer=keras.initializers.RandomNormal(
        stddev=scale / 255, seed=1), bias_initializer="zeros")(x))
    model.save(path)
    return path


def test_a_model_giving_logits_gets_a_softmax_said_in_one_warning(tmp_path, caplog):
    path = _logits_model(tmp_path / "logits.keras")
    raw = keras.saving.load_model(path)(np.full((1, 48, 48, 1), 200.0, np.float32)).numpy()
    assert raw.min() < 0 and abs(raw.sum() - 1) > 1  # the file's own outputs are no probabilities
    classifier = load_classifier(str(path))
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == 30]
    assert warning.startswith(f"{path}: the model gives logits, not probabilities (rows of a probe batch sum to ")
    assert warning.endswith("a softmax is applied to its outputs") and "\n" not in warning
    probs = classifier.classify_crops(np.random.default_rng(0).integers(0, 256, (5, 48, 48), dtype=np.uint8))
    assert (probs >= 0).all() and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    out = predictions_frame(classifier, pd.DataFrame({"pixels": [" ".join(["128"] * 2304)]}))
    assert 0 < out["score"][0] <= 1 and out[[c for c in out if c.startswith("p_")]].sum(axis=1)[0] == \
        pytest.approx(1, abs=1e-5)
    # A sigmoid head (outputs in 0..1, rows not summing to 1) has no distribution to rescue: refused.
    inputs = keras.Input((48, 48, 1))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    sigmoid = keras.Model(inputs, keras.layers.Dense(7, activation="sigmoid", kernel_initializer="ones")(x))
    with pytest.raises(ModelError, match=r"^sig: the model's outputs are not probabilities \(rows of a probe "
                                         r"batch sum to .*: a sigmoid head\?\); fer-ablate needs grey"):
        check_model(sigmoid, "sig")


def test_a_custom_layer_keras_cannot_locate_is_named_with_the_model_file(tmp_path, capsys):
    @keras.saving.register_keras_serializable(package="h21")
    class Brighten(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    inputs = keras.Input((48, 48, 1))
    x = keras.layers.GlobalAveragePooling2D()(Brighten()(inputs))
    path = tmp_path / "custom.keras"
    keras.Model(inputs, keras.layers.Dense(7, activation="softmax")(x)).save(path)
    del keras.saving.get_custom_objects()["h21>Brighten"]  # a user loading it without the defining module
    expected = (f"{path}: Keras could not load this keras file: the custom class 'Brighten' (registered as "
                "'h21>Brighten') is unknown here: import the module that defines it")
    with pytest.raises(ModelError) as info:
        load_classifier(str(path))
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)
    assert main(["predict", str(tmp_path), "--model", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and err.count("\n") == 0
