"""One tracked run end to end: through `mlflow run`, through the API, and its failure paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import mlflow
import numpy as np
import pytest
from conftest import PROJECT, tiny_overrides
from mlflow.tracking import MlflowClient

from fer_ablate import tracking
from fer_ablate.config.settings import resolve_config
from fer_ablate.runs.single import train_and_track
from fer_ablate.tracking import TrackingError

EPOCH_KEYS = {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "wall_seconds"}


def _env():
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def _check_finished_run(run_id: str, variant: str, epochs: int):
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["variant"] == variant
    assert run.data.params["train.epochs"] == str(epochs)
    assert run.data.tags["data_source"] == "synthetic" and run.data.tags["data_synthetic"] == "true"
    assert len(run.data.tags["config_hash"]) == 12 and run.data.tags["data_digest"]
    for key in ("val_accuracy", "test_accuracy", "val_macro_f1", "val_recall_disgust", "param_count",
                "train_seconds", "images_per_second"):
        assert key in run.data.metrics, key
    for key in EPOCH_KEYS:
        steps = {m.step for m in client.get_metric_history(run_id, key)}
        assert steps == set(range(1, epochs + 1)), key
    artifacts = {a.path for a in client.list_artifacts(run_id)} | {
        a.path for folder in ("plots", "metrics") for a in client.list_artifacts(run_id, folder)}
    assert {"config.yaml", "plots/confusion_validation.png", "plots/learning_curves.png",
            "metrics/history.json"} <= artifacts
    assert {i.dataset.name for i in run.inputs.dataset_inputs} >= {"synthetic-train"}
    assert run.data.tags["mlflow.source.name"] and run.data.tags["mlflow.source.type"] in ("LOCAL", "PROJECT")
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens the runs table
    model = mlflow.keras.load_model(f"runs:/{run_id}/model")
    probs = np.asarray(model.predict(np.full((3, 48, 48, 1), 128, np.float32), verbose=0))
    assert probs.shape == (3, 7) and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    return run


@pytest.mark.slow  # ~17 s; also run by the quickstart test (slow); test_mlproject checks every parameter
def test_mlflow_run_main_entry_point(tmp_path):
    """`mlflow run . -P variant=kernel3 -P epochs=1 --env-manager local` leaves a readable FINISHED run."""
    overrides = " ".join(f"{k}={json.dumps(v).replace(' ', '')}" for k, v in tiny_overrides().items()
                         if k != "train.epochs")
    cmd = [sys.executable, "-m", "mlflow", "run", str(PROJECT), "-P", "variant=kernel3", "-P", "epochs=1",
           "-P", f"overrides={overrides}", "--env-manager", "local", "--experiment-name", "mlproject-test"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "built-in synthetic faces" in proc.stderr
    runs = MlflowClient().search_runs(
        [mlflow.get_experiment_by_name("mlproject-test").experiment_id])
    assert len(runs) == 1
    run = _check_finished_run(runs[0].info.run_id, "kernel3", 1)
    tags = run.data.tags  # MLflow's UI shows the Source as fer-ablate:main, not the project folder's name
    assert tags["mlflow.source.type"] == "PROJECT" and tags["mlflow.source.name"] == "fer-ablate:main"
    assert tags["project_uri"] == PROJECT.as_uri() and tags["command"].startswith("fer-ablate train --variant kernel3")


def test_api_run_and_evaluate_cli(tmp_path, capsys):
    from fer_ablate.cli import main

    cfg = resolve_config("layers10", tiny_overrides(**{"train.epochs": 2}))
    run_id, metrics = train_and_track(cfg, experiment="api-test")
    run = _check_finished_run(run_id, "layers10", 2)
    assert run.info.run_name == "layers10 · seed 42"
    assert metrics["val_accuracy"] == pytest.approx(run.data.metrics["val_accuracy"])
    capsys.readouterr()
    assert main(["evaluate", "--model", f"runs:/{run_id}/model", "--data", "synthetic", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["splits"]) == {"train", "validation", "test"}
    assert len(report["splits"]["test"]["confusion_matrix"]) == 7


class _Boom(keras.callbacks.Callback):
    def __init__(self, exc):
        super().__init__()
        self.exc = exc

    def on_epoch_end(self, epoch, logs=None):
        raise self.exc


@pytest.mark.parametrize("exc,status", [(RuntimeError("disk on fire"), "FAILED"), (KeyboardInterrupt(), "KILLED")])
def test_exception_mid_training_ends_run_failed_or_killed(exc, status):
    cfg = resolve_config("paper", tiny_overrides(**{"train.epochs": 3}))
    with pytest.raises(type(exc)):
        train_and_track(cfg, experiment="crash-test", extra_callbacks=[_Boom(exc)])
    client = MlflowClient()
    run = client.search_runs([mlflow.get_experiment_by_name("crash-test").experiment_id],
                             order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert run.info.status == status
    assert "error" in run.data.tags
    assert run.data.params["model.name"] == "paper_cnn"  # what was logged before the crash is kept
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1]  # epoch 1 kept


def test_unreachable_tracking_server_fails_before_training(monkeypatch, capsys):
    from fer_ablate.cli import main

    cfg = resolve_config("paper", tiny_overrides())
    with pytest.raises(TrackingError, match="unreachable"):
        train_and_track(cfg, tracking_uri="http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # in-process: no TensorFlow import to wait for
    assert main(["train", "--epochs", "1"]) == 3
    out = capsys.readouterr()
    assert "unreachable" in out.err and "Epoch" not in out.out


def test_one_rule_chooses_the_mlflow_experiment(monkeypatch):
    """fer-ablate, else $MLFLOW_EXPERIMENT_NAME, else train --experiment-name; inside `mlflow run` the
    launcher's. Every experiment the project touches gets MLflow's model-development kind."""
    for name in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    client = MlflowClient()
    default = tracking.configure()
    assert client.get_experiment(default).name == "fer-ablate"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "rule-test")
    chosen = tracking.configure()
    assert client.get_experiment(chosen).name == "rule-test"
    assert client.get_experiment(chosen).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(tracking.configure("explicit-name")).name == "explicit-name"
    launcher = client.create_experiment("launched-untagged")  # as `mlflow run --experiment-name` makes it
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", launcher)
    monkeypatch.setenv("MLFLOW_RUN_ID", "0" * 32)
    assert tracking.configure() == launcher == tracking.project_experiment_ids()[0]
    assert client.get_experiment(launcher).tags["mlflow.experimentKind"] == "custom_model_development"
    assert "mlflow.sharedViewState.fer-ablate-headline" in client.get_experiment(launcher).tags  # the runs table's view
