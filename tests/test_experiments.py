"""Experiment files: every file loads and expands; expansion semantics; validation errors."""

import pytest
from conftest import PROJECT

from fer_ablate.config.experiment_file import expand, load_experiment_file
from fer_ablate.config.settings import ConfigError

EXPERIMENT_FILES = sorted((PROJECT / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENT_FILES, ids=lambda p: p.stem)
def test_every_experiment_file_loads_and_expands(path):
    exp = load_experiment_file(str(path))
    runs = expand(exp)
    assert runs and len({(r.label, r.seed) for r in runs}) == len(runs)
    assert all(r.config["train"]["seed"] == r.seed for r in runs)
    assert header_has_command(path)


def header_has_command(path):
    return any(line.startswith("#") and "fer-ablate ablate" in line for line in path.read_text().splitlines()[:6])


def test_required_experiments_exist():
    assert {"paper_ablation", "paper_history", "smoke"} <= {p.stem for p in EXPERIMENT_FILES}


def test_paper_ablation_one_at_a_time():
    exp = load_experiment_file("paper_ablation")
    runs = expand(exp)
    labels = sorted({r.label for r in runs})
    assert labels == sorted(["paper", "layers10", "kernel5", "dropout25", "dropout0", "noaug"])
    assert len(runs) == 6 * 3
    by_label = {r.label: r.config for r in runs if r.seed == 1}
    assert by_label["kernel5"]["model"]["kernel_size"] == 5 and by_label["kernel5"]["model"]["conv_blocks"] == 4
    assert by_label["layers10"]["model"]["conv_blocks"] == 3 and by_label["layers10"]["model"]["kernel_size"] == 3
    assert by_label["noaug"]["augment"]["enabled"] is False and by_label["paper"]["augment"]["enabled"] is True
    assert exp.roles()["model.kernel_size"] == "scientific" and exp.roles()["train.learning_rate"] == "nuisance"


def _write(tmp_path, text, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_factorial_and_seed_count(tmp_path):
    exp = load_experiment_file(_write(tmp_path, "design: factorial\nseeds: 2\nfactors:\n  kernel: [kernel3, kernel5]\n"
                                 "  depth: [layers12, layers10]\n  aug: {aug_on: {augment.enabled: true}, "
                                 "aug_off: {augment.enabled: false}}\n"))
    runs = expand(exp)
    assert len(runs) == 2 * 2 * 2 * 2 and {r.seed for r in runs} == {1, 2}
    labels = {r.label for r in runs}
    assert "paper" in labels and "kernel5+layers10+aug_off" in labels
    combo = next(r for r in runs if r.label == "kernel5+layers10+aug_off")
    assert (combo.config["model"]["kernel_size"], combo.config["model"]["conv_blocks"],
            combo.config["augment"]["enabled"]) == (5, 3, False)


def test_sequence_and_command_line_overrides(tmp_path):
    exp = load_experiment_file("paper_history")
    runs = expand(exp, {"train.epochs": 2})
    assert [r.label for r in runs[::3]] == ["first_5x5_b32_30ep", "layers10_3x3_b64_50ep", "final_12l_3x3_aug_100ep"]
    assert all(r.config["train"]["epochs"] == 2 for r in runs)
    first = runs[0].config
    assert first["model"]["kernel_size"] == 5 and first["train"]["batch_size"] == 32


@pytest.mark.parametrize("text,message", [
    ("factors: {kernel: [kernel3, kernel5]}\nbogus: 1\n", "unknown key(s) ['bogus']"),
    ("factors: {kernel: [kernel3, kernel9]}\n", "factors.kernel: unknown variant(s) ['kernel9']"),
    ("design: zigzag\nfactors: {kernel: [kernel3, kernel5]}\n", "design 'zigzag' is not one of"),
    ("factors: {kernel: [kernel3, kernel5]}\nfixed: {train.epoch: 3}\n", "unknown key 'train.epoch'"),
    ("factors: {kernel: [kernel3, kernel5]}\nseeds: [1, two]\n", "seeds: expected"),
    ("factors: {kernel: [kernel3]}\n", "at least 2 levels"),
    ("design: sequence\n", "needs a 'steps' list"),
    ("factors: [unclosed\n", "invalid YAML"),
])
def test_validation_errors_name_file_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_experiment_file(_write(tmp_path, text))
    assert "exp.yaml" in str(err.value) and message in str(err.value)


def test_unknown_experiment_lists_known():
    with pytest.raises(ConfigError, match="unknown experiment file 'nope'.*paper_ablation"):
        load_experiment_file("nope")
