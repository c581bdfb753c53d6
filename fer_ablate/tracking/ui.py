"""Where to look at tracked runs: the MLflow UI's addresses of an experiment's runs table and of a run, and
the command that starts the UI on the store in use. Every command that makes runs ends with ``log_runs_table``.
"""

from __future__ import annotations

import logging
import shlex
import urllib.parse

import mlflow
from mlflow.exceptions import MlflowException

from fer_ablate.redact import redact_url
from fer_ablate.tracking.queries import get_run, project_experiment_ids
from fer_ablate.tracking.store import HEADLINE_VIEW, tag_experiment

UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` listens without --host / --port
# MLflow 3.17's UI shows an experiment's GenAI pages (overview, run pages under "Evaluations") unless the
# URL asks for the model-training pages; read from its JS bundle and checked in headless Chromium.
ML_PAGES = "workflowType=machine_learning"
log = logging.getLogger(__name__)


def ui_address(uri: str) -> str:
    """Where MLflow's UI for the store ``uri`` is: a tracking server serves it itself; for a database or
    folder store it is what ``ui_command`` starts."""
    if not uri.startswith(("http://", "https://")):
        return UI_ADDRESS
    parts = urllib.parse.urlsplit(redact_url(uri))  # a browser address: user-info (a password) left out
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl().rstrip("/")


def ui_command(uri: str) -> str | None:
    """The command that starts MLflow's UI on the store ``uri`` (None for a tracking server, which serves
    its UI already). A password in the URI is shown as ``***`` (``fer_ablate.redact``, which also reads a
    password holding '/' or '#', and ``?password=``): the line goes to terminals and CI logs."""
    if uri.startswith(("http://", "https://")):
        return None
    return f"mlflow ui --backend-store-uri {shlex.quote(redact_url(uri))}"


def runs_table_url(experiment_id: str | None = None) -> str:
    """The MLflow UI's address of an experiment's runs table (default: the project's, by the store's rule),
    showing the headline view (``store.HEADLINE_VIEW``: parents' best and mean validation accuracy, each
    run's own; the view is added to the experiment here if missing). The UI's address is the tracking
    server's, else where ``mlflow ui`` listens by default (``ui_command`` starts it)."""
    address = ui_address(mlflow.get_tracking_uri())
    if experiment_id is None:
        ids = project_experiment_ids()
        if not ids:  # nothing tracked yet: the list of experiments
            return f"{address}/#/experiments"
        experiment_id = ids[0]
    query = ML_PAGES
    try:
        tag_experiment(experiment_id)
        query += f"&viewStateShareKey={HEADLINE_VIEW}"
    except MlflowException as exc:  # a store we may not write: the plain runs table, every column chosen by hand
        log.debug("no headline view on experiment %s: %s", experiment_id, exc)
    return f"{address}/#/experiments/{experiment_id}/runs?{query}"


def run_url(run_id: str, experiment_id: str) -> str:
    """The MLflow UI's address of one run's page (its model-training page, not GenAI's "Evaluations")."""
    return f"{ui_address(mlflow.get_tracking_uri())}/#/experiments/{experiment_id}/runs/{run_id}?{ML_PAGES}"


def log_runs_table(experiment_id: str | None = None, parent_run_id: str | None = None) -> None:
    """Tell the user where to look: the runs table's address, the command that starts the UI on this store
    (none for a tracking server) and, given ``parent_run_id``, that parent's page. Log lines of the
    ``fer_ablate`` logger reach the terminal of every command."""
    url = runs_table_url(experiment_id)
    command = ui_command(mlflow.get_tracking_uri())
    lines = [f"MLflow runs table: {url}"]
    if command:
        lines.append(f"  (start the UI first, in another terminal: {command})")
    if parent_run_id:
        run = get_run(parent_run_id)
        lines.append(f"  parent run '{run.info.run_name}': {run_url(parent_run_id, run.info.experiment_id)}")
    log.info("\n".join(lines))
