"""Small runs (1 epoch, 2 or 3 folds) still give readable figures and honest intervals.

Issue 20: a 1-epoch learning_curves.png was blank (lines without markers), and a 2-fold k-fold parent logged
``val_accuracy_ci95_low = -0.33``. The figures are rendered and their pixels read; the k-fold aggregates
are computed from fold runs written into a real MLflow store.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from mlflow.tracking import MlflowClient

from fer_ablate import tracking
from fer_ablate.reports.kfold_report import write_kfold_report
from fer_ablate.reports.plots import (
    PAPER_ACCURACY,
    TANG_2013_ACCURACY,
    finish_plot,
    learning_curves_figure,
    plot_learning_curves,
    plt,
)

ONE_EPOCH = {"train_loss": [1.9], "val_loss": [1.8], "train_accuracy": [0.22], "val_accuracy": [0.25]}


def _pixels_near(fig, ax, x: float, y: float, color: str, radius: int = 4) -> int:
    """How many pixels within ``radius`` of data point (x, y) of ``ax`` have the colour ``color``."""
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    px, py = ax.transData.transform((x, y))
    row, col = int(round(image.shape[0] - py)), int(round(px))
    window = image[row - radius:row + radius + 1, col - radius:col + radius + 1]
    target = np.array(to_rgb(color)) * 255
    return int((np.abs(window - target).max(axis=-1) < 40).sum())


def test_a_one_epoch_run_shows_its_point_on_both_panels(tmp_path):
    fig = learning_curves_figure(ONE_EPOCH, "paper learning curves")
    ax_loss, ax_acc = fig.axes[:2]
    for ax, key, value in ((ax_loss, "train_loss", 1.9), (ax_acc, "val_accuracy", 0.25)):
        line = next(line for line in ax.get_lines() if line.get_label() == key)
        assert line.get_marker() == "o" and line.get_markersize() > 0
        # A line with one point draws no segment: only the marker makes it visible.
        assert _pixels_near(fig, ax, 1, value, line.get_color()) >= 9, key
    assert all(float(tick).is_integer() for ax in (ax_loss, ax_acc) for tick in ax.get_xticks())  # not 0.98
    # Accuracy from 0, both reference lines in view.
    low, high = ax_acc.get_ylim()
    assert low == 0 and high > TANG_2013_ACCURACY > PAPER_ACCURACY
    plt.close(fig)
    written = plot_learning_curves(ONE_EPOCH, "paper learning curves", tmp_path / "learning_curves.png")
    assert written.stat().st_size > 0


def test_without_a_marker_the_same_point_is_invisible():
    """The pixel check can fail: the 1-epoch figure of before (no marker) has no pixel of the line there."""
    fig, ax = plt.subplots()
    (line,) = ax.plot([1], [0.25], "--")
    assert _pixels_near(fig, ax, 1, 0.25, line.get_color()) == 0
    plt.close(fig)


def test_long_curves_keep_about_25_markers():
    history = {key: list(np.linspace(0.2, 0.6, 100)) for key in ONE_EPOCH}
    fig = learning_curves_figure(history, "100 epochs")
    line = fig.axes[1].get_lines()[0]
    assert line.get_marker() == "o" and line.get_markevery() == 4
    plt.close(fig)


def test_accuracy_plots_start_at_zero_and_keep_both_baselines(tmp_path):
    """The k-fold bar axis used to start at ~0.12 (lowest fold minus 5 points) and end at 0.8."""
    fig, ax = plt.subplots()
    ax.scatter([0, 1], [0.17, 0.31])
    finish_plot(fig, ax, tmp_path / "low.png")
    low, high = ax.get_ylim()
    assert low == 0 and TANG_2013_ACCURACY < high <= 1
    fig, ax = plt.subplots()
    ax.errorbar([0], [0.9], yerr=[0.2])  # a std bar past 100% does not stretch the axis past it
    finish_plot(fig, ax, tmp_path / "high.png")
    assert ax.get_ylim() == (0, 1)


@pytest.fixture
def client(monkeypatch, request):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"small-{request.node.name}")
    return MlflowClient(), tracking.configure()


def _fold_runs(client, experiment_id, scores):
    """Finished fold runs logging ``val_accuracy`` (and macro-F1) as training would, read back from the store."""
    runs = {}
    for fold, score in enumerate(scores):
        run_id = client.create_run(experiment_id, run_name=f"paper · fold {fold + 1}/{len(scores)}",
                                   tags={"fold": str(fold)}).info.run_id
        client.log_metric(run_id, "val_accuracy", score)
        client.log_metric(run_id, "val_macro_f1", score / 2)
        client.set_terminated(run_id, "FINISHED")
        runs[fold] = client.get_run(run_id)
    return runs


def test_two_fold_parent_logs_no_interval_and_three_folds_a_bounded_one(client):
    from fer_ablate.runs.cross_validation import summarise  # imports the training code (Keras): only here

    mlflow_client, experiment_id = client
    two = summarise(_fold_runs(mlflow_client, experiment_id, [0.25, 0.8]), 2)
    assert two["val_accuracy_mean"] == pytest.approx(0.525) and two["fold1_val_accuracy"] == pytest.approx(0.8)
    assert not any("ci95" in key for key in two)  # n = 2: no interval, and no NaN metric either
    three = summarise(_fold_runs(mlflow_client, experiment_id, [0.05, 0.9, 0.5]), 3)
    for key in ("val_accuracy", "val_macro_f1"):
        low, high = three[f"{key}_ci95_low"], three[f"{key}_ci95_high"]
        assert 0 < low < three[f"{key}_mean"] < high < 1 and all(map(math.isfinite, (low, high)))


def test_kfold_report_over_three_folds_prints_a_bounded_interval(client, tmp_path):
    mlflow_client, experiment_id = client
    parent = mlflow_client.create_run(experiment_id, run_name="paper", tags={
        "fer_ablate_kind": "kfold", "fer_ablate_name": "paper3", "kfold_k": "3", "kfold_folds": "f00",
        "data_digest": "aaa", "kfold_test_split": "none"}).info.run_id
    for fold, score in enumerate([0.05, 0.9, 0.5]):
        mlflow_client.log_metric(parent, f"fold{fold}_val_accuracy", score)
    mlflow_client.log_text(parent, json.dumps({}), "fold_runs.json")
    mlflow_client.set_terminated(parent, "FINISHED")
    markdown = (write_kfold_report("paper3", out_dir=tmp_path) / "report.md").read_text()
    row = next(line for line in markdown.splitlines() if line.startswith("| paper3 | 3/3 |"))
    low, high = (float(x) for x in row.split("|")[4].strip().strip("[]").split(","))
    assert 0 < low < 48.3 < high < 100  # mean 48.3%; the plain t-interval was [-57.3, 154.0]
    assert "No held-out test split" in markdown and "Read this first" not in markdown
