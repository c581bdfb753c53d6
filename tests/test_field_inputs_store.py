"""Inputs from the field around the stores (issue 21, part 7), each a kind with other spellings: an MLflow
experiment deleted in the UI, `mlflow run` started from the user's own folder (relative data and model
paths, a relative SQLite store), an Optuna journal that cannot be written, a password with an unencoded '@'.
Each ends in one line that says what to do, never in a traceback, and records nothing."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from conftest import PROJECT, TINY, shrink
from mlflow.tracking import MlflowClient

from fer_ablate.cli import main

TINY_SET = [item for key, value in TINY.items() for item in ("--set", f"{key}={value}")]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("fer-ablate: error: "), err[-5:]
    assert "Traceback" not in "\n".join(err), "\n".join(err)
    return err[-1]


def _smoke_file(tmp_path: Path, folder: str, name: str) -> str:
    path = tmp_path / f"{name}.yaml"
    text = shrink((PROJECT / folder / "smoke.yaml").read_text()).replace("name: smoke", f"name: {name}")
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("command", ["train", "train --experiment-name", "tune", "ablate", "kfold"])
def test_a_deleted_mlflow_experiment_is_one_line_with_the_restore_command(command, tmp_path, capsys, monkeypatch):
    name = f"deleted {command.split()[0]} {len(command)}"
    client = MlflowClient()
    experiment_id = client.create_experiment(name)
    client.delete_experiment(experiment_id)
    if "--experiment-name" in command:
        argv = ["train", "--experiment-name", name, *TINY_SET]
    else:
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", name)
        argv = {"train": ["train", *TINY_SET],
                "tune": ["tune", "--space", _smoke_file(tmp_path, "search_spaces", "deleted_tune"),
                         "--storage", f"sqlite:///{tmp_path / 'optuna.db'}"],
                "ablate": ["ablate", "--experiment", _smoke_file(tmp_path, "experiments", "deleted_grid")],
                "kfold": ["kfold", "--variant", "paper", "--folds", "2", *TINY_SET]}[command]
    assert main(argv) == 3
    line = _error_line(capsys)
    assert f"'{name}' (id {experiment_id}) is deleted" in line
    restore = re.search(r"`(MLFLOW_TRACKING_URI=\S+ mlflow experiments restore --experiment-id \d+)`", line)
    assert restore and "MLFLOW_EXPERIMENT_NAME" in line
    assert client.search_runs([experiment_id], run_view_type=3) == []  # nothing recorded in the trash
    if command == "train":  # the command given restores it, as written (MLflow's own CLI, in this process)
        from click.testing import CliRunner
        from mlflow.cli import cli

        assignment, program, *args = shlex.split(restore.group(1))
        variable, uri = assignment.split("=", 1)
        assert program == "mlflow" and uri == os.environ[variable]
        assert CliRunner().invoke(cli, args, env={variable: uri}).exit_code == 0
        assert client.get_experiment(experiment_id).lifecycle_stage == "active"


@pytest.mark.parametrize("argv", [
    ["train", "--data", "no/such/fer2013.csv"],
    ["train", "--set", "data.source=missing_faces/"],
    ["evaluate", "--model", "missing/model.keras", "--data", "synthetic"],
    ["tune", "--space", "spaces/missing.yaml"],
    ["ablate", "--experiment", "missing_experiment.yaml"],
])
def test_a_relative_path_not_found_names_the_absolute_path_tried(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    line = _error_line(capsys)
    relative = next(a.split("=", 1)[-1] for a in argv if "/" in a or a.endswith(".yaml"))
    assert str(tmp_path / relative) in line and "not found" in line


def test_a_relative_sqlite_store_is_made_absolute(tmp_path, monkeypatch):
    """`--tracking-uri sqlite:///mlflow.db`: the file, its artifacts folder and the MLflow experiment sit in the
    working directory (it used to end in "relative path can't be expressed as a file URI")."""
    from fer_ablate import tracking

    monkeypatch.chdir(tmp_path)
    try:
        ctx = tracking.open_context(tracking_uri="sqlite:///mlflow.db")
        assert ctx.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}" and (tmp_path / "mlflow.db").is_file()
        location = MlflowClient().get_experiment(ctx.experiment_id).artifact_location
        assert location.startswith((tmp_path / "mlruns").as_uri())
    finally:
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])


def _env(**extra) -> dict[str, str]:
    return {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"], **extra}


@pytest.mark.slow  # ~60 s: two real `mlflow run`s from a folder of the user's
def test_mlflow_run_from_the_users_folder_finds_their_files_and_store(tmp_path, fer_csv):
    """`cd ~/work && mlflow run PROJECT -P data=fer2013.csv` with `MLFLOW_TRACKING_URI=sqlite:///mlflow.db`:
    the data file and the store are the ones in the user's folder, not the project's."""
    users = tmp_path / "users_folder"
    users.mkdir()
    shutil.copy(fer_csv, users / "faces.csv")
    env = _env(MLFLOW_TRACKING_URI="sqlite:///mlflow.db")
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    overrides = "model.base_filters=4 model.dense_units=[16, 8, 8] train.verbose=0"
    done = subprocess.run([sys.executable, "-m", "mlflow", "run", str(PROJECT), "--env-manager", "local",
                           "-P", "data=faces.csv", "-P", "epochs=1", "-P", f"overrides={overrides}"],
                          cwd=users, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{users / 'mlflow.db'}")
    [run] = client.search_runs(["0"])
    assert run.info.status == "FINISHED" and run.data.params["data.source"] == str(users / "faces.csv")
    assert run.info.artifact_uri.removeprefix("file://").startswith(str(users / "mlruns"))

    missing = subprocess.run([sys.executable, "-m", "mlflow", "run", str(PROJECT), "-e", "evaluate", "--env-manager",
                              "local", "-P", "model=models/missing.keras", "-P", "data=faces.csv"],
                             cwd=users, env=env, capture_output=True, text=True, timeout=600)
    assert missing.returncode != 0
    [line] = [x for x in missing.stderr.splitlines() if x.startswith("fer-ablate: error:")]
    assert str(users / "models" / "missing.keras") in line and str(PROJECT / "models" / "missing.keras") in line


def _read_only_runner(folder: Path) -> list[str] | None:
    """A command prefix under which ``folder`` cannot be written, by a real mechanism: a read-only bind mount
    in a private mount namespace (root, which chmod does not stop), or chmod 0o555 for another user."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return []
    if shutil.which("unshare") is None:
        return None
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind -o ro '{folder}' '{folder}' && "
                            f"! touch '{folder}/.probe' 2>/dev/null"], capture_output=True)
    if probe.returncode != 0:
        return None
    return ["unshare", "-m", "sh", "-c", f"mount --bind -o ro '{folder}' '{folder}' && exec \"$@\"", "sh"]


def test_a_journal_that_cannot_be_written_is_refused_before_any_trial(tmp_path):
    """An existing journal file (a study already in it) on a read-only mount: refused in one line naming the file,
    before any trial or MLflow run, where Optuna's lock file used to end in a traceback at the first trial."""
    import optuna

    folder = tmp_path / "shared"
    folder.mkdir()
    journal = folder / "journal.log"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    optuna.create_study(study_name="ro_journal", storage=storage)
    runner = _read_only_runner(folder)
    if runner is None:
        pytest.skip("running as root without mount namespaces (unshare): no real way to make a folder read-only")
    try:
        done = subprocess.run([*runner, sys.executable, "-m", "fer_ablate.cli", "tune", "--space",
                               _smoke_file(tmp_path, "search_spaces", "ro_journal"), "--storage", f"journal:{journal}"],
                              env=_env(), capture_output=True, text=True, timeout=300)
    finally:
        folder.chmod(0o755)
    assert done.returncode == 3, done.stderr[-3000:]
    [line] = [x for x in done.stderr.splitlines() if x.startswith("fer-ablate: error:")]
    assert f"journal file {journal} cannot be written" in line and "Traceback" not in done.stderr
    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    assert not client.search_runs(ids, "tags.fer_ablate_name = 'ro_journal'")


@pytest.mark.parametrize("argv", [["train", *TINY_SET], ["train", "--tracking-uri", "{url}", *TINY_SET]])
def test_an_unencoded_at_in_the_tracking_stores_password_is_named(argv, capsys, monkeypatch):
    url = "postgresql://fer:Tr@ck1ng@127.0.0.1:9/mlflow"
    if "{url}" in argv:
        argv = [url if a == "{url}" else a for a in argv]
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    assert main(argv) == 3
    line = _error_line(capsys)
    assert "contains '@'" in line and "%40" in line and "ck1ng" not in line and "Tr@" not in line
