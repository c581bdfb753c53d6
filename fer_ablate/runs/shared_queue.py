"""Share one grid between machines through an Optuna study on an RDB (PostgreSQL): each run taken once.

Optuna's queue is the coordination engine: ``enqueue_trial`` puts one WAITING trial per pending run, and
``study.ask()`` pops a WAITING trial atomically (a row lock in the database), so two machines never get
the same run. Rounds make resume safe: round ``r`` is a study named ``ablation:<name>:r<r>``; the machine
that manages to create the next round's study (study names are unique, so exactly one does) enqueues
the runs still pending and marks the round ready; the others join it. Heartbeats mark a trial whose
worker died as FAIL, and Optuna's RetryHeartbeatStaleTrialCallback puts the run back in the queue.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from fer_ablate.config.experiment_file import Experiment, RunSpec

if TYPE_CHECKING:
    from fer_ablate.runs.single import ChildOutcome

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 10  # how often a worker proves it is alive
GRACE_SECONDS = 30  # after this much silence a RUNNING trial is stale (its worker died)


class StorageError(RuntimeError):
    """The Optuna storage URL is invalid or the database does not answer."""


def open_rdb_storage(url: str, heartbeat: int = HEARTBEAT_SECONDS, grace: int = GRACE_SECONDS,
                     on_stale: Callable | None = None) -> RDBStorage:
    """An RDB storage with heartbeats; fails with a clear message before any training.

    ``on_stale(study, trial)`` runs for a trial whose worker died; the default re-queues it.
    """
    if "://" not in url:
        raise StorageError(f"storage '{url}' is not a database URL (e.g. postgresql://user@host/db)")
    try:
        with warnings.catch_warnings():  # heartbeats are 'experimental' in Optuna 5, and what we need
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, heartbeat_interval=heartbeat, grace_period=grace,
                              heartbeat_stale_trial_callback=on_stale or RetryHeartbeatStaleTrialCallback(max_retry=3))
    except Exception as exc:  # SQLAlchemy and drivers raise many kinds; all mean "cannot use this database"
        raise StorageError(f"storage {url} cannot be used: {type(exc).__name__}: {exc}".splitlines()[0]) from exc


def _rounds(storage: RDBStorage, grid: str) -> list[int]:
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    return sorted(int(n.rsplit(":r", 1)[1]) for n in names if n.startswith(grid + ":r"))


def _busy_keys(study: optuna.Study) -> set[str]:
    """Runs queued, running or completed in a round (not to be queued again)."""
    states = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)
    return {t.user_attrs.get("run_key") for t in study.get_trials(deepcopy=False, states=states)}


def _open_round(storage: RDBStorage, grid: str, todo: list[RunSpec], key_of: Callable[[RunSpec], str]
                ) -> optuna.Study | None:
    """Join the current round if it still has queued runs, else create the next one with what is pending."""
    rounds = _rounds(storage, grid)
    if rounds:
        study = optuna.load_study(study_name=f"{grid}:r{rounds[-1]}", storage=storage)
        optuna.storages.fail_stale_trials(study)  # dead workers' trials -> FAIL -> re-queued
        _wait_ready(study)
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return study
        busy = _busy_keys(study) | live_keys(storage, grid)  # a long run of an older round may still train
        todo = [spec for spec in todo if key_of(spec) not in busy]
    if not todo:
        return None
    name = f"{grid}:r{(rounds[-1] + 1) if rounds else 0}"
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:  # another machine created it first: join
        study = optuna.load_study(study_name=name, storage=storage)
        _wait_ready(study)
        return study
    for spec in todo:
        study.enqueue_trial({}, user_attrs={"run_key": key_of(spec), "queued": True})
    study.set_user_attr("ready", True)
    log.info("work queue %s: queued %d runs", name, len(todo))
    return study


def _wait_ready(study: optuna.Study, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not study.user_attrs.get("ready") and time.monotonic() < deadline:
        time.sleep(0.5)


class _Heartbeat:
    """Records a trial's heartbeat in a background thread while its run trains (ask/tell has none)."""

    def __init__(self, storage: RDBStorage, trial_id: int):
        self.storage, self.trial_id, self.stop = storage, trial_id, threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_SECONDS):
            self.storage.record_heartbeat(self.trial_id)

    def __enter__(self):
        self.storage.record_heartbeat(self.trial_id)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)


def live_keys(storage: RDBStorage, grid: str) -> set[str]:
    """Runs whose worker is alive right now, in any round (RUNNING trials once stale ones are failed)."""
    keys: set[str] = set()
    for r in _rounds(storage, grid):
        study = optuna.load_study(study_name=f"{grid}:r{r}", storage=storage)
        optuna.storages.fail_stale_trials(study)
        keys |= {t.user_attrs.get("run_key") for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    return keys


def run_shared_grid(storage_url: str, exp: Experiment, todo: list[RunSpec],
                    run_one: Callable[[RunSpec], ChildOutcome], key_of: Callable[[RunSpec], str],
                    on_round: Callable[[set[str]], None] = lambda live: None) -> tuple[int, int]:
    """Take runs from the shared queue until it is empty; return (finished, failed) by this machine.

    ``on_round`` receives the keys being run by live workers once the round is open (stale trials
    failed), so the caller can end MLflow runs orphaned by dead workers.
    """
    from fer_ablate.runs.jobs import Progress

    storage = open_rdb_storage(storage_url)
    by_key = {key_of(spec): spec for spec in todo}
    finished = failed = 0
    grid = f"ablation:{exp.name}"
    study = _open_round(storage, grid, todo, key_of)
    if study is None:
        return 0, 0
    on_round(live_keys(storage, grid))
    progress = Progress(len(todo))
    while study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        trial = study.ask()
        key = trial.user_attrs.get("run_key")
        if not trial.user_attrs.get("queued"):
            # The queue emptied between our look and our ask: this trial has no run; close it.
            trial.set_user_attr("idle", True)
            study.tell(trial, state=TrialState.PRUNED)
            break
        if key not in by_key:  # finished in MLflow as seen from here: nothing to run
            trial.set_user_attr("skipped", "already finished")
            study.tell(trial, state=TrialState.PRUNED)
            continue
        spec = by_key[key]
        with _Heartbeat(storage, trial._trial_id):  # Optuna exposes no public trial id for ask/tell
            outcome = run_one(spec)
        trial.set_user_attr("mlflow_run_id", outcome.run_id)
        if outcome.ok:
            study.tell(trial, outcome.value)
            finished += 1
        else:
            trial.set_user_attr("error", outcome.detail[:1000])
            study.tell(trial, state=TrialState.FAIL)
            failed += 1
        log.info(progress.line(spec.run_name, outcome.ok, outcome.detail))
    return finished, failed
