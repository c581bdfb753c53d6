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

import mlflow
from mlflow.tracking import MlflowClient

from fer_ablate.config.names import safe_name
from fer_ablate.errors import EXIT_UNAVAILABLE, FerAblateError
from fer_ablate.paths import artifact_root, default_tracking_uri, project_root

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
    """Fail fast, before any training, when the tracking server does not answer (raises TrackingError)."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
                if response.status >= 400:
                    raise TrackingError(f"MLflow tracking server {uri} answered HTTP {response.status}")
        except (urllib.error.URLError, OSError) as exc:
            raise TrackingError(
                f"MLflow tracking server {uri} is unreachable ({exc}); start it or set MLFLOW_TRACKING_URI"
            ) from exc
    elif uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).parent
        if not folder.is_dir():
            raise TrackingError(f"tracking store {uri}: folder {folder} does not exist")


def use_store(tracking_uri: str | None = None) -> str:
    """Point MLflow at the store (checked first) without choosing an experiment; return the URI."""
    uri = tracking_uri or default_tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    return uri


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
    children, a worker) is used as is. Raises TrackingError when the store cannot be used.
    """
    uri = use_store(tracking_uri)
    if experiment_id:
        return experiment_id
    launched = launcher_experiment_id()
    if launched:
        tag_experiment(launched)
        return launched
    name = experiment_name(experiment)
    try:
        found = mlflow.get_experiment_by_name(name)
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
        raise TrackingError(f"tracking store {uri}: {exc}") from exc


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
    args = sys.argv[1:]
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
    if uri.startswith(("https://", "http://", "git@", "git+")):
        return {"command": source_tags()["command"]}
    entry = tags.get("mlflow.project.entryPoint", "main")
    shown = PROJECT_NAME if entry != "main" else f"{PROJECT_NAME}:main"  # the UI adds other entries itself
    return {"mlflow.source.name": shown, "project_uri": uri[:5000], "command": source_tags()["command"]}
