"""Share one grid between machines through an Optuna study on an RDB (PostgreSQL): each run taken once.

Optuna's queue is the coordination engine: ``enqueue_trial`` puts one WAITING trial per pending run, and
``study.ask()`` pops a WAITING trial atomically (a row lock in the database), so two machines never get
the same run. Rounds make resume safe: round ``r`` is a study named ``ablation:<name>:r<r>``; the machine
that manages to create the next round's study (study names are unique, so exactly one does) enqueues
the runs still pending and marks the round ready; the others join it.

Only Optuna's public API: each run is taken and run by ``study.optimize(..., n_trials=1)``, which pops the
next enqueued trial and keeps its heartbeat. A trial whose worker died goes stale; ``fail_stale_trials``
(called by every live worker before each run, and while it waits for the last runs of the round) marks
it FAIL, and Optuna's RetryHeartbeatStaleTrialCallback puts the run back in the queue of the same round,
so a live worker reruns it at once instead of at the next invocation.

Timing: a worker beats every ``FER_ABLATE_HEARTBEAT_SECONDS`` (default 10) and a trial silent for
``FER_ABLATE_HEARTBEAT_GRACE_SECONDS`` (default 30) is stale; ``tune``'s database storages use the same two.
Both are read and checked when the storage is opened (a bad value is a StorageError naming the variable);
every machine of one grid should use the same values (a grace shorter than a slow beat fails live runs).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from fer_ablate.config.experiment_file import RunSpec
from fer_ablate.errors import EXIT_UNAVAILABLE, FerAblateError

if TYPE_CHECKING:
    from fer_ablate.runs.single import ChildOutcome

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 10  # how often a worker proves it is alive
GRACE_SECONDS = 30  # after this much silence a RUNNING trial is stale (its worker died)
HEARTBEAT_ENV = "FER_ABLATE_HEARTBEAT_SECONDS"  # overrides HEARTBEAT_SECONDS (tests use a short beat)
GRACE_ENV = "FER_ABLATE_HEARTBEAT_GRACE_SECONDS"  # overrides GRACE_SECONDS


class StorageError(FerAblateError, RuntimeError):
    """The Optuna storage URL is invalid, the database does not answer, or a heartbeat setting is bad."""

    exit_code = EXIT_UNAVAILABLE


def _seconds_from_env(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) <= 0:
        raise StorageError(f"{name}={text!r} is not a whole number of seconds above 0")
    return int(text)


def open_rdb_storage(url: str, heartbeat: int | None = None, grace: int | None = None,
                     on_stale: Callable | None = None) -> RDBStorage:
    """An RDB storage with heartbeats; fails with a clear message before any training.

    ``heartbeat`` and ``grace`` (seconds) default to ``FER_ABLATE_HEARTBEAT_SECONDS`` and
    ``FER_ABLATE_HEARTBEAT_GRACE_SECONDS`` when set, else to HEARTBEAT_SECONDS and GRACE_SECONDS.
    ``on_stale(study, trial)`` runs for a trial whose worker died; the default re-queues it.
    Raises StorageError for a bad URL, an unreachable database, or a bad or inconsistent timing
    (the grace must exceed the beat, or live runs would be failed and taken twice).
    """
    heartbeat = heartbeat if heartbeat is not None else _seconds_from_env(HEARTBEAT_ENV, HEARTBEAT_SECONDS)
    grace = grace if grace is not None else _seconds_from_env(GRACE_ENV, GRACE_SECONDS)
    if grace <= heartbeat:
        raise StorageError(f"heartbeat grace {grace} s must exceed the heartbeat interval {heartbeat} s "
                           f"({GRACE_ENV}, {HEARTBEAT_ENV})")
    if "://" not in url:
        raise StorageError(f"storage '{url}' is not a database URL (e.g. postgresql://user@host/db)")
    try:
        with warnings.catch_warnings():  # heartbeats are 'experimental' in Optuna 5, and what we need
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, heartbeat_interval=heartbeat, grace_period=grace,
                              heartbeat_stale_trial_callback=on_stale or RetryHeartbeatStaleTrialCallback(max_retry=3))
    except Exception as exc:  # SQLAlchemy and drivers raise many kinds; all mean "cannot use this database"
        raise StorageError(f"storage {url} cannot be used: {type(exc).__name__}: {exc}".splitlines()[0]) from exc


def _fail_stale(study: optuna.Study, storage: RDBStorage) -> None:
    """Fail the trials whose worker died (their runs go back in the queue).

    Optuna's stale check only sees trials that beat at least once. A worker killed between popping a trial
    and its first beat leaves one RUNNING for ever, and the round would wait on it for ever. ``take`` marks
    its trial ``taken`` with the trial's number (a retry inherits the attributes) once it has beaten, so a
    RUNNING trial still unmarked a grace period after it started is failed here (``study.tell``: only one
    worker's tell succeeds) and re-queued like a stale one.
    """
    with warnings.catch_warnings():  # 'experimental' in Optuna 5; it would warn on every call in the logs
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    grace = storage.grace_period or 2 * (storage.get_heartbeat_interval() or HEARTBEAT_SECONDS)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started, taken = trial.datetime_start, trial.user_attrs.get("taken") == trial.number
        if taken or started is None or (datetime.now() - started).total_seconds() <= grace:
            continue
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError):  # another worker failed it first, or its worker just finished it
            continue
        log.warning("run %s: its worker died before its first heartbeat; re-queued", trial.user_attrs.get("run_key"))
        on_stale = storage.get_heartbeat_stale_trial_callback()
        if on_stale is not None:
            on_stale(study, next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number))


def _rounds(storage: RDBStorage, grid: str) -> list[int]:
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    return sorted(int(n.rsplit(":r", 1)[1]) for n in names if n.startswith(grid + ":r"))


def _busy_keys(study: optuna.Study) -> set[str]:
    """Runs queued, running or completed in a round (not to be queued again)."""
    states = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)
    return {t.user_attrs.get("run_key") for t in study.get_trials(deepcopy=False, states=states)}


def _open_round(storage: RDBStorage, grid: str, todo: dict[str, RunSpec]) -> optuna.Study | None:
    """Join the current round if it still has queued runs, else create the next one with what is pending."""
    rounds = _rounds(storage, grid)
    if rounds:
        study = optuna.load_study(study_name=f"{grid}:r{rounds[-1]}", storage=storage)
        _fail_stale(study, storage)  # dead workers' trials -> FAIL -> re-queued
        _wait_ready(study)
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return study
        busy = _busy_keys(study) | live_keys(storage, grid)  # a long run of an older round may still train
        todo = {key: spec for key, spec in todo.items() if key not in busy}
    if not todo:
        return None
    name = f"{grid}:r{(rounds[-1] + 1) if rounds else 0}"
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:  # another machine created it first: join
        study = optuna.load_study(study_name=name, storage=storage)
        _wait_ready(study)
        return study
    for key in todo:
        study.enqueue_trial({}, user_attrs={"run_key": key, "queued": True})
    study.set_user_attr("ready", True)
    log.info("work queue %s: queued %d runs", name, len(todo))
    return study


def _wait_ready(study: optuna.Study, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not study.user_attrs.get("ready") and time.monotonic() < deadline:
        time.sleep(0.5)


def live_keys(storage: RDBStorage, grid: str) -> set[str]:
    """Runs whose worker is alive right now, in any round (RUNNING trials once stale ones are failed)."""
    keys: set[str] = set()
    for r in _rounds(storage, grid):
        study = optuna.load_study(study_name=f"{grid}:r{r}", storage=storage)
        _fail_stale(study, storage)
        keys |= {t.user_attrs.get("run_key") for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    return keys


class RunFailed(Exception):
    """A run of the shared grid failed (recorded FAIL in the queue; its MLflow run is FAILED)."""


def run_shared_grid(storage_url: str, name: str, todo: dict[str, RunSpec],
                    run_one: Callable[[str, RunSpec], ChildOutcome],
                    on_round: Callable[[set[str]], None] = lambda live: None) -> tuple[int, int]:
    """Take runs (``{run key: spec}``) from the shared queue until the round is done; return (finished,
    failed) by this machine.

    ``on_round`` receives the keys being run by live workers (stale trials failed) before each run this
    machine takes, so the caller can end MLflow runs orphaned by dead workers (re-queued runs included).
    """
    from fer_ablate.runs.jobs import Progress

    storage = open_rdb_storage(storage_url)
    grid = f"ablation:{name}"
    study = _open_round(storage, grid, todo)
    if study is None:
        return 0, 0
    progress = Progress(len(todo))
    counts = {"finished": 0, "failed": 0}

    def take(trial: optuna.Trial) -> float:
        key = trial.user_attrs.get("run_key")
        if not trial.user_attrs.get("queued"):
            # The queue emptied between our look and our ask: this trial has no run; close it.
            trial.set_user_attr("idle", True)
            raise optuna.TrialPruned("no queued run")
        if key not in todo:  # finished in MLflow as seen from here: nothing to run
            trial.set_user_attr("skipped", "already finished")
            raise optuna.TrialPruned("already finished")
        on_round(live_keys(storage, grid) - {key})
        # Our heartbeat thread started before this function and has beaten by now (on_round took a few
        # queries): from here on a death is seen by Optuna's stale check (see _fail_stale).
        trial.set_user_attr("taken", trial.number)
        outcome = run_one(key, todo[key])
        trial.set_user_attr("mlflow_run_id", outcome.run_id)
        counts["finished" if outcome.ok else "failed"] += 1
        log.info(progress.line(todo[key].run_name, outcome.ok, outcome.detail))
        if not outcome.ok:
            trial.set_user_attr("error", outcome.detail[:1000])
            raise RunFailed(outcome.detail)
        return outcome.value if outcome.value is not None else float("nan")

    while True:
        _fail_stale(study, storage)  # a dead worker's run goes back in the queue now
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            study.optimize(take, n_trials=1, catch=(RunFailed,))
        elif study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            # Others still run: stay one beat, in case one dies and its run comes back to the queue.
            time.sleep(storage.get_heartbeat_interval() or HEARTBEAT_SECONDS)
        else:
            return counts["finished"], counts["failed"]
