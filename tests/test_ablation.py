"""The ablation grid end to end on the smoke experiment: parent/child runs, resume, failures, report."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from conftest import PROJECT, SHRUNK_FIXED, shrink
from mlflow.tracking import MlflowClient

from fer_ablate.reports.grid_report import write_report
from fer_ablate.runs.grid import GridRequest, run_experiment


def _children(name: str):
    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, f"tags.fer_ablate_kind = 'ablation-child' and tags.fer_ablate_name = '{name}'")


def _smoke_copy(tmp_path, name: str, extra: str = "") -> str:
    text = shrink((PROJECT / "experiments" / "smoke.yaml").read_text()).replace("name: smoke", f"name: {name}") + extra
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return str(path)


def test_smoke_grid_parent_children_and_report(tmp_path):
    outcome = run_experiment(GridRequest(_smoke_copy(tmp_path, "smoke_e2e")))
    assert (outcome.total, outcome.finished, outcome.failed, outcome.skipped) == (4, 4, 0, 0)
    client = MlflowClient()
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["runs_total"] == 4
    children = _children("smoke_e2e")
    assert len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {outcome.parent_run_id}
    assert {c.info.run_name for c in children} == {"smoke · seed 1", "smoke · seed 2", "kernel5 · seed 1",
                                                   "kernel5 · seed 2"}
    assert all(c.info.status == "FINISHED" for c in children)
    # The parent's row in the MLflow runs table shows its children's headline numbers.
    vals = [c.data.metrics["val_accuracy"] for c in children]
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(max(vals))
    assert parent.data.metrics["mean_val_accuracy"] == pytest.approx(sum(vals) / len(vals))

    # Running again resumes: the same parent, nothing to do.
    again = run_experiment(GridRequest(_smoke_copy(tmp_path, "smoke_e2e")))
    assert again.parent_run_id == outcome.parent_run_id and (again.skipped, again.finished) == (4, 0)

    folder = write_report("smoke_e2e", out_dir=tmp_path / "report")
    md = (folder / "report.md").read_text()
    for label in ("smoke", "kernel5"):
        vals = [c.data.metrics["val_accuracy"] for c in children if c.data.tags["run_label"] == label]
        mean = 100 * sum(vals) / len(vals)
        row = next(line for line in md.splitlines() if line.startswith(f"| {label} |"))
        assert f"{mean:.1f} ±" in row and "| 2/2 |" in row
    assert "kernel5 vs smoke" in md and "95% CI" in md
    html = (folder / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4
    for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (folder / name).is_file(), name
    logged = {a.path for a in client.list_artifacts(outcome.parent_run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/accuracy.png"} <= logged


@pytest.mark.slow  # issue 21 added tests: the default run stays within 10 minutes; .ci/run runs slow too
def test_failed_child_is_recorded_and_grid_goes_on(tmp_path):
    # kernel 60 cannot fit a 46x46 map after the first conv: that child crashes, the other runs finish.
    path = Path(_smoke_copy(tmp_path, "smoke_fail"))
    path.write_text(path.read_text().replace("  kernel: [kernel3, kernel5]",
                                             "  kernel: {k3: {model.kernel_size: 3}, k60: {model.kernel_size: 60}}"))
    path = str(path)
    outcome = run_experiment(GridRequest(path))
    assert (outcome.finished, outcome.failed) == (2, 2)
    failed = [c for c in _children("smoke_fail") if c.info.status == "FAILED"]
    assert len(failed) == 2 and all("error" in c.data.tags for c in failed)
    md = (write_report("smoke_fail", out_dir=tmp_path / "r") / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| k60 |"))
    assert "0/2" in row and "seed 1: FAILED" in row


@pytest.mark.slow  # ~33 s; the default run keeps real signals in test_run_lifecycle and test_tuning
@pytest.mark.parametrize("sig", [signal.SIGKILL])
def test_resume_after_killed_grid_runs_only_what_was_missing(tmp_path, sig):
    path = _smoke_copy(tmp_path, "smoke_kill")
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    proc = subprocess.Popen([sys.executable, "-m", "fer_ablate.cli", "ablate", "--experiment", path, "--no-report"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        if sum(c.info.status == "FINISHED" for c in _children("smoke_kill")) >= 2:
            break
        time.sleep(0.5)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    before = _children("smoke_kill")
    finished_before = {c.data.tags["child_key"] for c in before if c.info.status == "FINISHED"}
    assert 2 <= len(finished_before) < 4
    outcome = run_experiment(GridRequest(path))
    assert outcome.skipped == len(finished_before) and outcome.finished == 4 - len(finished_before)
    after = _children("smoke_kill")
    finished_after = [c for c in after if c.info.status == "FINISHED"]
    assert len(finished_after) == 4 and len({c.data.tags["child_key"] for c in finished_after}) == 4
    assert not [c for c in after if c.info.status == "RUNNING"], "a killed child must not stay RUNNING"


@pytest.mark.slow  # issue 20: the default run stays within 10 minutes; .ci/run runs the slow tests too
def test_workers_run_children_in_separate_processes(tmp_path):
    outcome = run_experiment(GridRequest(_smoke_copy(tmp_path, "smoke_workers"), workers=2))
    assert (outcome.finished, outcome.failed) == (4, 0)
    assert len({c.data.tags["child_key"] for c in _children("smoke_workers")}) == 4


def test_dry_run_lists_runs_with_config_hash(capsys):
    from fer_ablate.cli import main

    assert main(["ablate", "--experiment", "paper_ablation", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "kernel5 · seed 3" in out and len(re.findall(r"\b[0-9a-f]{12}\b", out)) == 18
    assert mlflow.get_experiment_by_name("paper_ablation") is None  # a dry run records nothing


@pytest.mark.slow  # test_tracked_run runs the main entry point through `mlflow run` in the default run
def test_mlflow_run_ablate_entry_point(tmp_path):
    """`mlflow run . -e ablate -P experiment=smoke --env-manager local`: the launcher's run is the parent."""
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    shrunk = " ".join(f"{k}={v}" for k, v in SHRUNK_FIXED.items())
    cmd = [sys.executable, "-m", "mlflow", "run", str(PROJECT), "-e", "ablate", "-P", "experiment=smoke",
           "-P", f"overrides={shrunk}", "--env-manager", "local", "--experiment-name", "ablate-entry-point"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient()
    exp_id = client.get_experiment_by_name("ablate-entry-point").experiment_id
    runs = client.search_runs([exp_id])
    parents = [r for r in runs if r.data.tags.get("fer_ablate_kind") == "ablation"]
    children = [r for r in runs if r.data.tags.get("fer_ablate_kind") == "ablation-child"]
    assert len(parents) == 1 and len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert any(a.path == "report" for a in client.list_artifacts(parents[0].info.run_id))
