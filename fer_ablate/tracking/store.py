"""The tracking store: its URI (checked before any work), the MLflow experiment runs go to, the git commit.

One rule chooses the MLflow experiment, for every command (``train``, ``ablate``, ``kfold``, ``tune``,
``report``...), so reports know where to look:

1. the experiment whose id is in MLflow's ``MLFLOW_EXPERIMENT_ID``: inside ``mlflow run``, the launcher's
   (``mlflow run --experiment-name NAME``, which has already created the run), or one you set;
2. else the experiment named by ``--experiment-name`` (``fer-ablate train`` only) or by MLflow's own
   ``MLFLOW_EXPERIMENT_NAME`` environment variable;
3. else ``fer-ablate``.

Grids, k-fold groups and studies are told apart by run tags (``fer_ablate_kind``, ``fer_ablate_name``),
not by experiments. Words: an *experiment file* is a YAML file in ``experiments/`` (what a grid runs); an
*MLflow experiment* is the folder of runs in the tracking store.

Every experiment the project touches carries a saved view of the runs table (``HEADLINE_VIEW``); where the
UI is and how to start it is ``tracking.ui``'s.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from fer_ablate.config.names import safe_name
from fer_ablate.errors import EXIT_UNAVAILABLE, FerAblateError
from fer_ablate.paths import artifact_root, default_tracking_uri, project_root
from fer_ablate.redact import has_secret, redact_text, redact_url, remember, secrets_of, url_problem

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per artifact floods logs
log = logging.getLogger(__name__)
DEFAULT_EXPERIMENT = "fer-ablate"  # the MLflow experiment of rule 3
# Older MLflow 3 UIs open an untagged experiment on the GenAI overview ("Traces 0"); this value (MLflow's
# ExperimentKind enum) makes them open on the runs table. MLflow 3.17 ignores it and follows the URL's
# workflowType (else the browser's last choice, GenAI at first): see ui.runs_table_url.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
HEADLINE_METRIC = "val_accuracy"  # what a parent summarises from its children (best_ / mean_ prefix)
PROJECT_NAME = "fer-ablate"  # the MLproject's name: the Source of an `mlflow run` run reads fer-ablate:<entry>
# MLflow 3.17's runs table shows only Source, Models and Dataset of a run's ~200 columns (every config key is
# a param) until columns are chosen by hand. A saved view (experiment tag mlflow.sharedViewState.<id>: the
# UI's "Views" menu, opened by ?viewStateShareKey=<id>) chooses the headline numbers: parents' best_ and
# mean_ of their children's validation accuracy, each run's own validation and test accuracy.
HEADLINE_VIEW = "fer-ablate-headline"
HEADLINE_VIEW_TAG = f"mlflow.sharedViewState.{HEADLINE_VIEW}"
HEADLINE_COLUMNS = (f"best_{HEADLINE_METRIC}", f"mean_{HEADLINE_METRIC}", HEADLINE_METRIC, "test_accuracy")


class TrackingError(FerAblateError, RuntimeError):
    """The MLflow tracking store cannot be used (unreachable server, bad URI), or a run is not in it."""

    exit_code = EXIT_UNAVAILABLE


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any training, when the tracking server does not answer, a SQLite store's folder is
    missing or a database URL's password holds an unencoded '@' (raises TrackingError). Messages show the
    URI without its password (``fer_ablate.redact``)."""
    shown = redact_url(uri)
    problem = url_problem(uri)
    if problem:
        raise TrackingError(f"tracking store: {problem}")
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
                if response.status >= 400:
                    raise TrackingError(f"MLflow tracking server {shown} answered HTTP {response.status}")
        except (urllib.error.URLError, OSError) as exc:
            raise TrackingError(redact_text(
                f"MLflow tracking server {shown} is unreachable ({exc}); start it or set MLFLOW_TRACKING_URI"
            )) from exc
    elif uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).parent
        if not folder.is_dir():
            raise TrackingError(f"tracking store {shown}: folder {folder.absolute()} does not exist")


def launcher_folder() -> Path | None:
    """The folder ``mlflow run`` was started from, when this process is an ``mlflow run`` entry point; else None.

    ``mlflow run`` runs the entry point's command in the project's folder (``bash -c`` with ``cwd`` the
    project), so the user's own folder, where their relative ``-P data=...`` paths and relative
    ``sqlite:///mlflow.db`` store are, is the launcher's working directory: found by walking up this
    process's parents to the ``mlflow run`` process (Linux ``/proc``; None elsewhere or when not found).
    """
    if not os.environ.get("MLFLOW_RUN_ID"):
        return None
    pid = os.getppid()
    for _ in range(8):  # launcher -> bash -c (often exec'd away) -> python: a few levels at most
        if pid <= 1:
            return None
        try:
            args = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
            if any(Path(a).name == "mlflow" and nxt == "run" for a, nxt in zip(args, args[1:], strict=False)):
                return Path(os.readlink(f"/proc/{pid}/cwd"))
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
    return None


def absolute_store_uri(uri: str) -> str:
    """A SQLite store URI with a relative path (``sqlite:///mlflow.db``) made absolute; others unchanged.

    Relative to the folder ``mlflow run`` was started from (``launcher_folder``: the launcher already
    created its run in that file) else to the working directory, so that worker processes, the artifact
    folder beside the file (``paths.artifact_root``) and the default Optuna storage all find the same file.
    """
    if not uri.startswith("sqlite:///"):
        return uri
    path = uri[len("sqlite:///"):]
    if not path or path.startswith(("/", ":memory:", "file:")):
        return uri
    return f"sqlite:///{(launcher_folder() or Path.cwd()) / path}"


def use_store(tracking_uri: str | None = None) -> str:
    """Point MLflow at the store (checked first; a relative SQLite path made absolute) without choosing an
    experiment; return the URI."""
    uri = absolute_store_uri(tracking_uri or default_tracking_uri())
    remember(*secrets_of(uri))  # hidden from every later message of this process
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    return uri


def launcher_run_params() -> dict[str, str]:
    """The params of the run ``mlflow run`` made for this process (its MLproject parameters, which MLflow
    records before the entry point starts); {} outside ``mlflow run`` or when the run cannot be read."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return {}
    try:
        return dict(MlflowClient().get_run(run_id).data.params)
    except mlflow.exceptions.MlflowException:
        return {}


def tracking_uri() -> str:
    """The store this process writes to (after ``use_store``), for worker processes to write to the same."""
    return mlflow.get_tracking_uri()


def experiment_name(explicit: str | None = None) -> str:
    """Rules 2 and 3 of the module docstring: ``explicit``, else ``$MLFLOW_EXPERIMENT_NAME``, else fer-ablate.

    The name is checked by ``config.names.safe_name`` (ConfigError naming it and the problem): it becomes
    the experiment's artifact folder under ``mlruns/`` and a value in MLflow searches.
    """
    if explicit:
        return safe_name(explicit, "MLflow experiment (--experiment-name)")
    if os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        return safe_name(os.environ["MLFLOW_EXPERIMENT_NAME"], "MLflow experiment ($MLFLOW_EXPERIMENT_NAME)")
    return DEFAULT_EXPERIMENT


def launcher_experiment_id() -> str | None:
    """Rule 1: ``$MLFLOW_EXPERIMENT_ID`` (the experiment of the ``mlflow run`` that started this process).

    Not tied to ``MLFLOW_RUN_ID``: MLflow's ``end_run`` removes that one from the environment once the
    first run of the process ends, and a report written after the grid must still look where it wrote.
    """
    return os.environ.get("MLFLOW_EXPERIMENT_ID") or None


def configure(experiment: str | None = None, tracking_uri: str | None = None,
              experiment_id: str | None = None) -> str:
    """Point MLflow at the store (default: the project's SQLite file) and return the MLflow experiment id.

    The experiment follows the module's rule (``experiment`` is ``train --experiment-name``); it is created
    when missing, tagged so MLflow's UI opens it on the runs table. A known ``experiment_id`` (a grid's
    children, a worker) is used as is. Raises TrackingError when the store cannot be used or the experiment
    was deleted in the UI (``check_active``: one line with the command that restores it).
    """
    uri = use_store(tracking_uri)
    if experiment_id:
        return experiment_id
    launched = launcher_experiment_id()
    name = experiment_name(experiment) if not launched else None
    try:
        if launched:
            found = MlflowClient().get_experiment(launched)
            check_active(found, uri)
            tag_experiment(launched, found.tags)
            return launched
        found = mlflow.get_experiment_by_name(name)
        if found is not None:
            check_active(found, uri)
        if found is None:
            root = artifact_root(uri)
            artifacts = f"{root}/{name}" if root else None
            try:
                created = mlflow.create_experiment(name, artifact_location=artifacts, tags=_experiment_tags())
                return created
            except mlflow.exceptions.MlflowException:
                # Another machine or worker created it a moment ago (a shared store): use theirs.
                found = mlflow.get_experiment_by_name(name)
                if found is None:
                    raise
        tag_experiment(found.experiment_id, found.tags)
        return found.experiment_id
    except mlflow.exceptions.MlflowException as exc:
        raise TrackingError(redact_text(f"tracking store {uri}: {exc}")) from exc


def check_active(experiment: Any, uri: str) -> None:
    """Refuse an MLflow experiment deleted in the UI (its runs cannot be created: MLflow's "must be in the
    'active' state") with one line giving the command that restores it. Raises TrackingError."""
    if experiment.lifecycle_stage == "active":
        return
    number = experiment.experiment_id
    store = shlex.quote(redact_url(uri))
    raise TrackingError(
        f"MLflow experiment '{experiment.name}' (id {number}) is deleted (in the UI's trash): restore it with "
        f"`MLFLOW_TRACKING_URI={store} mlflow experiments restore --experiment-id {number}`, or use another "
        f"MLflow experiment (MLFLOW_EXPERIMENT_NAME=NAME; train: --experiment-name NAME); its name stays taken "
        f"until `mlflow gc --experiment-ids {number}` deletes it for good")


def tag_experiment(experiment_id: str, tags: dict[str, str] | None = None) -> None:
    """Give an experiment made elsewhere (``mlflow run``, an older version) the model-development kind and
    the headline view; a view the user changed in the UI ("Override saved view") is kept."""
    if tags is None:
        tags = MlflowClient().get_experiment(experiment_id).tags
    for key, value in _experiment_tags().items():
        if key not in tags:
            MlflowClient().set_experiment_tag(experiment_id, key, value)


def _experiment_tags() -> dict[str, str]:
    return {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, HEADLINE_VIEW_TAG: headline_view()}


def headline_view() -> str:
    """The saved view's tag value, in MLflow 3.17's envelope (name, times in ms, the state as JSON text).

    Column ids are the UI's (``metrics.`name```); widths make the names and four digits readable.
    """
    columns = ["attributes.`Source`", *(f"metrics.`{name}`" for name in HEADLINE_COLUMNS)]
    widths = {column: 150 for column in columns} | {columns[0]: 260}
    state = {"selectedColumns": columns, "columnOrder": columns, "columnWidths": widths}
    now = int(time.time() * 1000)
    return json.dumps({"name": f"{PROJECT_NAME}: headline metrics", "createdAt": now, "updatedAt": now,
                       "state": json.dumps(state)})


def git_commit() -> str | None:
    """The project's current git commit (with ``-dirty`` if there are local changes), or None."""
    try:
        root = project_root()
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def source_tags() -> dict[str, str]:
    """MLflow's Source column for a run this process creates, and the full command line as ``command``.

    ``MlflowClient.create_run`` (parents, children) does not fill the Source as ``mlflow.start_run`` does.
    The UI shows a LOCAL source after its last ``/``, so paths in the command are cut to their file names
    there (``fer-ablate ablate --experiment smoke.yaml``); ``command`` keeps them whole.
    """
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    program = script.name
    if program == "cli.py" and script.parent.name == "fer_ablate":  # python -m fer_ablate.cli (MLproject)
        program = "fer-ablate"
    elif program == "__main__.py":
        program = f"python -m {script.parent.name}"
    args = [redact_text(a) for a in sys.argv[1:]]  # `--storage postgresql://fer:***@host/db`: no password
    shown = " ".join([program, *(shlex.quote(re.sub(r"[^=\s]*/", "", a)) for a in args)])  # folders cut
    command = " ".join([program, *map(shlex.quote, args)])
    return {"mlflow.source.name": shown[:500], "mlflow.source.type": "LOCAL", "command": command[:5000]}


def project_source_tags(tags: dict[str, str]) -> dict[str, str]:
    """Source tags that replace MLflow's on a run made by ``mlflow run`` (source type PROJECT); else {}.

    MLflow names such a run's source after the project's folder (``file:///home/me/p``) and its UI shows
    the last path segment without extension, plus ``:entry`` for entry points other than main: a clone in
    ``p/`` reads "p". With these it reads ``fer-ablate:<entry point>`` (main included); the folder URI moves to
    ``project_uri`` and the command the entry point ran to ``command``. A remote project URI (a git URL,
    which the UI links to) is kept.
    """
    if tags.get("mlflow.source.type") != "PROJECT":
        return {}
    uri = tags.get("mlflow.source.name", "")
    # A git URL with a token in it (https://user:TOKEN@host/repo) is recorded by MLflow itself: overwritten.
    hidden = {key: redact_url(tags[key]) for key in ("mlflow.source.name", "mlflow.source.git.repoURL",
                                                     "mlflow.gitRepoURL") if has_secret(tags.get(key, ""))}
    if uri.startswith(("https://", "http://", "git@", "git+")):
        return {"command": source_tags()["command"], **hidden}
    entry = tags.get("mlflow.project.entryPoint", "main")
    shown = PROJECT_NAME if entry != "main" else f"{PROJECT_NAME}:main"  # the UI adds other entries itself
    return {"mlflow.source.name": shown, "project_uri": redact_url(uri)[:5000], "command": source_tags()["command"]}
