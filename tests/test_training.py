"""One training run without MLflow: best-epoch restore, augmentation placement, the recipe's options."""

import keras
import numpy as np
import pytest
from conftest import tiny_overrides

from fer_ablate.config.settings import ConfigError, resolve_config
from fer_ablate.data import load_dataset
from fer_ablate.training.batches import EpochBatches
from fer_ablate.training.loop import build_models, train


@pytest.fixture(scope="module")
def tiny_data():
    return load_dataset(resolve_config("paper", tiny_overrides())["data"])


class SpoilLastEpoch(keras.callbacks.Callback):
    """Before the last epoch is validated, make the classifier answer ``label`` for every face, so the last
    epoch is certainly the worst: a curve whose best and last epochs differ (a flat or rising curve would let
    "best" and "last" agree and the restore check prove nothing)."""

    def __init__(self, epochs: int, label: int):
        super().__init__()
        self.epochs, self.label, self.epoch = epochs, label, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_test_begin(self, logs=None):
        if self.epoch == self.epochs - 1:
            layer = self.model.get_layer("paper_cnn").get_layer("emotion")
            kernel, bias = layer.get_weights()
            bias = np.full_like(bias, -10.0)
            bias[self.label] = 10.0
            layer.set_weights([np.zeros_like(kernel), bias])


@pytest.mark.parametrize("restore", [True, False])
def test_evaluates_best_or_last_epoch(tiny_data, restore):
    cfg = resolve_config("dropout0", tiny_overrides(**{"train.epochs": 3, "train.restore_best": restore,
                                                       "model.batch_norm": False, "augment.enabled": False}))
    y_val = tiny_data.splits["validation"][1]
    rarest = int(np.argmin(np.bincount(y_val, minlength=7)))
    result = train(cfg, tiny_data, callbacks=[SpoilLastEpoch(3, rarest)])
    curve = result.history["val_accuracy"]
    assert curve[-1] == pytest.approx(np.mean(y_val == rarest))  # the spoiled epoch answers one class
    assert max(curve[:-1]) > curve[-1], f"set-up: the last epoch must be the worst, got {curve}"
    expected = max(curve) if restore else curve[-1]
    assert result.metrics["val_accuracy"] == pytest.approx(expected, abs=1e-6)
    assert result.best_epoch == curve.index(max(curve)) + 1 < 3
    assert set(result.history) == {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "wall_seconds"}
    assert result.images_per_second > 0 and result.param_count > 0


@pytest.mark.parametrize("method, names", [("single_warp", {"aug_affine"}),
                                           ("keras_layers", {"aug_flip", "aug_rotation", "aug_zoom", "aug_shift"})])
def test_augmentation_only_in_the_training_graph(method, names):
    cfg = resolve_config("aug", tiny_overrides(**{"augment.method": method}))
    inference, training, _ = build_models(cfg)
    assert not [layer for layer in inference.layers if layer.name.startswith("aug_")]
    assert names <= {layer.name for layer in training.layers}
    assert inference.input_shape == (None, 48, 48, 1)


# A model that cannot move: Adam's steps are ~learning_rate, far below float32 resolution of weights ~0.05,
# so every epoch's validation loss and accuracy repeat exactly and "no improvement" is certain.
FROZEN = {"train.learning_rate": 1e-12, "model.batch_norm": False, "augment.enabled": False}


def test_plateau_cuts_the_rate_and_early_stopping_stops_a_stalled_run(tiny_data):
    cfg = resolve_config("plateau", tiny_overrides(**FROZEN, **{
        "train.epochs": 8, "train.plateau_patience": 1, "train.plateau_factor": 0.5, "train.min_lr": 0.0,
        "train.early_stopping_patience": 3}))
    result = train(cfg, tiny_data)
    assert len(set(result.history["val_accuracy"])) == 1  # stalled, as set up
    # val_accuracy never improves after epoch 1: patience 3 ends the run after epoch 4 of 8.
    assert result.epochs_run == 4 and len(result.history["val_accuracy"]) == 4
    # val_loss never improves: after each epoch from the 2nd on, the rate is halved (the log shows the rate
    # each epoch trained with).
    assert result.history["lr"] == pytest.approx([1e-12, 1e-12, 5e-13, 2.5e-13], rel=1e-5)


class SpreadAnswers(keras.callbacks.Callback):
    """Before training, set the classifier layer so its answers depend clearly on the face: a fresh tiny CNN
    gives every face ~1/7 per class, and then class weights and smoothing cancel out (inverse-frequency
    weights make the true-class term equal the uniform smoothing term) and could not be told apart."""

    def __init__(self, images: np.ndarray):
        super().__init__()
        self.images = images.astype(np.float32)[..., None]

    def on_train_begin(self, logs=None):
        cnn, rescale = self.model.get_layer("paper_cnn"), self.model.get_layer("rescale")
        layer = cnn.get_layer("emotion")
        features = keras.Model(cnn.input, layer.input).predict(rescale(self.images), verbose=0)
        mean, std = features.mean(axis=0), features.std(axis=0) + 1e-6
        mix = np.random.default_rng(0).normal(0, 0.3, (features.shape[1], 7))  # logits ~ N(0, 1.2) per face
        layer.set_weights([(mix / std[:, None]).astype(np.float32), (-(mean / std) @ mix).astype(np.float32)])


@pytest.mark.parametrize("class_weights, smoothing", [(True, 0.1), (False, 0.2)])
def test_class_weights_and_label_smoothing_shape_the_training_loss(tiny_data, class_weights, smoothing):
    """With the model frozen, epoch 1's training loss is a known function of the data: Keras' per-batch mean of
    weight x cross-entropy against smoothed targets, averaged over the epoch's (full) batches."""
    cfg = resolve_config("dropout0", tiny_overrides(**FROZEN, **{
        "model.l2_first_conv": 0.0, "model.dense_dropout": [0.0, 0.0, 0.0],  # the loss is cross-entropy alone
        "train.class_weights": class_weights, "train.label_smoothing": smoothing}))
    x, y = tiny_data.splits["train"]
    result = train(cfg, tiny_data, callbacks=[SpreadAnswers(x)])
    probs = np.asarray(result.model.predict(x.astype(np.float32)[..., None], verbose=0), dtype=np.float64)
    assert probs.std(axis=0).min() > 0.02  # set-up: the answers depend on the face

    # Epoch 1 trains on the full batches of its (seed, epoch) order: the images it saw.
    batches = EpochBatches(x, y, cfg["train"]["batch_size"], cfg["train"]["seed"], 7)
    seen = batches.order[:batches.images_per_epoch]

    def expected_loss(weighted: bool, eps: float) -> float:
        targets = np.eye(7)[y] * (1 - eps) + eps / 7
        cross_entropy = -(targets * np.log(np.clip(probs, 1e-7, 1))).sum(axis=1)
        counts = np.bincount(y, minlength=7)
        weights = len(y) / (7 * counts[y]) if weighted else np.ones(len(y))  # inverse class frequency
        return float((weights * cross_entropy)[seen].mean())

    loss = result.history["train_loss"][0]
    assert loss == pytest.approx(expected_loss(class_weights, smoothing), rel=1e-4)
    # Each option dropped (or wrongly applied) gives a clearly different loss, so the match above proves both.
    for other in ((not class_weights, smoothing), (class_weights, 0.0 if smoothing else 0.1)):
        assert expected_loss(*other) != pytest.approx(loss, rel=1e-3), other


def test_bfloat16_and_xla_settings_keep_the_model(tiny_data):
    """Speed settings change how the model computes, not what it is: same parameters, float32 output."""
    import keras
    import numpy as np

    plain = resolve_config("paper", tiny_overrides())
    fast = resolve_config("paper", tiny_overrides(**{"train.precision": "mixed_bfloat16", "train.jit_compile": "xla"}))
    _, _, params = build_models(plain)
    inference, training, fast_params = build_models(fast)
    assert fast_params == params
    assert keras.mixed_precision.dtype_policy().name == "float32"  # the global policy is left as it was
    assert any(layer.dtype_policy.name == "mixed_bfloat16" for layer in training.layers[-1].layers)
    result = train(fast, tiny_data)
    y, probs = result.predictions["validation"]
    assert probs.dtype == np.float32 and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    with pytest.raises(ConfigError, match="key 'train.precision' expects one of auto, float32, mixed_bfloat16"):
        resolve_config("paper", {"train.precision": "float16"})


def test_time_budget_stops_before_overrunning(tiny_data):
    cfg = resolve_config("paper", tiny_overrides(**{"train.epochs": 50, "train.time_budget_minutes": 0.001}))
    result = train(cfg, tiny_data)  # 0.06 s: the first epoch already takes longer, so training stops after it
    assert result.epochs_run == 1 and result.history["wall_seconds"][0] > 0


def test_cosine_schedule_warms_up_then_decays(tiny_data):
    cfg = resolve_config("paper", tiny_overrides(**{"train.epochs": 4, "train.lr_schedule": "cosine"}))
    lrs = train(cfg, tiny_data).history["lr"]
    assert 5e-4 < lrs[0] <= 1e-3  # just past the warm-up, near the peak
    assert lrs[0] > lrs[1] > lrs[2] > lrs[3] and lrs[3] < 2e-4  # decays to 1% by the last step
    with pytest.raises(Exception, match="choose one"):
        resolve_config("paper", {"train.lr_schedule": "cosine", "train.reduce_lr_on_plateau": True})
