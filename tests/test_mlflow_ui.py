"""MLflow UI directions: the runs-table URL the commands print, parent names by kind, the headline view, the
Source of `mlflow run` runs; and (slow) the printed URL opened in a real `mlflow ui` by headless Chromium."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import mlflow
import pytest
from conftest import free_port
from mlflow.tracking import MlflowClient

from fer_ablate import tracking
from fer_ablate.tracking.lifecycle import end_run_by_id, open_parent
from fer_ablate.tracking.store import HEADLINE_COLUMNS, HEADLINE_VIEW_TAG

ML_PAGES = "workflowType=machine_learning"


def _experiment(name: str) -> str:
    return tracking.configure(name)


def test_parent_names_say_their_kind():
    assert tracking.parent_run_name(tracking.ABLATION, "smoke") == "grid: smoke"
    assert tracking.parent_run_name(tracking.STUDY, "smoke") == "study: smoke"
    assert tracking.parent_run_name(tracking.KFOLD, "kernel3") == "kfold: kernel3"
    assert tracking.parent_run_name(tracking.KFOLD_GROUP, "paper_ablation") == "kfold group: paper_ablation"


def test_runs_table_url_lands_on_the_model_training_runs_table_with_the_headline_view():
    """MLflow 3.17 shows GenAI pages unless the URL says workflowType=machine_learning; the saved view
    (an experiment tag in the UI's envelope) chooses the headline columns."""
    experiment_id = _experiment("ui-url-test")
    url = tracking.runs_table_url(experiment_id)
    assert url == (f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?{ML_PAGES}"
                   "&viewStateShareKey=fer-ablate-headline")
    envelope = json.loads(MlflowClient().get_experiment(experiment_id).tags[HEADLINE_VIEW_TAG])
    assert isinstance(envelope["name"], str) and isinstance(envelope["createdAt"], int)
    state = json.loads(envelope["state"])
    assert state["selectedColumns"] == ["attributes.`Source`", *(f"metrics.`{m}`" for m in HEADLINE_COLUMNS)]
    assert {"best_val_accuracy", "mean_val_accuracy", "val_accuracy"} <= set(HEADLINE_COLUMNS)
    assert tracking.run_url("abc", experiment_id) == (
        f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/abc?{ML_PAGES}")


def test_the_view_is_added_to_an_older_experiment_and_a_changed_view_is_kept():
    client = MlflowClient()
    older = client.create_experiment("ui-older-test")  # made before this version, or by `mlflow run`
    assert HEADLINE_VIEW_TAG not in client.get_experiment(older).tags
    assert "viewStateShareKey" in tracking.runs_table_url(older)
    assert HEADLINE_VIEW_TAG in client.get_experiment(older).tags
    client.set_experiment_tag(older, HEADLINE_VIEW_TAG, "changed in the UI")
    tracking.runs_table_url(older)
    tracking.configure("ui-older-test")
    assert client.get_experiment(older).tags[HEADLINE_VIEW_TAG] == "changed in the UI"


def test_ui_command_and_address_follow_the_store():
    assert tracking.ui_command("sqlite:////data/mlflow.db") == "mlflow ui --backend-store-uri sqlite:////data/mlflow.db"
    assert tracking.ui_command("postgresql://me:s3cret@db:5432/mlflow") == (
        "mlflow ui --backend-store-uri 'postgresql://me:***@db:5432/mlflow'")  # no password in logs
    assert tracking.ui_command("http://tracking:5000") is None  # a tracking server serves its own UI
    from fer_ablate.tracking.ui import ui_address

    assert ui_address("https://tracking.example/") == "https://tracking.example"
    assert ui_address("sqlite:////data/mlflow.db") == "http://127.0.0.1:5000"


def test_log_runs_table_tells_where_to_look(caplog):
    experiment_id = _experiment("ui-log-test")
    parent = open_parent(experiment_id, tracking.ABLATION, "ui-log")
    end_run_by_id(parent)
    with caplog.at_level(logging.INFO, logger="fer_ablate"):
        tracking.log_runs_table(experiment_id, parent)
    text = caplog.text
    assert f"MLflow runs table: http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?{ML_PAGES}" in text
    assert f"mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}" in text
    assert f"parent run 'grid: ui-log': http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{parent}" in text


def test_parents_are_found_by_tags_and_an_old_named_parent_is_renamed():
    """Resume finds a parent by its tags: one named the old way (`smoke`) is reused and renamed; a study of
    the same name is another parent."""
    experiment_id = _experiment("ui-resume-test")
    client = MlflowClient()
    old = client.create_run(experiment_id, run_name="smoke",
                            tags={"fer_ablate_kind": tracking.ABLATION, "fer_ablate_name": "smoke"}).info.run_id
    end_run_by_id(old, "FAILED")
    assert open_parent(experiment_id, tracking.ABLATION, "smoke") == old
    assert client.get_run(old).info.run_name == "grid: smoke"
    study = open_parent(experiment_id, tracking.STUDY, "smoke")
    assert study != old and client.get_run(study).info.run_name == "study: smoke"
    end_run_by_id(old)
    end_run_by_id(study)
    assert open_parent(experiment_id, tracking.ABLATION, "smoke") == old  # and again, under its new name
    end_run_by_id(old)


def test_source_of_an_mlflow_run_run_names_the_entry_point():
    """MLflow names a PROJECT run's source after the project folder (a clone in p/ reads "p" in the UI)."""
    made_by_mlflow_run = {"mlflow.source.type": "PROJECT", "mlflow.source.name": "file:///home/me/p",
                          "mlflow.project.entryPoint": "ablate"}
    fixed = tracking.project_source_tags(made_by_mlflow_run)
    assert fixed["mlflow.source.name"] == "fer-ablate"  # the UI adds ":ablate"
    assert fixed["project_uri"] == "file:///home/me/p" and fixed["command"]
    main = tracking.project_source_tags({**made_by_mlflow_run, "mlflow.project.entryPoint": "main"})
    assert main["mlflow.source.name"] == "fer-ablate:main"  # the UI adds nothing for main
    remote = {**made_by_mlflow_run, "mlflow.source.name": "https://github.com/me/fer-ablate"}
    assert "mlflow.source.name" not in tracking.project_source_tags(remote)  # the UI links a git URL
    assert tracking.project_source_tags({"mlflow.source.type": "LOCAL"}) == {}


def test_the_launchers_run_becomes_a_parent_named_by_kind(monkeypatch):
    """Under `mlflow run -e ablate` the launcher's run (random name, folder as Source) is the grid's parent."""
    experiment_id = _experiment("ui-launcher-test")
    client = MlflowClient()
    launcher = client.create_run(experiment_id, tags={
        "mlflow.source.type": "PROJECT", "mlflow.source.name": "file:///tmp/p",
        "mlflow.project.entryPoint": "ablate"}).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher)
    assert open_parent(experiment_id, tracking.ABLATION, "smoke") == launcher
    run = client.get_run(launcher)
    assert run.info.run_name == "grid: smoke"
    assert run.data.tags["mlflow.source.name"] == "fer-ablate" and run.data.tags["mlflow.source.type"] == "PROJECT"
    assert run.data.tags["project_uri"] == "file:///tmp/p"
    end_run_by_id(launcher)


# --- the printed URL in a real `mlflow ui`, opened by headless Chromium -------------------------------------

TINY_GRID = """name: uitiny
description: Two tiny runs for the MLflow UI check.
base: paper
design: one_at_a_time
seeds: [1]
data: synthetic
factors:
  kernel: [kernel3, kernel5]
fixed:
  model.base_filters: 4
  model.dense_units: [16, 8, 8]
  data.synthetic_samples: 300
  train.epochs: 1
  train.verbose: 0
"""


def _chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def _rendered(browser: str, url: str, profile) -> str:
    """The page's DOM after its scripts ran (Chromium's own --dump-dom: no driver package needed), as text."""
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                           "--window-size=1600,900", "--virtual-time-budget=20000", "--dump-dom", url],
                          capture_output=True, text=True, timeout=120)
    return re.sub(r"<[^>]+>", " ", proc.stdout)


def _wait_healthy(url: str, proc: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, "mlflow ui exited"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"mlflow ui did not answer at {url} within {seconds} s")


@pytest.mark.slow
def test_printed_url_opens_the_runs_table_with_the_parents_headline_metrics(tmp_path):
    """`fer-ablate ablate` prints the runs table's URL and the `mlflow ui` command; started as printed (on a
    free port), the UI shows the runs table (not the GenAI overview) with the parent and its best and mean
    validation accuracy as columns, and the parent's page under Runs."""
    browser = _chromium()
    if browser is None:
        pytest.skip("Chromium not installed (Debian: apt-get install chromium)")
    (tmp_path / "uitiny.yaml").write_text(TINY_GRID)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "FER_ABLATE_CACHE": str(tmp_path / "cache"), "FER_ABLATE_REPORTS": str(tmp_path / "reports")}
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    grid = subprocess.run([sys.executable, "-m", "fer_ablate.cli", "ablate", "--experiment",
                           str(tmp_path / "uitiny.yaml"), "--no-report"],
                          capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert grid.returncode == 0, grid.stderr[-3000:]
    table_url = re.search(r"MLflow runs table: (\S+)", grid.stderr).group(1)
    command = re.search(r"in another terminal: (mlflow ui [^)]+)\)", grid.stderr).group(1)
    parent_url = re.search(r"parent run 'grid: uitiny': (\S+)", grid.stderr).group(1)
    assert table_url.startswith("http://127.0.0.1:5000/#/experiments/") and ML_PAGES in table_url

    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", *shlex.split(command), "--host", "127.0.0.1", "--port", str(port)],
                          cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        address = f"http://127.0.0.1:{port}"
        _wait_healthy(address, ui)
        parent_id = parent_url.split("/runs/")[1].split("?")[0]
        best = MlflowClient(env["MLFLOW_TRACKING_URI"]).get_run(parent_id).data.metrics["best_val_accuracy"]
        page = _rendered(browser, table_url.replace("http://127.0.0.1:5000", address), tmp_path / "profile1")
        for text in ("grid: uitiny", "best_val_accuracy", "mean_val_accuracy", "fer-ablate ablate --experiment",
                     "fer-ablate: headline metrics", str(best)[:6]):
            assert text in page, f"{text!r} not in the runs table page"
        assert "Detect Issues" not in page  # GenAI's overview is not where the URL lands
        run_page = _rendered(browser, parent_url.replace("http://127.0.0.1:5000", address), tmp_path / "profile2")
        assert "grid: uitiny" in run_page and "best_val_accuracy" in run_page and "Evaluations" not in run_page
    finally:
        os.killpg(ui.pid, signal.SIGTERM)  # mlflow ui and the server processes it started
        ui.wait(timeout=30)
