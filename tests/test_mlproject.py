"""Every MLproject parameter must reach its command (MLflow's own example forgets `seed`)."""

import re

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
