"""What a newcomer's first hour shows: runs that learn, degenerate and toy models said out loud, true messages."""

from __future__ import annotations

import logging

import keras
import mlflow
import numpy as np
import pytest
from conftest import tiny_overrides

from fer_ablate.config.settings import resolve_config
from fer_ablate.training.metrics import degenerate_verdict


def _probs(predicted: list[int]) -> np.ndarray:
    return np.eye(7, dtype=np.float32)[predicted]


def test_a_one_class_model_is_degenerate_and_a_learning_one_is_not():
    y = np.array([3] * 30 + [0] * 20 + [4] * 20 + [6] * 30)
    one_class, why = degenerate_verdict(y, _probs([3] * 100))
    assert one_class and why == "predicts only 'happy' (100 of 100 images): accuracy 0.300"
    # 33% right against a 30% majority on 100 images: within noise (binomial p ~ 0.3), said so.
    near, why = degenerate_verdict(y, _probs([3] * 30 + [0] * 3 + [3] * 67))
    assert near and "within noise of always answering 'happy'" in why and "p = " in why
    learned, why = degenerate_verdict(y, _probs(list(y[:60]) + [3] * 40))
    assert not learned and why == ""
    with pytest.raises(ValueError, match="at least one"):
        degenerate_verdict(np.array([], int), np.zeros((0, 7)))


def test_a_degenerate_toy_run_is_tagged_and_warned_about(caplog):
    from fer_ablate.runs.single import train_and_track

    cfg = resolve_config("paper", tiny_overrides())  # 300 faces, 1 epoch, BatchNorm 0.99: predicts one class
    with caplog.at_level(logging.WARNING, logger="fer_ablate"):
        run_id, _ = train_and_track(cfg, experiment="first-hour")
    tags = mlflow.get_run(run_id).data.tags
    assert tags["degenerate"] == "true" and tags["degenerate_reason"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("DEGENERATE model" in w and tags["degenerate_reason"] in w for w in warnings), warnings
    assert any("synthetic faces" in w and "1 epoch(s)" in w for w in warnings), warnings
    # The precision was the variant's default: the run does not claim the user asked for it.
    assert "requested" not in tags["precision_reason"] and "default" in tags["precision_reason"]


@pytest.mark.graph  # as a user's run trains: traced graphs
def test_the_smoke_variant_learns_and_every_split_is_predicted_by_one_traced_graph():
    from fer_ablate.data import load_dataset
    from fer_ablate.training.loop import train

    cfg = resolve_config("smoke", {"data.source": "synthetic", "train.verbose": 0})
    dataset = load_dataset(cfg["data"])
    result = train(cfg, dataset)
    y_val = dataset.splits["validation"][1]
    majority = np.bincount(y_val).max() / len(y_val)
    assert not result.degenerate, result.degenerate_reason
    assert result.metrics["val_accuracy"] > majority + 0.05, (result.metrics["val_accuracy"], majority)
    if keras.backend.backend() == "tensorflow":
        # train, validation and test splits of different sizes, padded to whole batches: one trace, not three
        # (three per run was what made a grid of fresh models warn of "excessive retracing").
        assert result.model.predict_function.experimental_get_tracing_count() == 1
    keras.utils.clear_session()


def test_promote_needs_a_run_or_a_grid_and_names_what_is_missing(capsys):
    from fer_ablate.cli import main

    assert main(["promote"]) == 2
    assert "RUN_ID or --best-of EXPERIMENT" in capsys.readouterr().err
    assert main(["promote", "--best-of", "no_such_grid"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "grid 'no_such_grid' has no FINISHED, non-degenerate run" in err[0]
