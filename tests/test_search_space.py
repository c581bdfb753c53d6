"""Search-space files: every file loads; conditions; validation errors name the file and key."""

import optuna
import pytest
from conftest import PROJECT

from fer_ablate.config.search_space import load_space
from fer_ablate.config.settings import ConfigError, resolve_config
from fer_ablate.tuning.study import make_pruner, make_sampler, suggest

SPACE_FILES = sorted((PROJECT / "search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", SPACE_FILES, ids=lambda p: p.stem)
def test_every_space_loads_and_builds_a_config(path):
    space = load_space(str(path))
    make_sampler(space.sampler, space)
    make_pruner(space.pruner)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    overrides = suggest(trial, space)
    cfg = resolve_config(space.base, {**overrides, "train.epochs": space.epochs})
    assert cfg["train"]["epochs"] == space.epochs


def test_required_spaces_and_paper_cnn_parameters():
    space = load_space("paper_cnn")
    keys = {p.key for p in space.params}
    assert {"train.learning_rate", "train.batch_size", "model.conv_dropout", "model.l2_first_conv",
            "model.kernel_size", "model.conv_blocks", "augment.rotation"} <= keys
    assert load_space("smoke").epochs <= 4


def test_conditional_parameters_exist_only_when_their_condition_holds():
    space = load_space("paper_cnn")
    base = {"train.learning_rate": 1e-3, "train.batch_size": 64, "model.conv_dropout": 0.5, "model.dense_dropout": 0,
            "model.l2_first_conv": 0.01, "model.kernel_size": 3, "model.conv_blocks": 4}
    off = suggest(optuna.trial.FixedTrial({**base, "augment.enabled": False}), space)
    assert off["augment.enabled"] is False and "augment.rotation" not in off
    on = suggest(optuna.trial.FixedTrial({**base, "augment.enabled": True, "augment.rotation": 0.05,
                                          "augment.zoom": 0.1, "augment.shift": 0.1}), space)
    assert on["augment.rotation"] == 0.05
    assert on["model.dense_dropout"] == [0.4, 0.4, 0.5]  # list choices go by index


def _write(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text,message", [
    ("params: {train.lr: {type: float, low: 0.1, high: 1}}\n", "params.train.lr: unknown setting"),
    ("params: {train.learning_rate: {type: float, low: 1, high: 0.1}}\n", "low < high"),
    ("params: {train.learning_rate: {type: float, low: 0, high: 1, log: true}}\n", "log scale needs low > 0"),
    ("params: {train.epochs: {type: categorical, choices: [1, two]}}\n", "key 'train.epochs' expects int"),
    ("params: {train.epochs: {type: bool}}\n", "type must be float, int or categorical"),
    ("sampler: {type: annealing}\nparams: {train.epochs: {type: int, low: 1, high: 3}}\n", "sampler.type"),
    ("pruner: {type: patient}\nparams: {train.epochs: {type: int, low: 1, high: 3}}\n", "pruner.type"),
    ("params: {augment.zoom: {type: float, low: 0, high: 1, condition: {augment.flip: true}}}\n", "condition"),
    ("bogus: 1\nparams: {train.epochs: {type: int, low: 1, high: 3}}\n", "unknown key(s) ['bogus']"),
    ("prune_on: val_f1\nparams: {train.epochs: {type: int, low: 1, high: 3}}\n", "prune_on must be one of"),
    ("pruner: {type: wilcoxon}\nparams: {train.epochs: {type: int, low: 1, high: 3}}\n", "add folds"),
    ("folds: {k: 1}\nparams: {train.epochs: {type: int, low: 1, high: 3}}\n", "folds.k must be"),
    ("folds: {k: 3}\npruner: {type: median}\nparams: {train.epochs: {type: int, low: 1, high: 3}}\n",
     "use pruner wilcoxon or none"),
])
def test_validation_errors_name_file_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_space(_write(tmp_path, text))
    assert "space.yaml" in str(err.value) and message in str(err.value)


def test_pruning_signal_is_reported_in_the_study_direction():
    """A loss reported to a maximising study is negated, so the pruner keeps the trials with low loss."""
    from fer_ablate.tuning.study import TrialReporter

    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    reporter = TrialReporter(trial, "val_accuracy", "val_loss", maximize=True)
    reporter.on_epoch_end(0, {"val_accuracy": 0.4, "val_loss": 1.5, "accuracy": 0.3})
    assert reporter.values == [0.4]
    assert study.trials[0].intermediate_values == {1: -1.5}
    plain = TrialReporter(study.ask(), "val_accuracy")
    plain.on_epoch_end(0, {"val_accuracy": 0.45, "val_loss": 1.2})
    assert study.trials[1].intermediate_values == {1: 0.45}
