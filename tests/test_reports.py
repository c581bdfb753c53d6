"""Reports read tracked runs only: built here from runs written straight into a real MLflow store.

No training: each test writes the parent and child runs a grid or a k-fold run would leave (tags, metrics,
``run_list.json``), then builds the report from them.
"""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from fer_ablate import tracking
from fer_ablate.reports.grid_report import write_report
from fer_ablate.reports.kfold_report import write_kfold_report


@pytest.fixture
def mlflow_experiment(monkeypatch, request):
    """A fresh MLflow experiment chosen the way every command chooses it: MLFLOW_EXPERIMENT_NAME."""
    name = f"reports-{request.node.name}"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", name)
    return tracking.configure()


def _run(client, experiment_id, name, tags, metrics=None, parent=None):
    nest = {"mlflow.parentRunId": parent} if parent else {}
    run_id = client.create_run(experiment_id, run_name=name, tags={**tags, **nest}).info.run_id
    for key, value in (metrics or {}).items():
        client.log_metric(run_id, key, value)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _grid(client, experiment_id, name, digests):
    """A finished grid: base ``paper`` and ``kernel5``, seeds 1 and 2; ``digests[(label, seed)]`` = data."""
    plan = {"name": name, "description": "", "design": "one_at_a_time", "base": "paper", "seeds": [1, 2],
            "runs": [{"label": label, "seed": seed, "key": f"{label}|{seed}", "levels": {"model": label}}
                     for label in ("paper", "kernel5") for seed in (1, 2)]}
    parent = _run(client, experiment_id, name, {"fer_ablate_kind": "ablation", "fer_ablate_name": name})
    client.log_text(parent, json.dumps(plan), "run_list.json")
    ids = {}
    for item in plan["runs"]:
        label, seed = item["label"], item["seed"]
        ids[label, seed] = _run(client, experiment_id, f"{label} · seed {seed}", {
            "fer_ablate_kind": "ablation-child", "fer_ablate_name": name, "run_label": label, "seed": str(seed),
            "child_key": item["key"], "data_digest": digests[label, seed]},
            {"val_accuracy": 0.5 + 0.01 * seed + (0.03 if label == "kernel5" else 0.0), "test_accuracy": 0.5},
            parent)
    return parent, ids


def test_grid_report_refuses_to_pair_runs_on_different_data(mlflow_experiment, tmp_path):
    client = MlflowClient()
    digests = {("paper", 1): "aaa", ("paper", 2): "aaa", ("kernel5", 1): "aaa", ("kernel5", 2): "bbb"}
    _, ids = _grid(client, mlflow_experiment, "mixed", digests)
    folder = write_report("mixed", out_dir=tmp_path)
    markdown = (folder / "report.md").read_text()
    assert "did not all train on the same data" in markdown
    assert "data digest bbb: kernel5 seed 2" in markdown
    refusal = next(line for line in markdown.splitlines() if "not paired" in line)
    assert ids["kernel5", 2] in refusal and ids["paper", 2] in refusal and "aaa" in refusal and "bbb" in refusal
    effect_row = next(line for line in markdown.splitlines() if line.startswith("| kernel5 | paper |"))
    assert effect_row.split("|")[3].strip() == "1"  # only seed 1 was paired
    page = (folder / "report.html").read_text()
    assert page.count("<table") == 2 and "<pre>" not in page and "<th>val acc %</th>" in page


def test_grid_report_pairs_every_seed_on_one_data(mlflow_experiment, tmp_path):
    client = MlflowClient()
    _grid(client, mlflow_experiment, "same", dict.fromkeys([("paper", 1), ("paper", 2), ("kernel5", 1),
                                                            ("kernel5", 2)], "aaa"))
    markdown = (write_report("same", out_dir=tmp_path) / "report.md").read_text()
    assert "not paired" not in markdown and "same data" not in markdown
    assert next(line for line in markdown.splitlines() if line.startswith("| kernel5 | paper |")).split("|")[3] \
        .strip() == "2"


def test_kfold_report_refuses_to_pair_variants_on_different_data(mlflow_experiment, tmp_path):
    client = MlflowClient()
    group = _run(client, mlflow_experiment, "grp", {"fer_ablate_kind": "kfold-group", "fer_ablate_name": "grp"})
    for label, digest, shift in (("paper", "aaa", 0.0), ("kernel5", "bbb", 0.02), ("layers10", "aaa", 0.01)):
        _run(client, mlflow_experiment, label, {
            "fer_ablate_kind": "kfold", "fer_ablate_name": label, "kfold_group_run": group, "kfold_k": "2",
            "kfold_folds": "f00", "data_digest": digest},
            {"fold0_val_accuracy": 0.5 + shift, "fold1_val_accuracy": 0.52 + shift}, group)
    folder = write_kfold_report("grp", out_dir=tmp_path)
    markdown = (folder / "report.md").read_text()
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in markdown.splitlines()
            if line.startswith("| ") and " | " in line}
    assert "not paired: different data" in rows["kernel5", "paper"] and "bbb" in rows["kernel5", "paper"]
    assert "not paired" not in rows["layers10", "paper"]
    assert "<table" in (folder / "report.html").read_text()


def test_report_looks_in_the_rules_mlflow_experiment_and_says_where_else(monkeypatch, tmp_path):
    """A grid recorded in another MLflow experiment (e.g. `mlflow run` without --experiment-name) is not
    read silently; the error names the experiment searched and how to point at the other one."""
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "reports-elsewhere")
    elsewhere = tracking.configure()
    _grid(MlflowClient(), elsewhere, "lost", dict.fromkeys([("paper", 1), ("paper", 2), ("kernel5", 1),
                                                           ("kernel5", 2)], "aaa"))
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "reports-here")
    tracking.configure()
    with pytest.raises(tracking.TrackingError, match="'reports-here'.*MLFLOW_EXPERIMENT_NAME='reports-elsewhere'"):
        write_report("lost", out_dir=tmp_path)
    with pytest.raises(tracking.TrackingError, match="no ablation run named 'never'.*fer-ablate ablate"):
        write_report("never", out_dir=tmp_path)
    _run(MlflowClient(), elsewhere, "grp", {"fer_ablate_kind": "kfold-group", "fer_ablate_name": "lost_grp"})
    with pytest.raises(tracking.TrackingError, match="kfold-group run named 'lost_grp'.*'reports-elsewhere'"):
        write_kfold_report("lost_grp", out_dir=tmp_path)
    with pytest.raises(tracking.TrackingError, match="no kfold run named 'never'.*fer-ablate kfold --variant never"):
        write_kfold_report("never", out_dir=tmp_path)
