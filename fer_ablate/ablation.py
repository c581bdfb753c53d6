"""Run a whole experiment as one resumable grid: a parent MLflow run, one child run per (variant, seed).

Resume: children that already FINISHED with the same config hash (under any earlier parent of the same
experiment) are skipped; failed, killed or missing ones run again. ``--workers N`` runs children in N
separate processes (spawned, one per run, so memory does not grow across runs). With ``storage``
(PostgreSQL) several machines share the grid through an Optuna work queue, each run taken once.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from . import tracking
from .config import to_yaml
from .experiment_spec import Experiment, RunSpec, expand, load_experiment

log = logging.getLogger(__name__)
KIND = "ablation"


@dataclass
class GridOutcome:
    """What one invocation did: runs skipped (already finished), run, and failed."""

    parent_run_id: str
    total: int
    skipped: int
    finished: int
    failed: int


@dataclass
class ChildOutcome:
    """How one child run ended: its MLflow run id, success, a short detail line and its val_accuracy."""

    run_id: str
    ok: bool
    detail: str
    value: float | None = None


def child_key(spec: RunSpec) -> str:
    """Identity of a run across invocations and machines: label, seed and config hash."""
    return f"{spec.label}|{spec.seed}|{spec.config_hash}"


def describe(runs: list[RunSpec]) -> str:
    """The expanded run list (``--dry-run``): index, run name, config hash and factor levels."""
    lines = [f"{'#':>3}  {'run':<36} {'config':<12}  levels"]
    for i, spec in enumerate(runs, 1):
        levels = ", ".join(f"{k}={v}" for k, v in spec.levels.items())
        lines.append(f"{i:>3}  {spec.run_name:<36} {spec.config_hash:<12}  {levels}")
    return "\n".join(lines)


def _run_child(spec: RunSpec, experiment_id: str, parent_run_id: str, name: str) -> ChildOutcome:
    """Train one child run (in this process or a worker process); never raises for training errors."""
    import keras

    from .train_run import train_and_track

    tags = tracking.child_tags(KIND, name, {"run_label": spec.label, "seed": spec.seed, "child_key": child_key(spec),
                                            **{f"level.{k}": v for k, v in spec.levels.items()}})
    try:
        run_id, metrics = train_and_track(spec.config, run_name=spec.run_name, tags=tags,
                                          parent_run_id=parent_run_id, experiment_id=experiment_id)
        value = metrics.get("val_accuracy")
        return ChildOutcome(run_id, True, f"val_accuracy {value:.4f}", value)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # the run is recorded FAILED with this message; the grid goes on
        log.exception("run %s failed", spec.run_name)
        return ChildOutcome("", False, f"{type(exc).__name__}: {exc}")
    finally:
        keras.utils.clear_session()


def _worker_entry(spec: RunSpec, experiment_id: str, parent_run_id: str, name: str, tracking_uri: str):
    """Entry point of a spawned worker process."""
    import os

    from .cli import configure_logging

    configure_logging()
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    os.environ.pop("MLFLOW_RUN_ID", None)  # the launcher's run is the parent, never this child
    return _run_child(spec, experiment_id, parent_run_id, name)


class Progress:
    """One line per run: i of N, elapsed, estimated remaining."""

    def __init__(self, total: int):
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def line(self, spec: RunSpec, ok: bool, detail: str) -> str:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        remaining = elapsed / self.done * (self.total - self.done)
        state = "finished" if ok else "FAILED"
        return (f"[{self.done}/{self.total}] {spec.run_name} {state} ({detail}); elapsed {elapsed / 60:.1f} min, "
                f"about {remaining / 60:.1f} min to go")


def pending_runs(runs: list[RunSpec], experiment_id: str, name: str, own_stale: bool) -> tuple[list[RunSpec], int]:
    """Runs without a FINISHED child of the same key; stale RUNNING children are ended KILLED when
    ``own_stale`` (single-host grids: a RUNNING child there is a leftover of a killed grid)."""
    children = tracking.child_runs(experiment_id, KIND, name)
    finished = {c.data.tags.get("child_key") for c in children if c.info.status == "FINISHED"}
    if own_stale:
        for c in children:
            if c.info.status == "RUNNING":
                tracking.end_run_by_id(c.info.run_id, "KILLED", "left RUNNING by a killed grid; rerun on resume")
    todo = [spec for spec in runs if child_key(spec) not in finished]
    return todo, len(runs) - len(todo)


def run_experiment(
    name_or_path: str,
    extra: dict[str, Any] | None = None,
    workers: int = 1,
    storage: str | None = None,
    tracking_uri: str | None = None,
) -> GridOutcome:
    """Run (or resume) every pending run of an experiment under one parent run."""
    exp = load_experiment(name_or_path)
    runs = expand(exp, extra)
    if storage:  # an invalid URL or unreachable database fails here, before any run starts
        from .work_queue import open_rdb_storage

        open_rdb_storage(storage)
    experiment_id = tracking.configure(exp.name, tracking_uri)
    parent = tracking.open_parent(experiment_id, KIND, exp.name, {"design": exp.design, "base": exp.base})
    plan = {"name": exp.name, "description": exp.description, "design": exp.design, "base": exp.base,
            "seeds": exp.seeds, "overrides": extra or {},
            "runs": [{"label": r.label, "seed": r.seed, "key": child_key(r), "levels": r.levels} for r in runs]}
    tracking.log_parent_summary(parent, {"runs_total": len(runs)}, texts={
        "experiment.yaml": exp.path.read_text(), "roles.yaml": to_yaml(exp.roles()),
        "run_list.txt": describe(runs), "run_list.json": json.dumps(plan, indent=1)})
    todo, skipped = pending_runs(runs, experiment_id, exp.name, own_stale=storage is None)
    log.info("experiment %s: %d runs, %d already finished, %d to run (parent run %s)",
             exp.name, len(runs), skipped, len(todo), parent)
    finished = failed = 0
    try:
        if storage:
            from .work_queue import run_shared_grid

            def end_orphans(live: set[str]) -> None:
                for child in tracking.child_runs(experiment_id, KIND, exp.name):
                    if child.info.status == "RUNNING" and child.data.tags.get("child_key") not in live:
                        tracking.end_run_by_id(child.info.run_id, "KILLED", "its worker died; the run was re-queued")

            def run_one(spec: RunSpec) -> ChildOutcome:
                return _run_child(spec, experiment_id, parent, exp.name)

            finished, failed = run_shared_grid(storage, exp, todo, run_one, child_key, end_orphans)
        else:
            finished, failed = _run_local(exp, todo, experiment_id, parent, workers)
    except KeyboardInterrupt:
        tracking.end_run_by_id(parent, "KILLED", "interrupted; run the same command again to resume")
        raise
    status = "FINISHED" if failed == 0 else "FAILED"
    tracking.log_parent_summary(parent, {"runs_finished_now": finished, "runs_failed_now": failed,
                                         "runs_skipped": skipped})
    tracking.end_run_by_id(parent, status, None if not failed else f"{failed} run(s) failed; rerun to retry them")
    return GridOutcome(parent, len(runs), skipped, finished, failed)


def _run_local(exp: Experiment, todo: list[RunSpec], experiment_id: str, parent: str, workers: int
               ) -> tuple[int, int]:
    progress = Progress(len(todo))
    finished = failed = 0
    if workers <= 1:
        for spec in todo:
            outcome = _run_child(spec, experiment_id, parent, exp.name)
            finished, failed = finished + outcome.ok, failed + (not outcome.ok)
            log.info(progress.line(spec, outcome.ok, outcome.detail))
        return finished, failed
    context = multiprocessing.get_context("spawn")  # TensorFlow does not survive fork
    uri = tracking.mlflow.get_tracking_uri()
    with ProcessPoolExecutor(workers, mp_context=context, max_tasks_per_child=1) as pool:
        futures = {pool.submit(_worker_entry, spec, experiment_id, parent, exp.name, uri): spec for spec in todo}
        for future in as_completed(futures):
            spec = futures[future]
            try:
                outcome = future.result()
            except Exception as exc:  # the worker process itself died
                outcome = ChildOutcome("", False, f"worker died: {exc}")
            finished, failed = finished + outcome.ok, failed + (not outcome.ok)
            log.info(progress.line(spec, outcome.ok, outcome.detail))
    return finished, failed
