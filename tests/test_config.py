import pytest

from fer_ablate.config.settings import (
    ConfigError,
    apply_overrides,
    config_hash,
    load_defaults,
    load_variants,
    parse_set_args,
    resolve_config,
)

REQUIRED_VARIANTS = {"paper", "paper_initial", "layers10", "layers12", "kernel3", "kernel5", "dropout0",
                     "dropout25", "dropout50", "aug", "noaug", "plateau"}


def test_required_variants_exist():
    assert set(load_variants()) >= REQUIRED_VARIANTS


def test_override_order_defaults_variant_cli():
    cfg = resolve_config("paper_initial", {"train.epochs": 3})
    assert cfg["model"]["kernel_size"] == 5  # from the variant
    assert cfg["train"]["batch_size"] == 32  # from the variant
    assert cfg["train"]["epochs"] == 3  # the command line wins
    assert cfg["augment"]["enabled"] is False
    assert cfg["variant"] == "paper_initial"


def test_unknown_key_names_the_key():
    with pytest.raises(ConfigError, match="unknown key 'model.kernel'.*model.kernel_size"):
        resolve_config("paper", {"model.kernel": 5})


@pytest.mark.parametrize("key,value", [("train.epochs", "ten"), ("train.epochs", 2.5),
                                       ("augment.enabled", 1), ("model.dense_units", "512")])
def test_wrong_type_names_the_key(key, value):
    with pytest.raises(ConfigError, match=f"key '{key}' expects"):
        resolve_config("paper", {key: value})


def test_int_accepted_for_float():
    assert apply_overrides(load_defaults(), {"train.learning_rate": 1})["train"]["learning_rate"] == 1.0


def test_unknown_variant_lists_known():
    with pytest.raises(ConfigError, match="unknown variant 'kernel7'.*kernel5"):
        resolve_config("kernel7")


def test_parse_set_args_yaml_values_and_mlproject_string():
    parsed = parse_set_args(["model.kernel_size=5", "train.epochs=2 model.dense_units=[8,8,8] augment.enabled=false"])
    assert parsed == {"model.kernel_size": 5, "train.epochs": 2, "model.dense_units": [8, 8, 8],
                      "augment.enabled": False}
    assert parse_set_args([""]) == {}
    with pytest.raises(ConfigError, match="not key=value"):
        parse_set_args(["epochs"])


def test_range_validation():
    with pytest.raises(ConfigError, match="conv_dropout"):
        resolve_config("paper", {"model.conv_dropout": 1.5})
    with pytest.raises(ConfigError, match="same length"):
        resolve_config("paper", {"model.dense_units": [8, 8]})


def test_config_hash_is_stable_and_sensitive():
    a, b = resolve_config("kernel3"), resolve_config("paper")
    assert config_hash(a) == config_hash(b)  # kernel3 is the paper model under another name
    assert config_hash(resolve_config("kernel5")) != config_hash(b)
    assert config_hash(resolve_config("paper", {"train.verbose": 0})) == config_hash(b)


def test_variants_file_errors_name_file_and_key(tmp_path):
    bad_yaml = tmp_path / "v.yaml"
    bad_yaml.write_text("paper: {overrides: [unclosed\n")
    with pytest.raises(ConfigError, match="v.yaml: invalid YAML"):
        load_variants(bad_yaml)
    bad_key = tmp_path / "w.yaml"
    bad_key.write_text("mine:\n  overrides:\n    model.kernal_size: 3\n")
    with pytest.raises(ConfigError, match="w.yaml: variant 'mine': unknown key 'model.kernal_size'"):
        load_variants(bad_key)
    bad_shape = tmp_path / "x.yaml"
    bad_shape.write_text("mine:\n  override: {}\n")
    with pytest.raises(ConfigError, match="x.yaml: variant 'mine' must be a mapping"):
        load_variants(bad_shape)
