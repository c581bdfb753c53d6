import numpy as np
import pytest

from fer_ablate.config.settings import load_variants, resolve_config
from fer_ablate.models import build_from_config, create_model, list_models


def test_paper_model_layers_and_parameter_count():
    model = create_model("paper_cnn")
    assert model.count_params() == 5_905_863
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Conv2D") == 8
    assert kinds.count("Dense") == 4  # "12 layers" = 8 conv + 4 classification layers
    assert kinds.count("BatchNormalization") == 7  # after every conv but the first
    assert kinds.count("MaxPooling2D") == 4
    first = model.get_layer("conv1_1")
    assert first.padding == "valid" and first.kernel_regularizer is not None
    assert model.get_layer("dense1").units == 512 and model.get_layer("emotion").units == 7
    assert model.output_shape == (None, 7)


def test_ten_layers_has_six_convs():
    model = build_from_config(resolve_config("layers10")["model"])
    assert [type(x).__name__ for x in model.layers].count("Conv2D") == 6


def test_unknown_model_lists_known():
    with pytest.raises(KeyError, match="unknown model 'resnet'.*paper_cnn"):
        create_model("resnet")
    assert list_models("paper*") == ["paper_cnn"]


# Parameter counts of every variant: a change here is a change of model, made on purpose.
PARAMETER_COUNTS = {
    "paper": 5_905_863, "aug": 5_905_863, "noaug": 5_905_863, "plateau": 5_905_863, "layers12": 5_905_863,
    "kernel3": 5_905_863, "dropout0": 5_905_863, "dropout25": 5_905_863, "dropout50": 5_905_863,
    "layers10": 4_590_023, "kernel5": 14_229_959, "paper_initial": 14_229_959,
    "fast_cpu": 860_847,  # 1,439,719 until issue 14 narrowed it to base_filters 24
    "fast_cpu_small": 428_279,
    "smoke": 44_319,  # issue 20: the first run that learns in under a minute
}


@pytest.mark.parametrize("variant", sorted(load_variants()))
def test_every_variant_builds_and_predicts(variant):
    model = build_from_config(resolve_config(variant)["model"])
    assert model.count_params() == PARAMETER_COUNTS[variant]
    out = np.asarray(model(np.random.default_rng(0).random((2, 48, 48, 1), dtype=np.float32), training=False))
    assert out.shape == (2, 7)
    assert not np.isnan(out).any()
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-4)


def test_pool_before_bn_keeps_the_parameters_and_norms_the_pooled_map():
    standard = create_model("paper_cnn", base_filters=8)
    pooled_first = create_model("paper_cnn", base_filters=8, pool_before_bn=True)
    assert pooled_first.count_params() == standard.count_params()
    names = [layer.name for layer in pooled_first.layers]
    assert names.index("pool1") < names.index("bn1_2")  # the block's last conv is pooled, then normed
    assert pooled_first.get_layer("bn1_2").input.shape[1:3] == (23, 23)
    assert standard.get_layer("bn1_2").input.shape[1:3] == (46, 46)
