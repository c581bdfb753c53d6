"""Every MLproject parameter must reach its command (MLflow's own example forgets `seed`)."""

import re

import pytest
import yaml
from conftest import PROJECT

SPEC = yaml.safe_load((PROJECT / "MLproject").read_text())


def test_main_entry_point_has_required_parameters():
    assert {"variant", "data", "epochs", "batch_size", "seed"} <= set(SPEC["entry_points"]["main"]["parameters"])


def test_every_parameter_reaches_its_command():
    for name, entry in SPEC["entry_points"].items():
        used = set(re.findall(r"{(\w+)}", entry["command"]))
        declared = set(entry.get("parameters", {}))
        assert declared == used, f"entry point {name}: declared {declared} but command uses {used}"


def test_parameters_are_typed():
    for name, entry in SPEC["entry_points"].items():
        for param, spec in entry.get("parameters", {}).items():
            assert isinstance(spec, dict) and spec.get("type") in {"string", "float", "path", "uri"}, (name, param)


def test_project_name_is_the_source_shown_for_mlflow_run_runs():
    """`mlflow run` runs read `fer-ablate:<entry point>` in the UI's Source column (tracking.project_source_tags)."""
    from fer_ablate.tracking.store import PROJECT_NAME

    assert SPEC["name"] == PROJECT_NAME


def test_commands_call_the_cli():
    for entry in SPEC["entry_points"].values():
        assert entry["command"].startswith("python -m fer_ablate.cli ")


def test_commands_with_defaults_parse():
    """What `mlflow run -e NAME` would execute (defaults filled in, numbers as floats) is a valid command line."""
    import shlex

    from fer_ablate.cli import build_parser

    for name, entry in SPEC["entry_points"].items():
        values = {p: spec.get("default", "x") for p, spec in entry.get("parameters", {}).items()}
        values = {p: (float(v) if entry["parameters"][p]["type"] == "float" else v) for p, v in values.items()}
        argv = shlex.split(entry["command"].format(**{k: shlex.quote(str(v)) for k, v in values.items()}))[3:]
        args = build_parser().parse_args(argv)
        assert args.command == argv[0], name


@pytest.mark.parametrize("overrides, expected", [
    ("model.dense_units=[16, 8, 8] train.epochs=2", {"model.dense_units": [16, 8, 8], "train.epochs": 2}),
    ("model.dense_dropout=[0.1, 0.2, 0.3]", {"model.dense_dropout": [0.1, 0.2, 0.3]}),
    ("data.source='/data/my faces/fer2013.csv' augment.enabled=false",
     {"data.source": "/data/my faces/fer2013.csv", "augment.enabled": False}),
    ("train.optimizer=adamw   model.kernel_size=5", {"train.optimizer": "adamw", "model.kernel_size": 5}),
])
def test_overrides_with_spaces_reach_the_cli_intact(overrides, expected):
    """`-P overrides="model.dense_units=[16, 8, 8]"`: MLflow's own substitution (it shell-quotes the value),
    then the shell's split and our CLI parser give the same settings as `--set` would."""
    import shlex

    from mlflow.projects._project_spec import load_project

    from fer_ablate.cli import build_parser
    from fer_ablate.config.settings import parse_set_args, resolve_config

    project = load_project(str(PROJECT))
    for name, entry in SPEC["entry_points"].items():
        if "overrides" not in entry.get("parameters", {}):
            continue
        command = project.get_entry_point(name).compute_command({"overrides": overrides}, None)
        args = build_parser().parse_args(shlex.split(command)[3:])
        assert parse_set_args(args.set) == expected, name
    resolve_config("paper", expected)  # and they are valid settings


def test_a_storage_url_travels_as_the_name_of_an_environment_variable(monkeypatch, tmp_path):
    """MLflow records every `-P` value as a run param before the command starts: a URL with a password goes as
    `env:NAME` (what is recorded) and the CLI reads the URL from the environment; no default holds a secret."""
    import shlex

    from mlflow.projects._project_spec import load_project

    from fer_ablate.cli import build_parser
    from fer_ablate.redact import has_secret
    from fer_ablate.tuning.study import open_storage

    for name, entry in SPEC["entry_points"].items():
        for param, spec in entry.get("parameters", {}).items():
            assert not has_secret(str(spec.get("default", ""))), (name, param)
    command = load_project(str(PROJECT)).get_entry_point("tune").compute_command(
        {"storage": "env:FER_ABLATE_STORAGE"}, None)
    args = build_parser().parse_args(shlex.split(command)[3:])
    assert args.storage == "env:FER_ABLATE_STORAGE"
    monkeypatch.setenv("FER_ABLATE_STORAGE", f"sqlite:///{tmp_path / 'optuna.db'}")
    open_storage(args.storage)  # a real Optuna storage, created from the variable's URL
    assert (tmp_path / "optuna.db").is_file()
    assert "env:FER_ABLATE_STORAGE" in (PROJECT / "MLproject").read_text()
