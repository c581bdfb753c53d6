"""A stored Optuna study reloaded after its search-space file changed: refused in one line, or resumed."""

from __future__ import annotations

import logging

import optuna
import pytest
from conftest import PROJECT, shrink
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from fer_ablate.config.search_space import load_space
from fer_ablate.tuning.space_match import (
    DIGEST_ATTR,
    SPACE_ATTR,
    StudyMismatch,
    check_study_matches,
    space_distributions,
)

# A list-valued categorical parameter: Optuna stores its choice by index.
LISTS = ("model.kernel_size: {type: categorical, choices: [3, 5]}",
         "model.dense_units: {type: categorical, choices: [[16, 8, 8], [8, 8, 8]]}")
# The smoke space with a conditional parameter (BatchNorm on or off, its momentum only when on).
SMOKE = shrink((PROJECT / "search_spaces" / "smoke.yaml").read_text()).replace(
    "  model.bn_momentum: {type: float, low: 0.8, high: 0.95}",
    "  model.batch_norm: {type: categorical, choices: [true, false]}\n"
    "  model.bn_momentum: {type: float, low: 0.8, high: 0.99, condition: {model.batch_norm: true}}")


def _write(tmp_path, *edits: tuple[str, str]) -> str:
    """smoke.yaml (named 'sm') with each (old, new) replacement applied; the same path every call."""
    text = SMOKE.replace("name: smoke", "name: sm")
    for old, new in edits:
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "sm.yaml"
    path.write_text(text)
    return str(path)


def _storage(kind: str, tmp_path):
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'o.db'}"
    return JournalStorage(JournalFileBackend(str(tmp_path / "journal.log")))


def _open(storage, space, check: bool = True) -> optuna.Study:
    """As run_study does: create or load, then compare with the file."""
    study = optuna.create_study(study_name="sm", storage=storage, direction=space.direction, load_if_exists=True)
    if check:
        check_study_matches(study, space, "the test storage")
    return study


def _add_trial(study: optuna.Study, space, value: float = 0.5) -> None:
    trial = study.ask(space_distributions(space))
    study.tell(trial, value)


def _refusal(storage, path) -> str:
    with pytest.raises(StudyMismatch) as info:
        _open(storage, load_space(path))
    message = str(info.value)
    assert "\n" not in message and "--study-name NEW" in message and f"restoring {path} as it was" in message
    return message


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_changed_choices_refused_and_unchanged_file_resumes(tmp_path, kind):
    storage = _storage(kind, tmp_path)
    space = load_space(_write(tmp_path))
    _add_trial(_open(storage, space), space)
    # Same file: resumes, and Optuna accepts the next trial.
    _add_trial(_open(storage, load_space(_write(tmp_path))), space, 0.6)

    changed = _write(tmp_path, ("choices: [3, 5]", "choices: [3, 5, 7]"))
    message = _refusal(storage, changed)
    assert message.startswith("study 'sm' in the test storage: parameter 'model.kernel_size' choices were [3, 5], "
                              "the file now says [3, 5, 7]")
    # What the refusal spares the user: Optuna itself fails every such trial.
    study = _open(storage, load_space(changed), check=False)
    with pytest.raises(ValueError, match="dynamic value space"):
        study.ask(space_distributions(load_space(changed)))
    assert len(study.get_trials()) == 3  # the two told trials and the one Optuna refused to sample


def test_changed_direction_and_metric_refused(tmp_path):
    storage = _storage("sqlite", tmp_path)
    space = load_space(_write(tmp_path))
    _add_trial(_open(storage, space), space)

    message = _refusal(storage, _write(tmp_path, ("direction: maximize", "direction: minimize")))
    assert "direction was maximize, now minimize" in message

    message = _refusal(storage, _write(tmp_path, ("metric: val_accuracy", "metric: train_accuracy")))
    assert "metric was 'val_accuracy', now 'train_accuracy'" in message

    message = _refusal(storage, _write(tmp_path, ("epochs: 2", "epochs: 3"), ("model.base_filters: 4",
                                                                             "model.base_filters: 8")))
    assert "epochs was 2, now 3" in message and "fixed model.base_filters was 4, now 8" in message


def test_changed_list_choices_refused_though_their_indexes_match(tmp_path):
    storage = _storage("sqlite", tmp_path)
    space = load_space(_write(tmp_path, LISTS))
    _add_trial(_open(storage, space), space)
    message = _refusal(storage, _write(tmp_path, (LISTS[0], LISTS[1].replace("[8, 8, 8]", "[32, 8, 8]"))))
    assert "parameter 'model.dense_units' choices were [[16, 8, 8], [8, 8, 8]], the file now says " \
           "[[16, 8, 8], [32, 8, 8]]" in message


def test_a_project_file_is_named_with_how_to_get_it_back_from_git():
    study = optuna.create_study(study_name="smoke", direction="minimize")  # in memory
    with pytest.raises(StudyMismatch, match=r"direction was minimize, now maximize; .*restoring "
                                            r"search_spaces/smoke.yaml as it was \(git log -p -- search_spaces/smoke"
                                            r".yaml; git show COMMIT:search_spaces/smoke.yaml\)$"):
        check_study_matches(study, load_space("smoke"), "memory")


def test_widened_range_is_accepted_with_a_warning_and_recorded(tmp_path, caplog):
    storage = _storage("journal", tmp_path)
    space = load_space(_write(tmp_path))
    _add_trial(_open(storage, space), space)
    wider = load_space(_write(tmp_path, ("high: 0.01", "high: 0.1")))
    with caplog.at_level(logging.WARNING, logger="fer_ablate.tuning.space_match"):
        study = _open(storage, wider)
    assert "parameter 'train.learning_rate' high was 0.01, now 0.1" in caplog.text
    assert study.user_attrs[SPACE_ATTR]["params"]["train.learning_rate"]["high"] == 0.1
    _add_trial(study, wider)


def test_study_made_before_the_attrs_is_checked_from_its_trials(tmp_path):
    storage = _storage("journal", tmp_path)
    space = load_space(_write(tmp_path))
    _add_trial(_open(storage, space, check=False), space)  # as older versions left it: no user attrs

    message = _refusal(storage, _write(tmp_path, ("choices: [true, false]", "choices: [true]"),
                                       ("direction: maximize", "direction: minimize")))
    assert "direction was maximize, now minimize" in message
    assert "parameter 'model.batch_norm' choices were [True, False], the file now says [True]" in message
    message = _refusal(storage, _write(tmp_path, ("{type: categorical, choices: [3, 5]}",
                                                  "{type: int, low: 3, high: 5}")))
    assert message.endswith("sm.yaml as it was") and "direction" not in message
    assert "parameter 'model.kernel_size' was categorical in the stored trials, the file now says int" in message

    # The unchanged file resumes it, and from then on the study keeps the file.
    study = _open(storage, load_space(_write(tmp_path)))
    assert study.user_attrs[DIGEST_ATTR] and study.user_attrs["metric"] == "val_accuracy"


def test_space_distributions_are_what_suggest_records(tmp_path):
    from fer_ablate.tuning.study import suggest

    space = load_space(_write(tmp_path, LISTS))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    expected = space_distributions(space)
    for _ in range(6):  # both branches of the batch_norm condition
        trial = study.ask()
        suggest(trial, space)
        assert all(dist == expected[key] for key, dist in trial.distributions.items())
        study.tell(trial, 0.0)


def test_cli_refuses_a_changed_file_before_any_trial(tmp_path, capsys):
    from fer_ablate.cli import main

    storage = f"sqlite:///{tmp_path / 'o.db'}"
    space = load_space(_write(tmp_path))
    _add_trial(_open(storage, space), space)
    path = _write(tmp_path, ("choices: [3, 5]", "choices: [3, 5, 7]"), ("direction: maximize", "direction: minimize"))
    code = main(["tune", "--space", path, "--storage", storage, "--n-trials", "1", "--study-name", "sm",
                 "--set", "train.epochs=1", "--set", "data.synthetic_samples=100"])
    err = capsys.readouterr().err
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert line == (f"fer-ablate: error: study 'sm' in {storage}: direction was maximize, now minimize; parameter "
                    "'model.kernel_size' choices were [3, 5], the file now says [3, 5, 7]; start a new study with "
                    f"--study-name NEW, or keep this one by restoring {path} as it was")
    assert len(optuna.load_study(study_name="sm", storage=storage).get_trials()) == 1
    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    assert not client.search_runs(ids, "tags.fer_ablate_name = 'sm'"), "no MLflow run may be recorded"
