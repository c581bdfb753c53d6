"""Optuna studies end to end: tracked trials, pruning, failures, resume, storages, workers, dead workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import PROJECT, shrink
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from fer_ablate.runs.shared_queue import StorageError
from fer_ablate.tuning.study import StudyRequest, run_study


def _space(tmp_path, name: str, extra: str = "", pruner: str = "{type: none}") -> str:
    text = shrink((PROJECT / "search_spaces" / "smoke.yaml").read_text()).replace("name: smoke", f"name: {name}")
    text = text.replace("pruner: {type: median, n_startup_trials: 1, n_warmup_steps: 0}", f"pruner: {pruner}")
    path = tmp_path / f"{name}.yaml"
    path.write_text(text + extra)
    return str(path)


def _trial_runs(study: str):
    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, f"tags.fer_ablate_kind = 'study-child' and tags.fer_ablate_name = '{study}'")


def _parent(study: str):
    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, f"tags.fer_ablate_kind = 'study' and tags.fer_ablate_name = '{study}'")


def test_tiny_study_tracks_every_trial_and_resumes(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    summary = run_study(StudyRequest(_space(tmp_path, "tiny"), n_trials=2, storage=storage))
    assert summary["states"]["COMPLETE"] == 2
    runs = _trial_runs("tiny")
    assert sorted(int(r.data.tags["trial_number"]) for r in runs) == [0, 1]
    assert all(r.data.tags["trial_state"] == "COMPLETE" and r.info.status == "FINISHED" for r in runs)
    parents = _parent("tiny")
    assert len(parents) == 1 and {r.data.tags["mlflow.parentRunId"] for r in runs} == {parents[0].info.run_id}
    parent = parents[0]
    assert parent.data.tags["sampler"] == "tpe" and parent.data.tags["study_name"] == "tiny"
    assert parent.data.metrics["best_value"] == pytest.approx(summary["best_value"])
    artifacts = {a.path for a in MlflowClient().list_artifacts(parent.info.run_id)}
    assert {"search_space.yaml", "best_variant.yaml", "best_params.yaml", "optuna_plots"} <= artifacts
    plots = {a.path for a in MlflowClient().list_artifacts(parent.info.run_id, "optuna_plots")}
    assert "optuna_plots/optimization_history.png" in plots

    # Same study name again: resumed, not restarted, under the same parent run.
    summary = run_study(StudyRequest(_space(tmp_path, "tiny"), n_trials=3, storage=storage))
    assert summary["trials"] == 3 and len(_trial_runs("tiny")) == 3 and len(_parent("tiny")) == 1
    # Once complete, the same command again runs no further trial (Optuna's MaxTrialsCallback alone would).
    assert run_study(StudyRequest(_space(tmp_path, "tiny"), n_trials=3, storage=storage))["trials"] == 3
    assert len(_trial_runs("tiny")) == 3

    # The best configuration runs again as a variant.
    from fer_ablate.cli import main

    assert main(["train", "--variant-file", summary["best_variant_file"], "--variant", "tiny_best",
                 "--epochs", "1"]) == 0


def test_pruner_prunes_and_failing_trials_are_recorded(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    # A threshold no tiny model reaches: every trial is pruned after its first epoch.
    space = _space(tmp_path, "pruned", pruner="{type: threshold, lower: 0.99}")
    summary = run_study(StudyRequest(space, n_trials=2, storage=storage))
    assert summary["states"]["PRUNED"] == 2
    for run in _trial_runs("pruned"):
        assert run.data.tags["trial_state"] == "PRUNED" and run.data.metrics["epochs_run"] == 1

    # A kernel larger than the feature map makes training raise: FAIL in Optuna and MLflow, study goes on.
    grid = Path(_space(tmp_path, "failing"))
    text = grid.read_text().replace("sampler: {type: tpe, seed: 0, n_startup_trials: 2}", "sampler: {type: grid}")
    grid.write_text(text[: text.index("params:")] + "params:\n  model.kernel_size: {type: categorical, "
                    "choices: [3, 60]}\n")
    grid = str(grid)
    summary = run_study(StudyRequest(grid, n_trials=None, storage=storage, study_name="failing"))
    assert summary["states"]["FAIL"] == 1 and summary["states"]["COMPLETE"] == 1
    states = {r.data.tags["trial_state"]: r.info.status for r in _trial_runs("failing")}
    assert states == {"FAIL": "FAILED", "COMPLETE": "FINISHED"}


@pytest.mark.parametrize("storage,message", [("not-a-url", "neither a database URL"),
                                             ("postgresql://nobody@127.0.0.1:9/optuna", "cannot be used")])
def test_bad_storage_fails_before_training(tmp_path, storage, message):
    with pytest.raises(StorageError, match=message):
        run_study(StudyRequest(_space(tmp_path, "bad"), n_trials=1, storage=storage))
    assert not _trial_runs("bad")


@pytest.mark.slow  # issue 20: the default run stays within 10 minutes; .ci/run runs the slow tests too
def test_workers_share_a_journal_file(tmp_path):
    storage = f"journal:{tmp_path / 'journal.log'}"
    summary = run_study(StudyRequest(_space(tmp_path, "journal"), n_trials=4, storage=storage, workers=2))
    done = summary["states"]["COMPLETE"] + summary["states"]["PRUNED"]
    assert done >= 4
    numbers = [int(r.data.tags["trial_number"]) for r in _trial_runs("journal")]
    assert len(numbers) == len(set(numbers)) == summary["trials"]


def _env(**extra):
    return {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"], **extra}


@pytest.mark.slow  # the default run keeps test_shared_grid's PostgreSQL tests
def test_postgres_two_workers_and_a_killed_worker(postgres, tmp_path):
    optuna_url, mlflow_url = postgres("optuna_tune"), postgres("mlflow_tune")
    space = _space(tmp_path, "pg")
    env = _env(MLFLOW_TRACKING_URI=mlflow_url, FER_ABLATE_HEARTBEAT_SECONDS="2", FER_ABLATE_HEARTBEAT_GRACE_SECONDS="6")
    cmd = [sys.executable, "-m", "fer_ablate.cli", "tune", "--space", space, "--storage", optuna_url,
           "--study-name", "pg"]
    MlflowClient(mlflow_url).search_experiments()  # create the MLflow schema once, as a first machine does
    # cwd: a PostgreSQL MLflow store keeps MLflow's default artifact root, ./mlruns of the working directory.
    subprocess.run([*cmd, "--n-trials", "1"], env=env, cwd=tmp_path, check=True, capture_output=True, timeout=600)

    # A worker killed mid-trial: its trial goes FAIL (heartbeat lost) and is retried; its run is not left RUNNING.
    victim = subprocess.Popen([*cmd, "--n-trials", "10", "--set", "train.epochs=30"], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    storage = optuna.storages.RDBStorage(optuna_url)
    deadline = time.time() + 300
    while time.time() < deadline:
        running = [t for t in optuna.load_study(study_name="pg", storage=storage).get_trials()
                   if t.state == TrialState.RUNNING and t.user_attrs.get("mlflow_run_id")]
        if running:
            break
        time.sleep(0.5)
    assert running, "the victim never started a trial"
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    killed = running[0]
    time.sleep(8)  # past the grace period (3 heartbeats of 2 s)

    procs = [subprocess.Popen([*cmd, "--n-trials", "5"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
    trials = optuna.load_study(study_name="pg", storage=storage).get_trials()
    assert trials[killed.number].state == TrialState.FAIL
    assert any(t.system_attrs.get("failed_trial") == killed.number for t in trials), "the dead trial was retried"
    client = MlflowClient(mlflow_url)
    assert client.get_run(killed.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, "tags.fer_ablate_kind = 'study-child' and tags.fer_ablate_name = 'pg'")
    numbers = [int(r.data.tags["trial_number"]) for r in runs]
    assert len(numbers) == len(set(numbers)), "every trial has exactly one MLflow run"
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) >= 5 and not [r for r in runs if r.info.status == "RUNNING"]


@pytest.mark.slow  # ~15 s; test_run_lifecycle keeps a real SIGINT in the default run
def test_ctrl_c_records_the_current_trial_and_stops(tmp_path):
    """SIGINT mid-trial: the process stops (exit 130), the trial is FAIL in Optuna, its run and the parent KILLED."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    env = _env(MLFLOW_TRACKING_URI=os.environ["MLFLOW_TRACKING_URI"])
    proc = subprocess.Popen([sys.executable, "-m", "fer_ablate.cli", "tune", "--space", _space(tmp_path, "ctrlc"),
                             "--storage", storage, "--n-trials", "3", "--set", "train.epochs=200"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not [r for r in _trial_runs("ctrlc") if r.info.status == "RUNNING"]:
        time.sleep(0.5)
    time.sleep(3)  # inside model.fit
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    [trial] = optuna.load_study(study_name="ctrlc", storage=storage).get_trials()
    assert trial.state == TrialState.FAIL
    [run] = _trial_runs("ctrlc")
    assert run.info.status == "KILLED" and run.data.tags["trial_state"] == "FAIL"
    assert _parent("ctrlc")[0].info.status == "KILLED"
