"""The single-warp augmentation layer, the test-time flip wrapper, the time-based learning-rate schedule and the
training callbacks. Backend-agnostic: .ci/run runs this module again under ``KERAS_BACKEND=jax``, and one test
compares the numbers of both backends directly."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import tiny_overrides

from fer_ablate.config.settings import ConfigError, resolve_config
from fer_ablate.models.augmentation import RandomAffine
from fer_ablate.training.loop import BestWeights, EpochClock, TimeCosine, build_augmenter, build_models

pytestmark = pytest.mark.jax


@pytest.fixture(scope="module")
def faces():
    from fer_ablate.data.synthetic import make_synthetic_faces

    x, _ = make_synthetic_faces(32, seed=3)
    return x.astype(np.float32)[..., None]


def test_inference_is_identity_and_a_flip_only_warp_mirrors_or_keeps(faces):
    layer = RandomAffine(horizontal_flip=True, seed=0)
    assert np.array_equal(np.asarray(layer(faces, training=False)), faces)
    out = np.asarray(layer(faces, training=True))
    same = [np.allclose(o, f, atol=1e-3) for o, f in zip(out, faces, strict=True)]
    mirrored = [np.allclose(o, f[:, ::-1], atol=1e-3) for o, f in zip(out, faces, strict=True)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert 4 < sum(mirrored) < 28  # about half of 32, both kinds present


def test_warp_strength_follows_the_ranges_and_stays_within_the_pixel_range(faces):
    changes = []
    for strength in (0.02, 0.1, 0.2):
        out = np.asarray(RandomAffine(False, rotation=strength / 2, zoom=strength, shift=strength, seed=1)(
            faces, training=True))
        assert out.min() >= faces.min() - 1e-3 and out.max() <= faces.max() + 1e-3  # bilinear, edge fill
        changes.append(np.abs(out - faces).mean())
    assert changes[0] < changes[1] < changes[2]


def test_shift_moves_a_dot_by_at_most_the_range():
    dot = np.zeros((64, 48, 48, 1), np.float32)
    dot[:, 24, 24, 0] = 255.0
    out = np.asarray(RandomAffine(False, shift=0.1, seed=2)(dot, training=True))
    rows, cols = np.unravel_index(out[..., 0].reshape(64, -1).argmax(axis=1), (48, 48))
    assert np.abs(rows - 24).max() <= 5 and np.abs(cols - 24).max() <= 5  # 0.1 x 48 = 4.8 pixels
    assert len(set(zip(rows, cols, strict=True))) > 10  # and it does move


def test_same_seed_same_warps_and_config_choices(faces):
    a = np.asarray(RandomAffine(True, 0.03, 0.1, 0.1, seed=7)(faces, training=True))
    b = np.asarray(RandomAffine(True, 0.03, 0.1, 0.1, seed=7)(faces, training=True))
    assert np.array_equal(a, b)
    aug = resolve_config("paper")["augment"]
    assert [layer.name for layer in build_augmenter(aug, 0)] == ["aug_affine"]
    assert [layer.name for layer in build_augmenter({**aug, "method": "keras_layers"}, 0)] == [
        "aug_flip", "aug_rotation", "aug_zoom", "aug_shift"]
    with pytest.raises(ConfigError, match="augment.method"):
        resolve_config("paper", {"augment.method": "opencv"})
    with pytest.raises(ConfigError, match="augment.rotation, zoom and shift"):
        resolve_config("paper", {"augment.zoom": 1.5})


def test_test_time_flip_model_is_mirror_invariant_and_survives_saving(tmp_path, faces):
    cfg = resolve_config("paper", tiny_overrides(**{"model.test_time_flip": True}))
    inference, _, params = build_models(cfg)
    assert params == build_models(resolve_config("paper", tiny_overrides()))[2]  # no new weights
    probs = inference.predict(faces, verbose=0)
    assert np.allclose(probs, inference.predict(faces[:, :, ::-1], verbose=0), atol=1e-6)
    inference.save(tmp_path / "flip.keras")
    reloaded = keras.saving.load_model(tmp_path / "flip.keras")
    assert np.allclose(reloaded.predict(faces, verbose=0), probs, atol=1e-6)
    # A fresh process that only imports the loader (as evaluate, predict and serving do) knows the layer too.
    loader = "import sys; from fer_ablate.inference.keras_model import load_keras_model as load; "
    loaded = subprocess.run([sys.executable, "-c", loader + "print(load(sys.argv[1]).count_params())",
                             str(tmp_path / "flip.keras")],
                            capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.split()[-1] == str(params)


def test_time_cosine_warms_up_then_decays_to_one_percent_of_the_peak():
    schedule = TimeCosine(peak=1e-3, budget_seconds=600)
    rates = [schedule.rate_at(s) for s in (0, 15, 30, 300, 599.9, 900)]
    assert rates[0] == pytest.approx(1e-4) and rates[1] == pytest.approx(5.5e-4)
    assert rates[2] == pytest.approx(1e-3)  # the peak at 5% of the budget
    assert rates[2] > rates[3] > rates[4] and rates[4] == pytest.approx(1e-5, rel=1e-3) == rates[5]
    with pytest.raises(ConfigError, match="time_budget_minutes > 0"):
        resolve_config("paper", {"train.lr_schedule": "cosine_time"})


@pytest.mark.graph
def test_xla_request_with_the_warp_falls_back_instead_of_failing(faces):
    from fer_ablate.training.loop import compile_for_training

    cfg = resolve_config("paper", tiny_overrides(**{"train.jit_compile": "xla"}))
    _, training, _ = build_models(cfg)
    if keras.backend.backend() == "tensorflow":  # TensorFlow's warp has no XLA kernel
        with pytest.warns(UserWarning, match="jit_compile"):
            compile_for_training(training, cfg["train"], len(faces))
    else:  # JAX's warp compiles
        compile_for_training(training, cfg["train"], len(faces))
    targets = keras.utils.to_categorical(np.arange(len(faces)) % 7, 7)
    assert np.isfinite(training.train_on_batch(faces, targets)[0])


def test_callbacks_log_the_rate_and_clock_follow_the_schedule_and_restore_the_best_weights(faces):
    model = keras.Sequential([keras.Input((48, 48, 1)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                              keras.layers.Dense(7, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
    targets = keras.utils.to_categorical(np.arange(len(faces)) % 7, 7)
    best = BestWeights(model)
    seen = []

    class Snapshot(keras.callbacks.Callback):  # the weights at the end of every epoch, after BestWeights ran
        def on_epoch_end(self, epoch, logs=None):
            seen.append(([w.copy() for w in model.get_weights()], logs["val_accuracy"]))

    fit = model.fit(faces, targets, validation_data=(faces[::-1], targets[::-1]), epochs=4, batch_size=8,
                    verbose=0, callbacks=[TimeCosine(1e-2, 3600), EpochClock(4), best, Snapshot()])
    rates, clock = fit.history["learning_rate"], fit.history["wall_seconds"]
    assert all(1e-3 <= r <= 1e-2 for r in rates) and rates == sorted(rates)  # warming up over the first 3 min
    assert clock == sorted(clock) and clock[0] > 0
    weights, score = seen[best.best_epoch - 1]
    assert score == max(s for _, s in seen)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), weights, strict=True))


PARITY = """
import json, numpy as np, keras
from fer_ablate.data.synthetic import make_synthetic_faces
from fer_ablate.models.augmentation import RandomAffine
from fer_ablate.models.layers import MirrorAverage
x, _ = make_synthetic_faces(16, seed=3)
x = x.astype("float32")[..., None]
t, s = 0.2, 1.1  # rotation 0.2 rad, zoom 1.1, shift (3, -2) pixels
matrix = np.array([[s * np.cos(t), -s * np.sin(t), 3.0, s * np.sin(t), s * np.cos(t), -2.0, 0, 0]] * 16, "float32")
inner = keras.Sequential([keras.Input((48, 48, 1)), keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D(),
                          keras.layers.Dense(7, activation="softmax")])
rng = np.random.default_rng(0)
inner.set_weights([rng.normal(0, 0.1, w.shape).astype("float32") for w in inner.get_weights()])
print(json.dumps({"backend": keras.backend.backend(), "warped": np.asarray(RandomAffine.warp(x, matrix)).tolist(),
                  "flip": np.asarray(MirrorAverage(inner)(x / 255, training=False)).tolist()}))
"""


@pytest.mark.skipif(keras.backend.backend() == "jax", reason="spawns both backends itself; once is enough")
def test_warp_and_test_time_flip_give_the_same_numbers_on_tensorflow_and_jax():
    pytest.importorskip("jax")
    out = {}
    for backend in ("tensorflow", "jax"):
        proc = subprocess.run([sys.executable, "-c", PARITY], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "KERAS_BACKEND": backend})
        assert proc.returncode == 0, proc.stderr[-2000:]
        out[backend] = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out[backend]["backend"] == backend
    warped_tf, warped_jax = (np.array(out[b]["warped"]) for b in ("tensorflow", "jax"))
    assert np.abs(warped_tf - warped_jax).max() < 0.01  # grey levels 0-255: measured 3e-5
    assert np.allclose(out["tensorflow"]["flip"], out["jax"]["flip"], atol=1e-6)
