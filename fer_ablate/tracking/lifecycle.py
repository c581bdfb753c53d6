"""One run lifecycle for every driver (train, ablate, kfold, tune, promote): how runs start and how they end.

A run ends in a true state whatever happens inside it:
- FINISHED when the block completes (or FAILED when the block said ``handle.fail(...)``, e.g. a child failed);
- FAILED with an ``error`` tag on any exception;
- KILLED on ``KeyboardInterrupt``, which is also what SIGTERM becomes (``cli.main`` and job-runner workers
  install a handler that raises it), so Ctrl-C, ``kill`` and a launcher terminating its workers all end
  runs KILLED instead of leaving them RUNNING.

``promote`` logs into finished runs without ever starting them (``MlflowClient``), so it cannot change a
run's status. ``end_stale_runs`` is the one place that ends runs left RUNNING by a killed process.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from fer_ablate.redact import redact_text
from fer_ablate.tracking.queries import parent_run_name, tag_filter
from fer_ablate.tracking.store import HEADLINE_METRIC, project_source_tags, source_tags

INTERRUPTED = "interrupted (Ctrl-C or SIGTERM); run the same command again to resume"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    """Where runs go: the tracking store (set once), the MLflow experiment, and the parent run (if any).

    Picklable, so a spawned worker process receives it and writes to the launcher's store.
    """

    tracking_uri: str
    experiment_id: str
    parent_run_id: str | None = None

    def under(self, parent_run_id: str | None) -> RunContext:
        """The same store and experiment with another parent run."""
        return replace(self, parent_run_id=parent_run_id)


def open_context(experiment: str | None = None, tracking_uri: str | None = None,
                 experiment_id: str | None = None) -> RunContext:
    """Point MLflow at the store once (checked: raises TrackingError when unusable) and choose the MLflow
    experiment (``experiment``, or the package's rule when None)."""
    from fer_ablate import tracking  # the package's store functions (looked up late: no import cycle)

    uri = tracking.use_store(tracking_uri)
    named = {"experiment": experiment} if experiment else {}
    return RunContext(uri, tracking.configure(tracking_uri=uri, experiment_id=experiment_id, **named))


def enter_context(ctx: RunContext) -> None:
    """Make ``ctx``'s store this process's store (a spawned worker calls this before any run)."""
    os.environ["MLFLOW_TRACKING_URI"] = ctx.tracking_uri
    mlflow.set_tracking_uri(ctx.tracking_uri)


@dataclass
class RunHandle:
    """A run being driven by a ``with`` block; ``fail(message)`` ends it FAILED although nothing raised."""

    run_id: str
    failure: str | None = None
    left_open: str | None = None

    def fail(self, message: str) -> None:
        """Record that the run did not do all its work (e.g. children failed); it ends FAILED with ``message``."""
        self.failure = message

    def leave_open(self, reason: str) -> None:
        """Leave the run RUNNING when the block ends, however it ends: other processes still drive it and the
        last of them ends it (a shared grid's parent while other machines train its runs)."""
        self.left_open = reason


def end_run_by_id(run_id: str, status: str = "FINISHED", error: str | None = None) -> None:
    """Terminate a run that is not active in this process (a parent, or a stale child of a killed grid).

    ``error`` becomes the ``error`` tag with every password hidden (``fer_ablate.redact``): exception texts
    of database drivers quote storage URLs."""
    client = MlflowClient()
    if error:
        client.set_tag(run_id, "error", redact_text(error)[:5000])
    client.set_terminated(run_id, status)


def end_stale_runs(runs: Iterable[Any], reason: str, status: str = "KILLED") -> int:
    """End every RUNNING run among ``runs`` (MLflow ``Run`` objects) with ``status`` and ``reason`` as its
    ``error`` tag; return how many. Only call it on runs no live process is driving."""
    count = 0
    for run in runs:
        if run.info.status == "RUNNING":
            end_run_by_id(run.info.run_id, status, reason)
            count += 1
    return count


def direct_children(parent_run_id: str) -> list[Any]:
    """Runs whose ``mlflow.parentRunId`` is ``parent_run_id`` (any status)."""
    client = MlflowClient()
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([experiment_id], tag_filter({"mlflow.parentRunId": parent_run_id}), max_results=50000)


def summarize_children(parent_run_id: str, metric: str = HEADLINE_METRIC, name: str | None = None
                       ) -> dict[str, float]:
    """``best_<name>`` and ``mean_<name>`` (``name`` defaults to ``metric``) over the FINISHED direct
    children that logged ``metric`` (empty when none did), so a parent row in the MLflow runs table shows
    its result in the headline view's columns."""
    values = [run.data.metrics[metric] for run in direct_children(parent_run_id)
              if run.info.status == "FINISHED" and metric in run.data.metrics]
    if not values:
        return {}
    name = name or metric
    return {f"best_{name}": max(values), f"mean_{name}": sum(values) / len(values),
            "children_finished": float(len(values))}


@contextlib.contextmanager
def ended_run(run_id: str, own_children: bool = False, headline: str = HEADLINE_METRIC,
              finished_on: tuple[type[BaseException], ...] = ()) -> Iterator[RunHandle]:
    """Drive a run that is not active in this process (a parent, a k-fold trial) and end it truly.

    On leaving: its children's ``headline`` numbers are logged as ``best_``/``mean_val_accuracy``
    (``summarize_children``, whatever the children's metric: the headline view's columns); with ``own_children``
    (this process launched every child: single-host grids, folds) a child still RUNNING is ended KILLED.
    Then FINISHED (or FAILED after ``handle.fail``), FAILED with an ``error`` tag on an exception, KILLED on
    KeyboardInterrupt / SIGTERM. The exception is re-raised. ``finished_on``: exceptions that still mean
    the run did its work (a pruned trial) and end it FINISHED.
    """
    handle = RunHandle(run_id)
    status, error = "FINISHED", None
    try:
        yield handle
    except KeyboardInterrupt:
        status, error = "KILLED", INTERRUPTED
        raise
    except finished_on:
        raise
    except BaseException as exc:
        status, error = "FAILED", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if status == "FINISHED" and handle.failure:
            status, error = "FAILED", handle.failure
        if handle.left_open:
            log.info("run %s left RUNNING: %s", handle.run_id, handle.left_open)
        else:
            _close(handle.run_id, status, error, own_children, headline)


def _close(run_id: str, status: str, error: str | None, own_children: bool, headline: str) -> None:
    """End a run; a second Ctrl-C during the bookkeeping must not leave it RUNNING, so it is retried once."""
    for _ in range(2):
        try:
            if own_children:
                end_stale_runs(direct_children(run_id), "its process was stopped before the run ended")
            summary = summarize_children(run_id, headline, HEADLINE_METRIC)
            client = MlflowClient()
            for key, value in summary.items():
                client.log_metric(run_id, key, value)
            end_run_by_id(run_id, status, error)
            return
        except KeyboardInterrupt:
            status, error = "KILLED", INTERRUPTED


@contextlib.contextmanager
def parent_run(ctx: RunContext, kind: str, name: str, tags: dict[str, str] | None = None,
               key_tags: dict[str, str] | None = None, use_launcher_run: bool = True,
               own_children: bool = True, headline: str = HEADLINE_METRIC) -> Iterator[RunHandle]:
    """Open (or reuse, for resume) the parent run of a grid, k-fold or study, and end it truly (``ended_run``).

    ``ctx.parent_run_id`` nests the new parent under another run (a k-fold group). ``own_children=False``
    for a parent shared by several machines (a PostgreSQL-shared grid), whose RUNNING children may be
    alive elsewhere. ``headline``: the children's metric the parent summarises as ``best_val_accuracy`` and
    ``mean_val_accuracy`` (a k-fold group: its variants' ``val_accuracy_mean``).
    """
    run_id = open_parent(ctx.experiment_id, kind, name, tags, key_tags, ctx.parent_run_id, use_launcher_run)
    with ended_run(run_id, own_children, headline) as handle:
        yield handle


@contextlib.contextmanager
def nested_run(ctx: RunContext, run_name: str, tags: dict[str, str] | None = None,
               finished_on: tuple[type[BaseException], ...] = ()) -> Iterator[RunHandle]:
    """A new run under ``ctx.parent_run_id`` that is not active in this process (its own children are: a
    k-fold trial's folds), ended truly (``ended_run``, owning its children)."""
    nest = {"mlflow.parentRunId": ctx.parent_run_id} if ctx.parent_run_id else {}
    run_tags = {**source_tags(), **(tags or {}), **nest}
    run_id = MlflowClient().create_run(ctx.experiment_id, run_name=run_name, tags=run_tags).info.run_id
    with ended_run(run_id, own_children=True, finished_on=finished_on) as handle:
        yield handle


@contextlib.contextmanager
def tracked_run(experiment_id: str, run_name: str, tags: dict[str, str] | None = None,
                parent_run_id: str | None = None, resume_run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """Start (or, under ``mlflow run``, resume) a run active in this process; end it truly.

    A child run (``parent_run_id``) is always created afresh, even inside ``mlflow run`` whose
    MLFLOW_RUN_ID would otherwise be resumed. ``resume_run_id``: an ended run (KILLED, or FAILED by its
    machine) continued in place: back to RUNNING, its last ``error`` tag removed (kept as
    ``resume.<n>.previous_error``), and ``resumes`` counts the resumes. Whatever was logged before an
    exception stays; the error message is kept as the ``error`` tag.
    """
    if resume_run_id:
        _mark_resumed(resume_run_id)
        run = mlflow.start_run(run_id=resume_run_id)
        if tags:  # e.g. the number of the study trial that continues it
            mlflow.set_tags(tags)
    elif parent_run_id:
        created = MlflowClient().create_run(
            experiment_id, run_name=run_name,
            tags={**source_tags(), **(tags or {}), "mlflow.parentRunId": parent_run_id})
        run = mlflow.start_run(run_id=created.info.run_id)
    else:
        run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags)
        project = project_source_tags(run.data.tags)  # the launcher's run of `mlflow run`
        if project:
            mlflow.set_tags(project)
    status, error = "FINISHED", None
    try:
        yield run
    except KeyboardInterrupt:
        status, error = "KILLED", INTERRUPTED
        raise
    except BaseException as exc:
        status, error = "FAILED", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        _end_active_run(run.info.run_id, status, error)


# Error tags of runs whose machine, not their training, failed: a rerun continues them from their checkpoint.
INFRASTRUCTURE_FAILURES = ("its worker died", "worker process", "worker died", "left RUNNING", "MemoryError",
                           "OSError", "ConnectionError", "TimeoutError", "its process was stopped")


def resumable_status(run: Any) -> bool:
    """True for a run a rerun may continue: KILLED (Ctrl-C, SIGTERM, a dead worker), or FAILED with an
    ``error`` tag that blames the machine (``INFRASTRUCTURE_FAILURES``), never a run that failed on its own."""
    if run.info.status == "KILLED":
        return True
    error = run.data.tags.get("error", "")
    return run.info.status == "FAILED" and error.startswith(INFRASTRUCTURE_FAILURES)


def _mark_resumed(run_id: str) -> None:
    client = MlflowClient()
    run = client.get_run(run_id)
    count = int(run.data.tags.get("resumes", "0")) + 1
    client.set_tag(run_id, "resumes", str(count))
    client.set_tag(run_id, f"resume.{count}.previous_status", run.info.status)
    if "error" in run.data.tags:
        client.set_tag(run_id, f"resume.{count}.previous_error", run.data.tags["error"][:5000])
        client.delete_tag(run_id, "error")


def metric_history(run_id: str, key: str) -> dict[int, float]:
    """Step -> value of metric ``key`` of run ``run_id`` (the last value logged at each step)."""
    return {m.step: m.value for m in sorted(MlflowClient().get_metric_history(run_id, key), key=lambda m: m.timestamp)}


def _end_active_run(run_id: str, status: str, error: str | None) -> None:
    """End this process's active run. A second signal during the bookkeeping: try once more. A store that
    fails here is logged and, when the run's own block raised, does not replace that exception; MLflow
    has popped the run from its active stack either way, so the next run of the process can start."""
    for _ in range(2):
        try:
            if error:
                MlflowClient().set_tag(run_id, "error", redact_text(error)[:5000])  # no password in a tag
            mlflow.end_run(status)
            return
        except KeyboardInterrupt:
            status, error = "KILLED", INTERRUPTED
        except Exception as exc:
            log.error("could not end run %s as %s: %s", run_id, status, exc)
            active = mlflow.active_run()
            if active is not None and active.info.run_id == run_id:  # the error tag failed: still end it
                with contextlib.suppress(Exception):
                    mlflow.end_run(status)
            if status == "FINISHED":  # the block succeeded: the failure to record that is the error
                raise
            return


def open_parent(experiment_id: str, kind: str, name: str, tags: dict[str, str] | None = None,
                key_tags: dict[str, str] | None = None, parent_run_id: str | None = None,
                use_launcher_run: bool = True) -> str:
    """The parent run of a grid or study: the launcher's run under ``mlflow run``, else the latest
    parent of the same ``kind``, ``name`` and ``key_tags`` (reused, so a re-run resumes), else a new one.

    Found by tags, never by run name: its name says its kind (``queries.parent_run_name``: ``grid: smoke``,
    ``study: smoke``) and a parent named the old way (``smoke``) is found and renamed. ``parent_run_id``
    nests a new parent under another run (a k-fold group); ``use_launcher_run=False`` keeps the launcher's
    run for the caller (which makes it the group). Prefer ``parent_run``, which also ends the run.
    """
    client = MlflowClient()
    marker = {"fer_ablate_kind": kind, "fer_ablate_name": name, **(key_tags or {})}
    run_name = parent_run_name(kind, name)
    run_id = os.environ.get("MLFLOW_RUN_ID") if use_launcher_run else None
    extra = dict(tags or {})
    if run_id:  # `mlflow run` made it, with a random name and its folder as the Source
        client.update_run(run_id, name=run_name)
        extra |= project_source_tags(client.get_run(run_id).data.tags)
    else:
        query = tag_filter(marker)  # names with ' are quoted, or a resumed grid would not find its parent
        found = client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1)
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING", name=run_name)
            if "error" in found[0].data.tags:  # the last attempt's error is not this one's
                client.delete_tag(run_id, "error")
        else:
            nest = {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}
            run_id = client.create_run(experiment_id, run_name=run_name, tags={**source_tags(), **nest}).info.run_id
    for key, value in {**marker, **extra}.items():
        client.set_tag(run_id, key, value)
    return run_id


def child_runs(experiment_id: str, kind: str, name: str, tags: dict[str, str] | None = None) -> list[Any]:
    """Every child run of every parent of ``kind``/``name`` in the experiment, newest first; ``tags`` narrow
    the search in the store (e.g. one run key: one child's attempts, not the whole grid's runs)."""
    return MlflowClient().search_runs(
        [experiment_id], tag_filter({"fer_ablate_kind": f"{kind}-child", "fer_ablate_name": name, **(tags or {})}),
        order_by=["attributes.start_time DESC"], max_results=50000)


def child_tags(kind: str, name: str, extra: dict[str, Any]) -> dict[str, str]:
    """Tags that mark a run as a child of a grid or study (for resume and reports)."""
    return {"fer_ablate_kind": f"{kind}-child", "fer_ablate_name": name, **{k: str(v) for k, v in extra.items()}}
