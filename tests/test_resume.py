"""Resume inside a run (issue 21 part 1): a run stopped at epoch k continues in the same MLflow run from its
checkpoint, every epoch's metrics logged once, with the result an uninterrupted run gets.

The default run interrupts in-process (the ``KeyboardInterrupt`` that SIGTERM and Ctrl-C become, raised between
batches as ``InterruptPoint`` does); the ``slow`` tests send a real SIGTERM to a real `fer-ablate` process for a
single run, a grid child, a k-fold fold and a study trial, and rerun the same command.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import PROJECT, TINY, shrink
from mlflow.tracking import MlflowClient

from fer_ablate.cli import main
from fer_ablate.config.settings import resolve_config
from fer_ablate.data import load_dataset
from fer_ablate.runs.single import train_and_track
from fer_ablate.training import checkpoints
from fer_ablate.training.loop import train

# Dropout, BatchNorm, early stopping and plateau counters: all of it must come back for the same result.
RESUMABLE = {**TINY, "model.dense_units": [16], "model.dense_dropout": [0.3], "train.epochs": 3,
             "train.early_stopping_patience": 3, "train.reduce_lr_on_plateau": True}
# Long enough that a poll of the store sees epoch 2 well before the run could end (~1 s an epoch, eager).
LONG = {**TINY, "data.synthetic_samples": 800, "train.epochs": 8}


class StopAt(keras.callbacks.Callback):
    """Raises the interrupt a signal becomes at the start of epoch ``epoch`` (0-based): epochs before it done."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def _weights(model: keras.Model) -> np.ndarray:
    return np.concatenate([w.ravel() for w in model.get_weights()])


@pytest.mark.jax  # .ci/run runs it again under KERAS_BACKEND=jax
def test_an_interrupted_training_resumes_to_the_uninterrupted_result(tmp_path):
    cfg = resolve_config("paper", RESUMABLE)
    data = load_dataset(cfg["data"])
    whole = train(cfg, data)
    keras.utils.clear_session()
    path = tmp_path / "run.npz"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, data, callbacks=[StopAt(2)], checkpoint=path)
    state = checkpoints.read_state(path)
    assert state.epoch == 2 and len(state.history["loss"]) == 2
    keras.utils.clear_session()
    resumed = train(cfg, data, checkpoint=path)
    assert resumed.resumed_from == 2 and resumed.epochs_run == whole.epochs_run == 3
    # Same seed, same backend, CPU: measured identical to the last bit (TensorFlow and JAX); 1e-6 allows for
    # a backend whose kernels are not bitwise deterministic.
    np.testing.assert_allclose(resumed.history["train_loss"], whole.history["train_loss"], rtol=1e-6)
    np.testing.assert_allclose(_weights(resumed.model), _weights(whole.model), atol=1e-6)
    assert resumed.metrics["val_accuracy"] == pytest.approx(whole.metrics["val_accuracy"], abs=1e-6)


def test_a_run_resumes_in_place_and_refuses_a_checkpoint_of_another_config():
    cfg = resolve_config("paper", RESUMABLE)
    with pytest.raises(KeyboardInterrupt):
        train_and_track(cfg, experiment="resume-in-place", extra_callbacks=[StopAt(2)])
    client = MlflowClient()
    [run] = client.search_runs([client.get_experiment_by_name("resume-in-place").experiment_id])
    run_id = run.info.run_id
    assert run.info.status == "KILLED" and checkpoints.checkpoint_path(run_id).exists()

    other = resolve_config("paper", {**RESUMABLE, "train.learning_rate": 0.01})
    assert main(["train", "--resume", run_id, "--epochs", "3"]) == 2  # its own config only: one line, no change
    with pytest.raises(checkpoints.CheckpointMismatch, match="config_hash"):
        train_and_track(other, resume_run_id=run_id)
    assert client.get_run(run_id).info.status == "KILLED"  # the refusal did not touch the run

    assert main(["train", "--resume", run_id]) == 0
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "error" not in run.data.tags
    assert run.data.tags["resumes"] == "1" and run.data.tags["resume.1.from_epoch"] == "2"
    assert run.data.tags["resume.1.previous_status"] == "KILLED"
    steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
    assert sorted(steps) == [1, 2, 3], steps  # each epoch once: no step logged twice, none missing
    assert not checkpoints.checkpoint_path(run_id).exists()  # FINISHED: its state is in the store
    assert main(["train", "--resume", run_id]) == 2  # nothing left to resume


def test_an_epoch_checkpointed_but_not_logged_is_logged_from_the_checkpoint(tmp_path):
    from fer_ablate import tracking
    from fer_ablate.runs.single import _log_missing_epochs

    ctx = tracking.open_context("resume-replay")
    with tracking.tracked_run(ctx.experiment_id, "replay") as run:
        tracking.log_metrics({"train_loss": 1.0}, 1)
        state = checkpoints.TrainingState({}, 2, {"loss": [1.0, 0.5], "val_accuracy": [0.2, 0.3]})
        _log_missing_epochs(run.info.run_id, state)
    history = MlflowClient().get_metric_history(run.info.run_id, "train_loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.5)]


# ---- real SIGTERMs to real processes (slow: each ~30-60 s) ------------------------------------------------


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}


def _runs(query: str) -> list:
    client = MlflowClient()
    return client.search_runs([e.experiment_id for e in client.search_experiments()], query, max_results=5000)


def _sigterm_after_epoch(argv: list[str], query: str, tmp_path: Path, epoch: int = 2) -> str:
    """Start ``fer-ablate argv``; once a run matching ``query`` has logged ``epoch`` epochs, SIGTERM it.
    Returns that run's id (KILLED, with a checkpoint of at least ``epoch`` epochs)."""
    err = tmp_path / "stderr.log"
    proc = subprocess.Popen([sys.executable, "-m", "fer_ablate.cli", *argv], env=_env(), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=err.open("w"))
    client, deadline = MlflowClient(), time.time() + 600
    while time.time() < deadline:
        running = [r for r in _runs(query) if r.info.status == "RUNNING"]
        done = [r for r in running if len(client.get_metric_history(r.info.run_id, "train_loss")) >= epoch]
        if done:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=180) == 130, err.read_text()[-3000:]
            run = client.get_run(done[0].info.run_id)
            assert run.info.status == "KILLED", err.read_text()[-3000:]
            assert checkpoints.read_state(checkpoints.checkpoint_path(run.info.run_id)).epoch >= epoch
            return run.info.run_id
        assert proc.poll() is None, f"ended before epoch {epoch}:\n{err.read_text()[-3000:]}"
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"no run reached epoch {epoch}")


def _assert_resumed(run_id: str, epochs: int) -> dict:
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["resumes"] == "1", run.data.tags
    start = int(run.data.tags["resume.1.from_epoch"])
    assert 2 <= start < epochs
    for key in ("train_loss", "lr", "wall_seconds"):  # per-epoch only (val_*, train_accuracy: the final
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))  # value at the last step too)
        assert steps == list(range(1, epochs + 1)), (key, steps)  # once each, none missing
    walls = [m.value for m in sorted(client.get_metric_history(run_id, "wall_seconds"), key=lambda m: m.step)]
    assert walls == sorted(walls), walls  # the clock went on from the checkpoint, not from 0
    assert not checkpoints.checkpoint_path(run_id).exists()
    return run.data.metrics


def _lengthen(shrunk: str) -> str:
    """A shrunk smoke file's fixed block made ``LONG``: 8 epochs on 800 faces."""
    return shrunk.replace("  train.epochs: 1\n", "  train.epochs: 8\n", 1).replace(
        "  data.synthetic_samples: 300\n", "  data.synthetic_samples: 800\n", 1)


def _set(overrides: dict) -> list[str]:
    return [a for k, v in overrides.items() for a in ("--set", f"{k}={v}".replace(" ", ""))]


@pytest.mark.slow
def test_sigterm_single_run_then_train_resume_matches_an_uninterrupted_run(tmp_path):
    argv = ["train", "--variant", "paper", "--experiment-name", "resume-single", *_set(LONG)]
    run_id = _sigterm_after_epoch([*argv, "--run-name", "resume-killed"], "attributes.run_name = 'resume-killed'",
                                  tmp_path)
    resumed = subprocess.run([sys.executable, "-m", "fer_ablate.cli", "train", "--resume", run_id], env=_env(),
                             cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = _assert_resumed(run_id, LONG["train.epochs"])
    assert main([*argv, "--run-name", "resume-whole"]) == 0  # uninterrupted, here: same backend, same eager mode
    client = MlflowClient()
    [other] = _runs("attributes.run_name = 'resume-whole'")
    assert sorted(m.step for m in client.get_metric_history(run_id, "val_accuracy")) == sorted(
        m.step for m in client.get_metric_history(other.info.run_id, "val_accuracy"))
    for key in ("val_loss", "val_accuracy", "test_accuracy"):
        assert metrics[key] == pytest.approx(other.data.metrics[key], abs=1e-6), key
    losses = [[m.value for m in sorted(client.get_metric_history(r, "train_loss"), key=lambda m: m.step)]
              for r in (run_id, other.info.run_id)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)


@pytest.mark.slow
def test_sigterm_grid_child_is_continued_in_the_same_run_by_the_rerun(tmp_path):
    path = tmp_path / "resume_grid.yaml"
    text = shrink((PROJECT / "experiments" / "smoke.yaml").read_text()).replace("name: smoke", "name: resume_grid")
    path.write_text(_lengthen(text.replace("seeds: [1, 2]", "seeds: [1]")))
    argv = ["ablate", "--experiment", str(path), "--no-report"]
    query = "tags.fer_ablate_kind = 'ablation-child' and tags.fer_ablate_name = 'resume_grid'"
    run_id = _sigterm_after_epoch(argv, query, tmp_path)
    assert main(argv) == 0
    _assert_resumed(run_id, LONG["train.epochs"])
    children = _runs(query)
    assert len({c.data.tags["child_key"] for c in children}) == len(children)  # no second run of that key


@pytest.mark.slow
def test_sigterm_kfold_fold_is_continued_in_the_same_run_by_the_rerun(tmp_path):
    argv = ["kfold", "--variant", "paper", "--folds", "2", "--fold-seed", "4242", "--no-report", *_set(LONG)]
    query = "tags.fer_ablate_kind = 'kfold-child' and tags.fer_ablate_name = 'paper'"
    run_id = _sigterm_after_epoch(argv, query, tmp_path)
    assert main(argv) == 0
    _assert_resumed(run_id, LONG["train.epochs"])
    fold = MlflowClient().get_run(run_id).data.tags["fold"]
    parent = MlflowClient().get_run(run_id).data.tags["mlflow.parentRunId"]
    same_fold = [r for r in _runs(f"tags.mlflow.parentRunId = '{parent}'") if r.data.tags.get("fold") == fold]
    assert [r.info.run_id for r in same_fold] == [run_id]


@pytest.mark.slow
def test_sigterm_study_trial_is_retried_in_the_same_run_by_the_rerun(tmp_path):
    import optuna

    from fer_ablate.tuning.study import open_storage

    path = tmp_path / "resume_study.yaml"
    text = shrink((PROJECT / "search_spaces" / "smoke.yaml").read_text()).replace("name: smoke", "name: resume_study")
    path.write_text(_lengthen(text.replace("\nepochs: 2\n", "\nepochs: 8\n")))
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    argv = ["tune", "--space", str(path), "--storage", storage, "--n-trials", "1"]
    query = "tags.fer_ablate_kind = 'study-child' and tags.fer_ablate_name = 'resume_study'"
    run_id = _sigterm_after_epoch(argv, query, tmp_path)
    assert main(argv) == 0
    _assert_resumed(run_id, LONG["train.epochs"])
    study = optuna.load_study(study_name="resume_study", storage=open_storage(storage))
    states = [t.state.name for t in study.get_trials()]
    assert states == ["FAIL", "COMPLETE"], states  # the interrupted trial, and its retry that finished it
    retry = study.get_trials()[1]
    assert retry.user_attrs["mlflow_run_id"] == run_id
    history = MlflowClient().get_metric_history(run_id, "val_accuracy")
    assert retry.value == pytest.approx(max(m.value for m in history))  # every epoch counts, not only the resumed
