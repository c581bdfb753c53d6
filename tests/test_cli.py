"""The fer-ablate command line: listing, refusals with clear messages, evaluating a .keras file."""

import json

import numpy as np
import pytest
from conftest import tiny_overrides

from fer_ablate.cli import build_parser, main
from fer_ablate.config.errors import ConfigError
from fer_ablate.config.settings import resolve_config
from fer_ablate.data import DataError
from fer_ablate.errors import FerAblateError
from fer_ablate.runs.shared_queue import StorageError
from fer_ablate.tracking import TrackingError
from fer_ablate.training.loop import build_models
from fer_ablate.tuning.study import StudyFailing


def test_variants_lists_each_change(capsys):
    assert main(["variants"]) == 0
    out = capsys.readouterr().out
    assert "kernel5" in out and "model.kernel_size=5" in out
    assert "paper_initial" in out and "train.batch_size=32" in out


def test_help_of_every_command_prints(capsys):
    # argparse %-formats help strings: a bare "66%" in one made `fer-ablate --help` crash with a TypeError
    commands = [[]] + [[name] for name in build_parser()._subparsers._group_actions[0].choices]
    for command in commands:
        with pytest.raises(SystemExit) as exit_:
            main([*command, "--help"])
        assert exit_.value.code == 0, command
        assert "usage: fer-ablate" in capsys.readouterr().out
    assert main(["variants"]) == 0 and "fast_cpu_small" in capsys.readouterr().out


def test_unknown_key_and_variant_are_refused(capsys):
    assert main(["train", "--set", "model.kernal=3"]) == 2
    assert "unknown key 'model.kernal'" in capsys.readouterr().err
    assert main(["train", "--variant", "kernel7"]) == 2
    assert "unknown variant 'kernel7'" in capsys.readouterr().err
    assert main(["train", "--set", "train.epochs=many"]) == 2
    assert "key 'train.epochs' expects int" in capsys.readouterr().err


def test_bad_data_path_is_refused(capsys, tmp_path):
    assert main(["train", "--data", str(tmp_path / "missing.csv"), "--tracking-uri",
                 f"sqlite:///{tmp_path / 'm.db'}"]) != 0
    assert "missing.csv: data file or folder not found" in capsys.readouterr().err


def test_evaluate_keras_file_json(tmp_path, capsys):
    cfg = resolve_config("paper", tiny_overrides())
    model, _, _ = build_models(cfg)
    path = tmp_path / "model.keras"
    model.save(path)
    assert main(["evaluate", "--model", str(path), "--data", "synthetic", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    test = report["splits"]["test"]
    assert report["data_source"] == "synthetic"
    assert 0 <= test["accuracy"] <= 1 and np.array(test["confusion_matrix"]).sum() == test["n"]
    assert main(["evaluate", "--model", str(path), "--data", "synthetic"]) == 0
    text = capsys.readouterr().out
    assert "validation (n=" in text and "recall: angry" in text


# Every user-fixable error is a FerAblateError: main() prints one line and returns the kind's exit code.
ERROR_KINDS = [(ConfigError, 2, ValueError), (DataError, 2, ValueError), (TrackingError, 3, RuntimeError),
               (StorageError, 3, RuntimeError), (StudyFailing, 1, RuntimeError)]


@pytest.mark.parametrize("kind,code,builtin", ERROR_KINDS, ids=[k.__name__ for k, _, _ in ERROR_KINDS])
def test_each_error_kind_gives_its_exit_code_and_one_line(monkeypatch, capsys, kind, code, builtin):
    assert issubclass(kind, FerAblateError) and issubclass(kind, builtin)  # old `except ValueError` still catch
    assert kind.exit_code == code

    def fail(pattern):
        raise kind(f"{kind.__name__} for {pattern}")

    monkeypatch.setattr("fer_ablate.models.list_models", fail)  # cmd_models looks it up when it runs
    assert main(["models", "x*"]) == code
    assert capsys.readouterr().err == f"fer-ablate: error: {kind.__name__} for x*\n"


def test_real_tracking_and_storage_errors_exit_3(tmp_path, capsys):
    assert main(["report", "--experiment", "x", "--tracking-uri", f"sqlite:///{tmp_path / 'no' / 'm.db'}"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("fer-ablate: error: tracking store sqlite:///") and err.count("\n") == 1
    assert main(["tune", "--space", "smoke", "--storage", "not-a-url"]) == 3
    assert capsys.readouterr().err == ("fer-ablate: error: storage 'not-a-url' is neither a database URL nor "
                                       "journal:PATH\n")


@pytest.mark.parametrize("variable", ["FER_ABLATE_HEARTBEAT_SECONDS", "FER_ABLATE_HEARTBEAT_GRACE_SECONDS"])
def test_bad_heartbeat_variable_is_one_line_naming_it(monkeypatch, capsys, tmp_path, variable):
    # Read when a study's database storage is opened (not at import), before any run or database file.
    monkeypatch.setenv(variable, "ten")
    assert main(["tune", "--space", "smoke", "--storage", f"sqlite:///{tmp_path / 'optuna.db'}"]) == 3
    assert capsys.readouterr().err == (f"fer-ablate: error: {variable}='ten' is not a whole number of seconds "
                                       "above 0\n")
    assert not (tmp_path / "optuna.db").exists()


# Shared options are declared once (parent parsers); each command that had them must still take them.
MINIMAL = {"train": [], "ablate": ["--experiment", "e"], "kfold": [], "report": ["--experiment", "e"],
           "tune": ["--space", "s"], "tune-report": ["--study-name", "s"], "promote": ["run"], "predict": ["a.jpg"],
           "doctor": []}


@pytest.mark.parametrize("command", MINIMAL)
def test_shared_options_reach_every_command(command):
    args = build_parser().parse_args([command, *MINIMAL[command], "--tracking-uri", "sqlite:///x.db"])
    assert args.tracking_uri == "sqlite:///x.db"
    if command in ("train", "ablate", "kfold", "tune"):
        args = build_parser().parse_args([command, *MINIMAL[command], "--set", "a=1", "--set", "b=2"])
        assert args.set == ["a=1", "b=2"] and build_parser().parse_args([command, *MINIMAL[command]]).set == []
    if command in ("train", "kfold"):
        args = build_parser().parse_args([command, "--epochs", "0", "--seed", "-1", "--batch-size", "8.0"])
        assert (args.data, args.epochs, args.seed, args.batch_size) == (None, None, None, 8)
