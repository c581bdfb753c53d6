"""Issue 22: every run keeps its per-image validation and test predictions, and says which split chose what."""

from __future__ import annotations

import json
import time

import mlflow
import numpy as np
import pytest
from conftest import TINY, tiny_overrides
from mlflow.tracking import MlflowClient

from fer_ablate import tracking
from fer_ablate.cli import main
from fer_ablate.config.settings import resolve_config
from fer_ablate.data import NUM_CLASSES, load_dataset
from fer_ablate.data.folds import training_pool
from fer_ablate.inference.score_dataset import own_data_note
from fer_ablate.runs.cross_validation import KFoldRequest, run_kfold
from fer_ablate.runs.single import selection_tags, train_and_track
from fer_ablate.tracking import TrackingError
from fer_ablate.training.metrics import evaluate_probabilities

FER2013_TEST_ROWS = 3589  # PublicTest and PrivateTest each


def _check_predictions(run_id: str, split: str, y: np.ndarray) -> tracking.Predictions:
    preds = tracking.read_predictions(run_id, split)
    probs, labels, row_ids, digest = preds  # unpacks as the tuple
    assert probs.dtype == np.float32 and probs.shape == (len(y), NUM_CLASSES)
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert labels.dtype == np.int64 and np.array_equal(labels, y)
    assert np.array_equal(row_ids, np.arange(len(y)))
    assert digest == tracking.get_run(run_id).data.tags["data_digest"]
    return preds


def test_run_logs_predictions_and_selection_tags(fer_csv, capsys):
    cfg = resolve_config("paper", tiny_overrides(**{"data.source": str(fer_csv), "train.early_stopping_patience": 2,
                                                    "train.reduce_lr_on_plateau": True}))
    run_id, metrics = train_and_track(cfg, experiment="predictions-test")
    dataset = load_dataset(cfg["data"])
    for split, prefix in (("validation", "val"), ("test", "test")):
        preds = _check_predictions(run_id, split, dataset.splits[split][1])
        accuracy = evaluate_probabilities(preds.labels, preds.probs)["accuracy"]
        assert accuracy == pytest.approx(metrics[f"{prefix}_accuracy"])  # the same argmax as the logged metric
    artifacts = {a.path for a in MlflowClient().list_artifacts(run_id, "predictions")}
    assert artifacts == {"predictions/validation.npz", "predictions/test.npz"}  # no train split
    tags = tracking.get_run(run_id).data.tags
    assert {k: v for k, v in tags.items() if k.startswith("selected_on")} == {
        "selected_on": "validation", "selected_on.checkpoint": "validation",
        "selected_on.early_stopping": "validation", "selected_on.plateau": "validation",
        "selected_on.schedule": "none"}
    with pytest.raises(TrackingError, match="no predictions for split 'train'") as err:
        tracking.read_predictions(run_id, "train")
    assert "\n" not in str(err.value)
    # `fer-ablate evaluate` on the model's own training file says so in one line; on other data it does not.
    capsys.readouterr()
    assert main(["evaluate", "--model", f"runs:/{run_id}/model", "--data", str(fer_csv)]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "data this model was trained on" in notes[0] and dataset.digest in notes[0]
    assert "validation chose its checkpoint" in notes[0]
    assert own_data_note(f"runs:/{run_id}/model", str(fer_csv), "0123456789abcdef") is None  # other data


def test_selection_tags_follow_the_switches():
    train = resolve_config("paper", tiny_overrides(**{"train.restore_best": False}))["train"]
    assert selection_tags(train)["selected_on"] == "none"  # defaults: no early stopping, no plateau
    assert set(selection_tags(train).values()) == {"none"}
    train = resolve_config("paper", tiny_overrides(**{"train.lr_schedule": "cosine"}))["train"]
    assert selection_tags(train)["selected_on.checkpoint"] == "validation"
    assert selection_tags(train)["selected_on.schedule"] == "none"
    assert "test" not in selection_tags(train).values()


def test_fer2013_size_split_round_trip_and_cost(capsys):
    """Cost of logging one FER2013-size split (printed; run with -s to see it) and its exact round trip."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, NUM_CLASSES, FER2013_TEST_ROWS)
    probs = rng.dirichlet(np.ones(NUM_CLASSES), FER2013_TEST_ROWS).astype(np.float32)
    ctx = tracking.open_context("predictions-cost")
    with mlflow.start_run(experiment_id=ctx.experiment_id) as run:
        start = time.perf_counter()
        sizes = tracking.log_predictions({"test": (y, probs)}, "abc123")
        seconds = time.perf_counter() - start
    start = time.perf_counter()
    preds = tracking.read_predictions(run.info.run_id, "test")
    read_seconds = time.perf_counter() - start
    with capsys.disabled():
        print(f"\nlog_predictions, {FER2013_TEST_ROWS} images: {seconds * 1000:.1f} ms, {sizes['test']:,} bytes "
              f"({sizes['test'] / FER2013_TEST_ROWS:.1f} bytes/image); read_predictions {read_seconds * 1000:.1f} ms")
    assert preds.data_digest == "abc123" and np.array_equal(preds.labels, y)
    assert np.array_equal(preds.probs, probs)  # exact: float32 in, float32 out


@pytest.mark.slow  # two trainings, ~9 s; the single run above keeps the logging in the default run
def test_kfold_children_log_their_held_out_fold():
    """A fold's validation split is its held-out fold: row i of its predictions is pool image
    ``np.flatnonzero(fold_of == fold)[i]`` (folds.json on the parent)."""
    overrides = {**TINY, "data.synthetic_samples": 200}
    [outcome] = run_kfold(KFoldRequest("paper", folds=2, overrides=overrides))
    assert outcome.finished == 2
    client = MlflowClient()
    folds = json.loads(tracking.read_text(outcome.parent_run_id, "folds.json"))
    cfg = resolve_config("paper", overrides)
    dataset = load_dataset(cfg["data"])
    pool = training_pool(dataset, include_validation=folds["include_validation"])
    fold_of = np.asarray(folds["fold_of"])
    ids = [e.experiment_id for e in client.search_experiments()]
    children = client.search_runs(ids, f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'")
    assert len(children) == 2
    for child in children:
        fold = int(child.data.tags["fold"])
        _check_predictions(child.info.run_id, "validation", pool.y[np.flatnonzero(fold_of == fold)])
        _check_predictions(child.info.run_id, "test", pool.test[1])
        assert child.data.tags["selected_on.checkpoint"] == "validation"
        note = own_data_note(f"runs:/{child.info.run_id}/model", "synthetic", dataset.digest)
        assert note and "when the folds pooled it" in note
