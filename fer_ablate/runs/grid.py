"""Run a whole experiment as one resumable grid: a parent MLflow run, one child run per (variant, seed).

Resume: children that already FINISHED with the same key (label, seed, config hash and the digest of the
data they trained on, ``auto`` resolved) under any earlier parent of the same experiment are skipped;
failed, killed or missing ones run again, and so does everything after the data changed.
``--workers N`` runs children in N separate processes (the job runner: spawned, one per run). With
``storage`` (PostgreSQL) several machines share the grid through an Optuna work queue, each run taken once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fer_ablate import tracking
from fer_ablate.config.experiment_file import RunSpec, expand, load_experiment_file
from fer_ablate.config.settings import config_hash, to_yaml
from fer_ablate.data.loading import data_identity
from fer_ablate.runs.jobs import JobResult, Progress, run_jobs
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


def child_key(spec: RunSpec, data_digest: str) -> str:
    """Identity of a run across invocations and machines: label, seed, config hash and data digest."""
    return f"{spec.label}|{spec.seed}|{spec.config_hash}|{data_digest}"


def keyed_runs(runs: list[RunSpec]) -> list[tuple[str, RunSpec]]:
    """``(child_key, spec)`` for every run; each distinct data section is identified once (``auto``
    resolved, content digest). Raises DataError for a data source that does not exist, before any run."""
    digests: dict[str, str] = {}
    keyed = []
    for spec in runs:
        section = config_hash({"data": spec.config["data"]})
        if section not in digests:
            digests[section] = data_identity(spec.config["data"])[1]
        keyed.append((child_key(spec, digests[section]), spec))
    return keyed


def describe(runs: list[RunSpec]) -> str:
    """The expanded run list (``--dry-run``): index, run name, config hash and factor levels."""
    lines = [f"{'#':>3}  {'run':<36} {'config':<12}  levels"]
    for i, spec in enumerate(runs, 1):
        levels = ", ".join(f"{k}={v}" for k, v in spec.levels.items())
        lines.append(f"{i:>3}  {spec.run_name:<36} {spec.config_hash:<12}  {levels}")
    return "\n".join(lines)


def _run_child(spec: RunSpec, key: str, ctx: tracking.RunContext, name: str) -> ChildOutcome:
    """Train one child run (in this process or a worker process); never raises for training errors."""
    tags = tracking.child_tags(KIND, name, {"run_label": spec.label, "seed": spec.seed, "child_key": key,
                                            **{f"level.{k}": v for k, v in spec.levels.items()}})
    return train_child(spec.config, spec.run_name, tags, ctx)


def _children_with_key(ctx: tracking.RunContext, name: str, key: str) -> list:
    return [c for c in tracking.child_runs(ctx.experiment_id, KIND, name) if c.data.tags.get("child_key") == key]


def pending_runs(keyed: list[tuple[str, RunSpec]], ctx: tracking.RunContext, name: str, own_stale: bool
                 ) -> tuple[list[tuple[str, RunSpec]], int]:
    """Runs without a FINISHED child of the same key; stale RUNNING children are ended KILLED when
    ``own_stale`` (single-host grids: a RUNNING child there is a leftover of a killed grid)."""
    children = tracking.child_runs(ctx.experiment_id, KIND, name)
    finished = {c.data.tags.get("child_key") for c in children if c.info.status == "FINISHED"}
    if own_stale:
        tracking.end_stale_runs(children, "left RUNNING by a killed grid; rerun on resume")
    todo = [(key, spec) for key, spec in keyed if key not in finished]
    return todo, len(keyed) - len(todo)


@dataclass(frozen=True)
class GridRequest:
    """What ``fer-ablate ablate`` asks for: an experiment file's grid, run locally or shared.

    ``experiment_file`` is a name under experiments/ or a path to a YAML file; ``overrides`` are ``--set``
    dotted keys applied to every run; ``workers`` is the number of local processes; ``storage`` (a
    PostgreSQL URL), when given, shares the grid with other machines through an Optuna work queue.
    """

    experiment_file: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    workers: int = 1
    storage: str | None = None


def run_experiment(request: GridRequest, tracking_uri: str | None = None) -> GridOutcome:
    """Run (or resume) every pending run of an experiment file under one parent run.

    ``tracking_uri`` (default: the project's store) is opened once into the run context every run uses.
    Every run's config and data source are resolved and checked first: a bad ``--set`` key or value
    (ConfigError), a missing data path (DataError) or an unusable storage (StorageError) fails before
    anything is recorded. The parent ends FINISHED, FAILED when a run failed, KILLED on Ctrl-C / SIGTERM.
    """
    extra, workers, storage = dict(request.overrides), request.workers, request.storage
    exp = load_experiment_file(request.experiment_file)
    keyed = keyed_runs(expand(exp, extra))
    if storage:  # an invalid URL or unreachable database fails here, before any run starts
        from fer_ablate.runs.shared_queue import open_rdb_storage

        open_rdb_storage(storage)
    ctx = tracking.open_context(tracking_uri=tracking_uri)  # the store's one rule picks the MLflow experiment
    plan = {"name": exp.name, "description": exp.description, "design": exp.design, "base": exp.base,
            "seeds": exp.seeds, "overrides": extra or {},
            "runs": [{"label": r.label, "seed": r.seed, "key": key, "levels": r.levels} for key, r in keyed]}
    runs = [spec for _, spec in keyed]
    with tracking.parent_run(ctx, KIND, exp.name, {"design": exp.design, "base": exp.base},
                             own_children=storage is None) as parent:
        ctx = ctx.under(parent.run_id)
        tracking.log_parent_summary(parent.run_id, {"runs_total": len(runs)}, texts={
            "experiment.yaml": exp.path.read_text(), "roles.yaml": to_yaml(exp.roles()),
            "run_list.txt": describe(runs), "run_list.json": json.dumps(plan, indent=1)})
        todo, skipped = pending_runs(keyed, ctx, exp.name, own_stale=storage is None)
        log.info("experiment %s: %d runs, %d already finished, %d to run (parent run %s)",
                 exp.name, len(runs), skipped, len(todo), parent.run_id)
        if storage:
            finished, failed = _run_shared(storage, exp.name, todo, ctx)
        else:
            finished, failed = _run_local(todo, ctx, exp.name, workers)
        tracking.log_parent_summary(parent.run_id, {"runs_finished_now": finished, "runs_failed_now": failed,
                                                    "runs_skipped": skipped})
        if failed:
            parent.fail(f"{failed} run(s) failed; rerun to retry them")
    tracking.log_runs_table(ctx.experiment_id, parent.run_id)
    return GridOutcome(parent.run_id, len(runs), skipped, finished, failed)


def _run_shared(storage: str, name: str, todo: list[tuple[str, RunSpec]], ctx: tracking.RunContext
                ) -> tuple[int, int]:
    from fer_ablate.runs.shared_queue import run_shared_grid

    def end_orphans(live: set[str]) -> None:
        tracking.end_stale_runs([c for c in tracking.child_runs(ctx.experiment_id, KIND, name)
                                 if c.data.tags.get("child_key") not in live],
                                "its worker died; the run was re-queued")

    def run_one(key: str, spec: RunSpec) -> ChildOutcome:
        return _run_child(spec, key, ctx, name)

    return run_shared_grid(storage, name, dict(todo), run_one, end_orphans)


def _run_local(todo: list[tuple[str, RunSpec]], ctx: tracking.RunContext, name: str, workers: int
               ) -> tuple[int, int]:
    """Every pending run through the job runner; a worker that dies loses only its own run."""
    progress = Progress(len(todo))
    counts = {"finished": 0, "failed": 0}

    def done(result: JobResult) -> None:
        key, spec = todo[result.index]
        outcome = result.value if result.ok else ChildOutcome("", False, result.error or "failed")
        if not result.ok:  # its process died: its run may be left RUNNING
            tracking.end_stale_runs(_children_with_key(ctx, name, key), f"its worker died: {result.error}")
        counts["finished" if outcome.ok else "failed"] += 1
        log.info(progress.line(spec.run_name, outcome.ok, outcome.detail))

    run_jobs(_run_child, [(spec, key, ctx, name) for key, spec in todo], workers, ctx, done)
    return counts["finished"], counts["failed"]
