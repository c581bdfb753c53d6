"""The fer-ablate command line: listing, refusals with clear messages, evaluating a .keras file."""

import json

import numpy as np
import pytest
from conftest import tiny_overrides

from fer_ablate.cli import build_parser, main
from fer_ablate.config.settings import resolve_config
from fer_ablate.training.loop import build_models


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
