"""Run a whole experiment as one resumable grid: a parent MLflow run, one child run per (variant, seed).

Resume: children that already FINISHED with the same config hash (under any earlier parent of the same
experiment) are skipped; failed, killed or missing ones run again. ``--workers N`` runs children in N
separate processes (spawned, one per run, so memory does not grow across runs). With ``storage``
(PostgreSQL) several machines share the grid through an Optuna work queue, each run taken once.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from fer_ablate import tracking
from fer_ablate.config.experiment_file import Experiment, RunSpec, expand, load_experiment
from fer_ablate.config.settings import to_yaml
from fer_ablate.runs.jobs import Progress, run_jobs
from fer_ablate.runs.single import ChildOutcome, train_child

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
    tags = tracking.child_tags(KIND, name, {"run_label": spec.label, "seed": spec.seed, "child_key": child_key(spec),
                                            **{f"level.{k}": v for k, v in spec.levels.items()}})
    return train_child(spec.config, spec.run_name, tags, parent_run_id, experiment_id)


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
        from fer_ablate.runs.shared_queue import open_rdb_storage

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
            from fer_ablate.runs.shared_queue import run_shared_grid

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
    jobs = [(spec, experiment_id, parent, exp.name) for spec in todo]
    for i, outcome, died in run_jobs(_run_child, jobs, workers):
        if died is not None:
            outcome = ChildOutcome("", False, f"worker died: {died}")
        finished, failed = finished + outcome.ok, failed + (not outcome.ok)
        log.info(progress.line(todo[i].run_name, outcome.ok, outcome.detail))
    return finished, failed
