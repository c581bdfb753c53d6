"""Run a whole experiment as one resumable grid: a parent MLflow run, one child run per (variant, seed).

Resume: children that already FINISHED with the same key (label, seed, config hash and the digest of the
data they trained on, ``auto`` resolved) under any earlier parent of the same experiment are skipped;
failed, killed or missing ones run again, and so does everything after the data changed.
``--workers N`` runs children in N separate processes (the job runner: spawned, one per run). With
``storage`` (PostgreSQL) several machines share the grid through an Optuna work queue, each run taken once,
and ``--workers N`` runs N workers on that queue.

One launcher per grid per store on a host: a second launcher without ``storage`` is refused in one line
while the first lives (``jobs.launcher_lock``); with ``storage`` it joins the queue as more workers. A
resume never ends a RUNNING child whose worker (tag ``worker``) is still alive on this host: it waits for
it (a worker of a dead launcher got SIGTERM and ends its run KILLED) or refuses. The parent of a shared
grid is ended by the machine that ends last, with a status computed from every run of the grid.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fer_ablate import tracking
from fer_ablate.config.experiment_file import RunSpec, expand, load_experiment_file
from fer_ablate.config.settings import config_hash, flatten, to_yaml
from fer_ablate.data.loading import data_identity
from fer_ablate.runs.jobs import (
    STOP_GRACE_SECONDS,
    JobResult,
    LauncherBusy,
    Progress,
    launcher_lock,
    process_alive,
    process_identity,
    run_jobs,
)
from fer_ablate.runs.single import ChildOutcome, resumable, train_child

log = logging.getLogger(__name__)
KIND = "ablation"
# A worker whose launcher died got SIGTERM: it ends its run KILLED within seconds, or the job runner's
# STOP_GRACE_SECONDS pass; a resume waits that long (plus 15 s of MLflow calls) before refusing.
WORKER_EXIT_SECONDS = STOP_GRACE_SECONDS + 15


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
    """Train one child run (in this process or a worker process), or continue its KILLED attempt from that
    attempt's checkpoint (``single.resumable``); never raises for training errors."""
    tags = tracking.child_tags(KIND, name, {"run_label": spec.label, "seed": spec.seed, "child_key": key,
                                            "worker": process_identity(),  # lets a resume see it alive
                                            **{f"level.{k}": v for k, v in spec.levels.items()}})
    earlier = _children_with_key(ctx, name, key)
    return train_child(spec.config, spec.run_name, tags, ctx, resume_run_id=resumable(earlier))


def _children_with_key(ctx: tracking.RunContext, name: str, key: str) -> list:
    return tracking.child_runs(ctx.experiment_id, KIND, name, {"child_key": key})


def pending_runs(keyed: list[tuple[str, RunSpec]], ctx: tracking.RunContext, name: str, own_stale: bool
                 ) -> tuple[list[tuple[str, RunSpec]], int]:
    """Runs without a FINISHED child of the same key; stale RUNNING children are ended KILLED when
    ``own_stale`` (single-host grids: a RUNNING child there is a leftover of a killed grid), once the
    workers still alive on this host have ended theirs (``wait_for_live_workers``)."""
    if own_stale:
        wait_for_live_workers(ctx, name)
    children = tracking.child_runs(ctx.experiment_id, KIND, name)
    finished = {c.data.tags.get("child_key") for c in children if c.info.status == "FINISHED"}
    if own_stale:
        tracking.end_stale_runs(children, "left RUNNING by a killed grid; rerun on resume")
    todo = [(key, spec) for key, spec in keyed if key not in finished]
    return todo, len(keyed) - len(todo)


def wait_for_live_workers(ctx: tracking.RunContext, name: str, timeout: float | None = None) -> None:
    """Wait until no RUNNING child of grid ``name`` has a worker process alive on this host.

    Called with the launcher lock held, so such a worker belongs to a launcher that died: it got SIGTERM
    (``jobs.die_with_launcher``) and ends its run KILLED itself. Ending its run here, while it still runs,
    would let it overwrite whatever comes next. Raises LauncherBusy naming the pid when one is still alive
    after ``timeout`` seconds (default WORKER_EXIT_SECONDS). Workers on other hosts cannot be seen.
    """
    workers = {c.data.tags.get("worker", "") for c in tracking.child_runs(ctx.experiment_id, KIND, name)
               if c.info.status == "RUNNING"} - {process_identity()}  # this process trains none of them now
    live = {w for w in workers if process_alive(w)}
    if live:
        log.info("waiting for %d worker process(es) of an earlier launcher to end their runs (%s)", len(live),
                 ", ".join(sorted(live)))
    deadline = time.monotonic() + (WORKER_EXIT_SECONDS if timeout is None else timeout)
    while live and time.monotonic() < deadline:
        time.sleep(0.5)
        live = {w for w in live if process_alive(w)}
    if live:
        pids = ", ".join(w.rsplit(":", 2)[1] for w in sorted(live))
        raise LauncherBusy(f"grid {name}: runs are still being trained on this host by process(es) {pids}, not "
                           "started by a live launcher of this grid; stop them (kill PID) or let them end, then rerun")


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
    (ConfigError), a missing data path (DataError), an unusable storage (StorageError), a shared round in
    progress with other runs (RoundMismatch) or a live launcher of the same grid (LauncherBusy) fails before
    anything is recorded. The parent ends FINISHED, FAILED when a run failed, KILLED on Ctrl-C / SIGTERM;
    a shared grid's parent is ended by the last machine (``_settle_shared``).
    """
    extra, workers, storage = dict(request.overrides), request.workers, request.storage
    exp = load_experiment_file(request.experiment_file)
    keyed = keyed_runs(expand(exp, extra))
    if storage:  # an invalid URL, an unreachable database or other runs fail here, before any run starts
        from fer_ablate.runs.shared_queue import check_round

        check_round(storage, exp.name, {key: _identity(spec, key) for key, spec in keyed})
    ctx = tracking.open_context(tracking_uri=tracking_uri)  # the store's one rule picks the MLflow experiment
    plan = {"name": exp.name, "description": exp.description, "design": exp.design, "base": exp.base,
            "seeds": exp.seeds, "overrides": extra or {},
            "runs": [{"label": r.label, "seed": r.seed, "key": key, "levels": r.levels} for key, r in keyed]}
    runs = [spec for _, spec in keyed]
    # One launcher per grid and store on this host: a second is refused (LauncherBusy) before it touches the
    # parent or a child; launchers sharing the grid through `storage` may be several (a shared lock).
    with launcher_lock(_lock_scope(ctx, exp.name), f"grid {exp.name}", shared=bool(storage)), \
            tracking.parent_run(ctx, KIND, exp.name, {"design": exp.design, "base": exp.base},
                                own_children=storage is None) as parent:
        ctx = ctx.under(parent.run_id)
        tracking.log_parent_summary(parent.run_id, {"runs_total": len(runs)}, texts={
            "experiment.yaml": exp.path.read_text(), "roles.yaml": to_yaml(exp.roles()),
            "run_list.txt": describe(runs), "run_list.json": json.dumps(plan, indent=1)})
        todo, skipped = pending_runs(keyed, ctx, exp.name, own_stale=storage is None)
        log.info("experiment %s: %d runs, %d already finished, %d to run (parent run %s)",
                 exp.name, len(runs), skipped, len(todo), parent.run_id)
        if storage:
            finished, failed = _run_shared(storage, exp.name, keyed, todo, ctx, workers, parent)
        else:
            finished, failed = _run_local(todo, ctx, exp.name, workers)
        tracking.log_parent_summary(parent.run_id, {"runs_finished_now": finished, "runs_failed_now": failed,
                                                    "runs_skipped": skipped})
        if failed and not storage:  # a shared grid's status is computed from every run (_settle_shared)
            parent.fail(f"{failed} run(s) failed; rerun to retry them")
    tracking.log_runs_table(ctx.experiment_id, parent.run_id)
    return GridOutcome(parent.run_id, len(runs), skipped, finished, failed)


def _lock_scope(ctx: tracking.RunContext, name: str) -> str:
    """What one launcher lock covers: the store (a SQLite file by its absolute path), experiment and grid."""
    uri = ctx.tracking_uri
    if uri.startswith("sqlite:///"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return f"{uri}|{ctx.experiment_id}|{KIND}|{name}"


def _identity(spec: RunSpec, key: str) -> dict[str, str]:
    """A run as the shared queue records it, so machines that disagree can name the setting: its name, its
    resolved settings (dotted, as text; the data by digest, not by path) and its data digest."""
    settings = {k: v if isinstance(v, str) else json.dumps(v, default=str) for k, v in flatten(spec.config).items()
                if k != "data.source"}
    return {"run": spec.run_name, **settings, "data digest": key.rsplit("|", 1)[-1]}


def _end_orphans(ctx: tracking.RunContext, name: str, live: set[str]) -> None:
    """End KILLED the RUNNING children of a shared grid that no live worker trains (their worker died and
    their run was re-queued); a child whose worker is alive on this host is never touched."""
    tracking.end_stale_runs([c for c in tracking.child_runs(ctx.experiment_id, KIND, name)
                             if c.data.tags.get("child_key") not in live
                             and not process_alive(c.data.tags.get("worker", ""))],
                            "its worker died; the run was re-queued")


def _shared_worker(storage: str, name: str, round_name: str, todo: dict[str, RunSpec], ctx: tracking.RunContext
                   ) -> tuple[int, int]:
    """One worker on the grid's shared queue (in the launcher, or a job runner process): takes runs until
    the round is done; returns (finished, failed) by this worker."""
    from fer_ablate.runs.shared_queue import work_round

    def run_one(key: str, spec: RunSpec) -> ChildOutcome:
        return _run_child(spec, key, ctx, name)

    return work_round(storage, round_name, todo, run_one, lambda live: _end_orphans(ctx, name, live))


def _run_shared(storage: str, name: str, keyed: list[tuple[str, RunSpec]], todo: list[tuple[str, RunSpec]],
                ctx: tracking.RunContext, workers: int, parent: tracking.RunHandle) -> tuple[int, int]:
    """This machine's share of a grid shared through ``storage``: ``workers`` workers on its round (the
    round is opened here first, so a machine with other runs is refused once, before any worker starts);
    then the parent's status (``_settle_shared``). Returns (finished, failed) by this machine."""
    from fer_ablate.runs.shared_queue import RoundMismatch, live_runs, open_round

    finished = failed = 0
    try:
        round_name = open_round(storage, name, {key: _identity(spec, key) for key, spec in keyed}, dict(todo))
        if round_name is not None:
            jobs = [(storage, name, round_name, dict(todo), ctx)] * workers
            for result in run_jobs(_shared_worker, jobs, workers, ctx):
                if result.ok:
                    finished, failed = finished + result.value[0], failed + result.value[1]
                else:  # its run, if any, was re-queued (stale heartbeat) and trained by a live worker
                    log.warning("a worker on the shared queue ended early: %s", result.error)
    except RoundMismatch:  # a round with other runs started since check_round: the parent is theirs
        parent.leave_open("this machine's runs differ from the round in progress")
        raise
    except KeyboardInterrupt:
        live = live_runs(storage, name)  # ours are stopped by now: these train on other machines
        if live:
            parent.leave_open(f"interrupted here; {len(live)} run(s) still train on other machines, the last "
                              "machine to end computes the grid's status")
        raise
    _settle_shared(storage, name, keyed, ctx, parent)
    return finished, failed


def _settle_shared(storage: str, name: str, keyed: list[tuple[str, RunSpec]], ctx: tracking.RunContext,
                   parent: tracking.RunHandle) -> None:
    """Decide the shared parent's status when this machine's workers are done, from every run of the grid
    (never from this machine's share): left RUNNING while runs still train elsewhere (the last machine
    decides); FINISHED when every run has a FINISHED child, else FAILED naming the runs that did not finish.
    Machines ending at the same moment compute the same status from the same store."""
    from fer_ablate.runs.shared_queue import live_runs

    live = live_runs(storage, name)
    _end_orphans(ctx, name, live)
    if live:
        parent.leave_open(f"{len(live)} run(s) still train on other machines; the last machine to end "
                          "computes the grid's status")
        return
    children = tracking.child_runs(ctx.experiment_id, KIND, name)
    finished = {c.data.tags.get("child_key") for c in children if c.info.status == "FINISHED"}
    missing = [spec.run_name for key, spec in keyed if key not in finished]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        parent.fail(f"{len(missing)} of {len(keyed)} run(s) of the shared grid did not finish ({shown}); "
                    "rerun to retry them")


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
