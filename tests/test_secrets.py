"""Secrets stay secret: a storage or tracking URL's password never reaches MLflow params, tags or artifacts,
log lines or error messages (fer_ablate.redact). Checked by grepping the whole MLflow store (the SQLite file's
bytes, every artifact) and everything printed, against a real PostgreSQL."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import optuna
import pytest
from conftest import PROJECT, _postgres_bin, shrink
from mlflow.tracking import MlflowClient

from fer_ablate.redact import (
    MASK,
    from_env,
    has_secret,
    install_logging_filter,
    redact_text,
    redact_url,
    remember,
    url_problem,
)

# Optuna's log handler binds to sys.stderr when first used: made here, at collection, not inside a capfd test
# whose stream is closed afterwards (later tests' Optuna lines would end in "Logging error" tracebacks).
optuna.logging.get_verbosity()


@pytest.mark.parametrize("url, secret, kept", [
    ("postgresql://fer:S3cretPass@db.example:5432/optuna", "S3cretPass", "postgresql://fer:***@db.example:5432/optuna"),
    ("postgresql+psycopg://fer:pa/ss#w?rd:x@db/optuna", "pa/ss#w?rd:x", "postgresql+psycopg://fer:***@db/optuna"),
    ("postgresql://fer:p@ssword@db/optuna", "p@ssword", "postgresql://fer:***@db/optuna"),
    ("postgresql://fer@azure-srv:Hunter22@db/optuna", "Hunter22", "postgresql://fer@azure-srv:***@db/optuna"),
    ("postgresql://db/optuna?user=fer&password=QueryPass1&sslmode=require", "QueryPass1",
     "postgresql://db/optuna?user=fer&password=***&sslmode=require"),
    ("postgresql://db/optuna?user=fer&PassWord=MixedCase1", "MixedCase1", "postgresql://db/optuna?user=fer&PassWord=***"),
    ("postgresql://fer@db/optuna?sslpassword=KeyPass99&sslkey=/k.pem", "KeyPass99", "sslpassword=***"),
    ("https://mlflow.example/?access_token=Tok3nValue", "Tok3nValue", "https://mlflow.example/?access_token=***"),
    ("https://user:Git7oken@github.com/org/repo.git", "Git7oken", "https://user:***@github.com/org/repo.git"),
])
def test_every_spelling_of_a_password_is_hidden(url, secret, kept):
    shown = redact_url(url)
    assert secret not in shown and kept in shown and MASK in shown
    assert has_secret(url)
    message = f"StorageError: storage {url} cannot be used: could not connect"
    assert secret not in redact_text(message) and "could not connect" in redact_text(message)


@pytest.mark.parametrize("url", ["sqlite:////tmp/store/mlflow.db", "http://127.0.0.1:5000", "journal:/tmp/j.log",
                                 "postgresql://fer@db:5432/optuna?sslmode=require", "runs:/abc/model", ""])
def test_urls_without_secrets_are_unchanged(url):
    assert redact_url(url) == url and not has_secret(url)


def test_free_text_pairs_and_remembered_secrets_are_hidden():
    text = "host=db password=LibpqPass1 user=fer; {'password': 'DictPass22'}; unknown key: model.kernal"
    shown = redact_text(text)
    assert "LibpqPass1" not in shown and "DictPass22" not in shown
    assert "unknown key: model.kernal" in shown, "prose about keys is not a secret"
    redact_url("postgresql://fer:Rem3mbered@db/optuna")  # seen once...
    assert redact_text('FATAL: role "fer" failed with "Rem3mbered"') == 'FATAL: role "fer" failed with "***"'
    remember("ab")  # too short to hide in every message
    assert redact_text("table abc") == "table abc"


@pytest.mark.parametrize("url, bad", [
    ("postgresql://fer:p@ss@127.0.0.1:5432/optuna", True),
    ("postgresql+psycopg://fer:a/b@c@db/optuna", True),
    ("mysql://fer:x@y@db/optuna", True),
    ("postgresql://fer:p%40ss@127.0.0.1:5432/optuna", False),
    ("postgresql://fer@azure-srv:pw@db/optuna", False),  # an '@' in the user name is fine for SQLAlchemy
    ("postgresql://fer:pw@db/optuna?options=a@b", False),
    ("http://fer:p@ss@mlflow:5000", False),  # urllib3 reads user-info up to the last '@'
])
def test_an_unencoded_at_in_a_database_password_is_named(url, bad):
    problem = url_problem(url)
    assert bool(problem) == bad
    if bad:
        assert "contains '@'" in problem and "%40" in problem
        assert "p@ss" not in problem and "a/b@c" not in problem and "x@y" not in problem


def test_env_indirection(monkeypatch):
    monkeypatch.setenv("FER_TEST_STORAGE", "postgresql://fer:EnvPass77@db/optuna")
    assert from_env("env:FER_TEST_STORAGE") == "postgresql://fer:EnvPass77@db/optuna"
    assert from_env("sqlite:////x.db") == "sqlite:////x.db" and from_env(None) is None
    monkeypatch.delenv("FER_TEST_STORAGE")
    with pytest.raises(LookupError, match="FER_TEST_STORAGE is not set"):
        from_env("env:FER_TEST_STORAGE")


def test_log_lines_and_their_tracebacks_are_redacted():
    stream = io.StringIO()
    logger = logging.getLogger("fer_ablate.test_secrets")
    logger.addHandler(logging.StreamHandler(stream))
    logger.propagate = False
    install_logging_filter(logger)
    logger.warning("opening %s", "postgresql://fer:LogPass42@db/optuna")
    try:
        raise RuntimeError("cannot use postgresql://db/optuna?password=TracePass42")
    except RuntimeError:
        logger.exception("failed")
    text = stream.getvalue()
    assert "LogPass42" not in text and "TracePass42" not in text and "RuntimeError" in text


def test_an_error_tag_and_the_cli_line_hide_the_password(capsys):
    """The lifecycle's error tag and the CLI's last line of defence, on a real store."""
    from fer_ablate import tracking
    from fer_ablate.cli import main

    ctx = tracking.open_context()
    run = MlflowClient().create_run(ctx.experiment_id, run_name="secret-error")
    tracking.end_run_by_id(run.info.run_id, "FAILED", "OperationalError: postgresql://fer:TagPass31@db/x failed")
    error = MlflowClient().get_run(run.info.run_id).data.tags["error"]
    assert "TagPass31" not in error and "postgresql://fer:***@db/x" in error

    # A refused connection (closed port): the one line names the storage without the password.
    capsys.readouterr()
    for url in ("postgresql://fer:ClosedPort9@127.0.0.1:9/optuna",
                "postgresql://127.0.0.1:9/optuna?user=fer&password=ClosedPort9"):
        assert main(["tune", "--space", "smoke", "--storage", url, "--n-trials", "1"]) == 3
        err = capsys.readouterr().err
        assert "ClosedPort9" not in err and err.count("\n") == 1 and "cannot be used" in err, err
    # An unencoded '@': named as such, not blamed on DNS, and not printed (not even the part after the '@').
    for args in (["tune", "--space", "smoke"], ["ablate", "--experiment", "smoke"]):
        assert main([*args, "--storage", "postgresql://fer:At@Sign77@127.0.0.1:9/optuna"]) == 3
        err = capsys.readouterr().err
        assert "contains '@'" in err and "%40" in err and "Sign77" not in err and "At@" not in err


def _space(tmp_path: Path, name: str, epochs: int = 1) -> str:
    text = shrink((PROJECT / "search_spaces" / "smoke.yaml").read_text()).replace("name: smoke", f"name: {name}")
    text = text.replace("\nepochs: 2\n", f"\nepochs: {epochs}\n")
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return str(path)


def _store_files() -> list[Path]:
    """Every file of the session's MLflow store: the SQLite file (and its journals), artifacts, reports."""
    root = Path(os.environ["MLFLOW_TRACKING_URI"][len("sqlite:///"):]).parent
    return [p for p in root.rglob("*") if p.is_file()]


def _assert_nowhere(secret: str, *texts: str) -> None:
    spellings = {secret, urllib.parse.quote(secret, safe="")}
    for text in texts:
        assert not any(s in text for s in spellings), "the password is in the output"
    for path in _store_files():
        data = path.read_bytes()
        assert not any(s.encode() in data for s in spellings), f"the password is in {path}"


def _with_password(url: str, password: str, where: str) -> str:
    if where == "user-info":
        return url.replace("postgresql://postgres@", f"postgresql://postgres:{password}@")
    host, database = url.split("@", 1)[1].split("/")
    return f"postgresql://{host}/{database}?user=postgres&password={password}"


@pytest.mark.parametrize("where", ["user-info", pytest.param("query", marks=pytest.mark.slow)])
def test_a_study_on_postgres_records_no_password(postgres, tmp_path, capfd, monkeypatch, where):
    """A real study (the server trusts any password, so the URL with one works): the whole store and the
    output are grepped for it; the parent's `storage` tag and the `command` tag show the URL masked."""
    from fer_ablate.cli import main

    password = f"Pw{where[:4]}Z9k"
    url = _with_password(postgres(f"secret_{where[:4]}"), password, where)
    name = f"secret_{where[:4]}"
    argv = ["tune", "--space", _space(tmp_path, name), "--storage", url, "--n-trials", "1"]
    monkeypatch.setattr(sys, "argv", ["fer-ablate", *argv])  # what the command tag records
    assert main(argv) == 0
    out, err = capfd.readouterr()
    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    [parent] = client.search_runs(ids, f"tags.fer_ablate_kind = 'study' and tags.fer_ablate_name = '{name}'")
    assert parent.info.status == "FINISHED" and MASK in parent.data.tags["storage"]
    assert MASK in parent.data.tags["command"] and "127.0.0.1" in parent.data.tags["command"]
    _assert_nowhere(password, out, err)


@pytest.mark.slow  # ~25 s: a real `mlflow run` of the tune entry point
def test_mlflow_run_takes_the_storage_from_the_environment(postgres, tmp_path):
    """`-P storage=env:FER_ABLATE_STORAGE`: MLflow records `env:FER_ABLATE_STORAGE` as the param, and a URL with
    a password given as the param itself is refused in one line (MLflow recorded it before our code ran)."""
    password = "MlflowRunPw5"
    url = _with_password(postgres("secret_mlflow_run"), password, "user-info")
    space = _space(tmp_path, "secret_run")
    env = {**os.environ, "FER_ABLATE_STORAGE": url,
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    # --experiment-name: the session store's Default experiment keeps its artifacts in the project's mlruns/.
    cmd = [sys.executable, "-m", "mlflow", "run", str(PROJECT), "-e", "tune", "--env-manager", "local",
           "--experiment-name", "secret-mlflow-run", "-P", f"space={space}", "-P", "n_trials=1"]
    done = subprocess.run([*cmd, "-P", "storage=env:FER_ABLATE_STORAGE"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    [parent] = client.search_runs(ids, "tags.fer_ablate_kind = 'study' and tags.fer_ablate_name = 'secret_run'")
    assert parent.data.params["storage"] == "env:FER_ABLATE_STORAGE" and MASK in parent.data.tags["storage"]
    _assert_nowhere(password, done.stdout, done.stderr)

    refused = subprocess.run([*cmd, "-P", f"storage={url}"], env=env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=600)
    assert refused.returncode != 0
    line = [x for x in refused.stderr.splitlines() if x.startswith("fer-ablate: error:")]
    assert line and "env:FER_ABLATE_STORAGE" in line[0] and password not in line[0]


@pytest.mark.slow  # ~30 s: a study whose database is dropped under it
def test_a_study_whose_database_goes_away_records_no_password(postgres, tmp_path):
    """The database is dropped (its connections terminated) once the study's parent run exists, while the two
    worker processes start: they fail opening the storage (messages that quote its URL), the parent ends FAILED
    with that in its `error` tag, and neither the tag, nor any file of the store, nor the output holds the
    password."""
    password = "GonePass88"
    plain = postgres("secret_gone")
    url = _with_password(plain, password, "user-info")
    cmd = [sys.executable, "-m", "fer_ablate.cli", "tune", "--space", _space(tmp_path, "secret_gone", epochs=50),
           "--storage", url, "--n-trials", "2", "--workers", "2"]
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    client = MlflowClient()
    query = "tags.fer_ablate_kind = 'study' and tags.fer_ablate_name = 'secret_gone'"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if client.search_runs([e.experiment_id for e in client.search_experiments()], query):
            break
        time.sleep(0.2)
    host, port = plain.split("@")[1].split("/")[0].split(":")
    subprocess.run([str(_postgres_bin() / "dropdb"), "--force", "-h", host, "-p", port, "-U", "postgres",
                    "secret_gone"], check=True, capture_output=True)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    [parent] = client.search_runs([e.experiment_id for e in client.search_experiments()], query)
    assert parent.info.status == "FAILED" and parent.data.tags.get("error")
    _assert_nowhere(password, out, err)
