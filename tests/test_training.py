"""One training run without MLflow: best-epoch restore, augmentation placement, the recipe's options."""

import pytest
from conftest import tiny_overrides

from fer_ablate.config.settings import ConfigError, resolve_config
from fer_ablate.data import load_dataset
from fer_ablate.training.loop import build_models, train


@pytest.fixture(scope="module")
def tiny_data():
    return load_dataset(resolve_config("paper", tiny_overrides())["data"])


@pytest.mark.parametrize("restore", [True, False])
def test_evaluates_best_or_last_epoch(tiny_data, restore):
    cfg = resolve_config("dropout0", tiny_overrides(**{"train.epochs": 3, "train.restore_best": restore,
                                                       "model.batch_norm": False, "augment.enabled": False}))
    result = train(cfg, tiny_data)
    curve = result.history["val_accuracy"]
    expected = max(curve) if restore else curve[-1]
    assert result.metrics["val_accuracy"] == pytest.approx(expected, abs=1e-6)
    assert result.best_epoch == curve.index(max(curve)) + 1
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


def test_plateau_class_weights_label_smoothing_early_stopping(tiny_data):
    cfg = resolve_config("plateau", tiny_overrides(**{
        "train.epochs": 4, "train.plateau_patience": 1, "train.plateau_factor": 0.1, "train.min_lr": 1e-6,
        "train.class_weights": True, "train.label_smoothing": 0.1, "train.early_stopping_patience": 3}))
    result = train(cfg, tiny_data)
    lrs = result.history["lr"]
    assert lrs[0] == pytest.approx(1e-3) and min(lrs) < 1e-3  # the plateau cut the learning rate
    assert result.epochs_run <= 4


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
