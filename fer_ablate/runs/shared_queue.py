"""Share one grid between machines through an Optuna study on an RDB (PostgreSQL): each run taken once.

Optuna's queue is the coordination engine: ``enqueue_trial`` puts one WAITING trial per pending run, and
``study.ask()`` pops a WAITING trial atomically (a row lock in the database), so two machines never get
the same run. Rounds make resume safe: round ``r`` is a study named ``ablation:<name>:r<r>``; the machine
that manages to create the next round's study (study names are unique, so exactly one does) enqueues
the runs still pending and marks the round ready; the others join it.

A round is identified by the run keys of its grid (label, seed, config hash, data digest of every run),
stored with it. A machine whose keys differ (another ``--set``, another code version, other data) never
joins a round still in progress: it stops with one line naming the settings that differ (``RoundMismatch``);
once that round has ended, or no worker works on it any more (all its machines were stopped), it starts
the next round with its own runs. So no machine ever sees a queued run it does not know.

Only Optuna's public API: each run is taken and run by ``study.optimize(..., n_trials=1)``, which pops the
next enqueued trial and keeps its heartbeat. A trial whose worker died goes stale; ``fail_stale_trials``
(called by every live worker before each run, and while it waits for the last runs of the round) marks
it FAIL, and Optuna's RetryHeartbeatStaleTrialCallback puts the run back in the queue of the same round,
so a live worker reruns it at once instead of at the next invocation. A run stopped by SIGTERM or Ctrl-C
is put back in the queue by its own worker before it exits (its trial ends FAIL, marked ``interrupted``).

Clocks: staleness is decided by the database's clock only. Optuna writes each heartbeat with the database's
``now()`` and compares it with the database's ``now()``; every session of this package runs in UTC
(PostgreSQL ``timezone``, MySQL ``time_zone``), so machines in other time zones (or with another ``PGTZ``)
agree. A trial that never beat (its worker died right after popping it) has no database timestamp at all:
each observer times it on its own monotonic clock from when it first saw it, so no two clocks are compared.

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
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from fer_ablate.config.experiment_file import RunSpec
from fer_ablate.errors import EXIT_BAD_INPUT, EXIT_UNAVAILABLE, FerAblateError
from fer_ablate.redact import redact_text, redact_url, url_problem

if TYPE_CHECKING:
    from fer_ablate.runs.single import ChildOutcome

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 10  # how often a worker proves it is alive
GRACE_SECONDS = 30  # after this much silence a RUNNING trial is stale (its worker died)
HEARTBEAT_ENV = "FER_ABLATE_HEARTBEAT_SECONDS"  # overrides HEARTBEAT_SECONDS (tests use a short beat)
GRACE_ENV = "FER_ABLATE_HEARTBEAT_GRACE_SECONDS"  # overrides GRACE_SECONDS
SHOWN_DIFFERENCES = 3  # settings named in a RoundMismatch line (a --set typically changes one, in every run)

# Identity of each run of a grid, as the machine that queued it saw it: {run key: {"run": run name,
# dotted setting: value as text}}. Written once per round, before its runs are queued.
Identity = Mapping[str, Mapping[str, str]]


class StorageError(FerAblateError, RuntimeError):
    """The Optuna storage URL is invalid, the database does not answer, or a heartbeat setting is bad."""

    exit_code = EXIT_UNAVAILABLE


class RoundMismatch(FerAblateError, ValueError):
    """The round in progress on the shared storage holds other runs than this machine's grid."""

    exit_code = EXIT_BAD_INPUT


def _seconds_from_env(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) <= 0:
        raise StorageError(f"{name}={text!r} is not a whole number of seconds above 0")
    return int(text)


def _utc_sessions(storage: RDBStorage) -> RDBStorage:
    """Run every database session of ``storage`` in UTC; return it.

    Optuna stores heartbeats in a column without time zone, written and read as the database's ``now()``
    in the *session's* zone: a machine with another ``PGTZ`` (libpq applies it after the connection's own
    options, so only a statement after connecting wins) or a role with its own ``timezone`` would read a live
    heartbeat as hours old. SQLite's CURRENT_TIMESTAMP is always UTC already.
    """
    statement = {"postgresql": "SET TIME ZONE 'UTC'", "mysql": "SET time_zone = '+00:00'",
                 "mariadb": "SET time_zone = '+00:00'"}.get(storage.engine.dialect.name)
    if statement is None:
        return storage

    def utc(dbapi_connection: Any, record: Any) -> None:  # noqa: ARG001
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True  # a SET inside a transaction is undone by the pool's rollback
        cursor = dbapi_connection.cursor()
        cursor.execute(statement)
        cursor.close()
        dbapi_connection.autocommit = autocommit

    sqlalchemy.event.listen(storage.engine, "connect", utc)
    storage.engine.dispose()  # the connections Optuna opened to check its schema were in the machine's zone
    return storage


def open_rdb_storage(url: str, heartbeat: int | None = None, grace: int | None = None,
                     on_stale: Callable | None = None) -> RDBStorage:
    """An RDB storage with heartbeats, its sessions in UTC (``_utc_sessions``); fails with a clear message
    before any training.

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
        raise StorageError(f"storage '{redact_url(url)}' is not a database URL (e.g. postgresql://user@host/db)")
    problem = url_problem(url)
    if problem:  # an unencoded '@' in the password reads as a host name: SQLAlchemy would blame DNS
        raise StorageError(f"storage: {problem}")
    try:
        with warnings.catch_warnings():  # heartbeats are 'experimental' in Optuna 5, and what we need
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _utc_sessions(RDBStorage(
                url, heartbeat_interval=heartbeat, grace_period=grace,
                heartbeat_stale_trial_callback=on_stale or RetryHeartbeatStaleTrialCallback(max_retry=3)))
    except Exception as exc:  # SQLAlchemy and drivers raise many kinds; all mean "cannot use this database"
        raise StorageError(redact_text(f"storage {url} cannot be used: {type(exc).__name__}: {exc}".splitlines()[0])
                           ) from exc


# Trials this process has seen RUNNING without a first beat: (storage URL, trial id) -> time.monotonic() then.
_unbeaten_since: dict[tuple[str, int], float] = {}


def _fail_stale(study: optuna.Study, storage: RDBStorage) -> None:
    """Fail the trials whose worker died (their runs go back in the queue).

    Optuna's stale check (database clock against database-written heartbeats) only sees trials that beat
    at least once. A worker killed between popping a trial and its first beat leaves one RUNNING for ever,
    and the round would wait on it for ever. ``take`` beats once itself and then marks its trial ``taken``
    with the trial's number (a retry inherits the attributes); a RUNNING trial this process has seen
    unmarked for longer than the grace period, on its own monotonic clock, is failed here (``study.tell``:
    only one worker's tell succeeds) and re-queued like a stale one. The trial's ``datetime_start`` is never
    used: Optuna writes it in the popping machine's local time.
    """
    with warnings.catch_warnings():  # 'experimental' in Optuna 5; it would warn on every call in the logs
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    grace = storage.grace_period or 2 * (storage.get_heartbeat_interval() or HEARTBEAT_SECONDS)
    now = time.monotonic()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        seen = (storage.url, trial._trial_id)
        if trial.user_attrs.get("taken") == trial.number:
            _unbeaten_since.pop(seen, None)
            continue
        if now - _unbeaten_since.setdefault(seen, now) <= grace:
            continue
        _unbeaten_since.pop(seen, None)
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


def _difference(mine: Identity, theirs: Identity) -> str:
    """The settings that differ between two grids, run by run (paired by run name), and the runs only one
    side has; the most frequent first, at most ``SHOWN_DIFFERENCES`` settings."""
    here = {desc.get("run", key): (key, desc) for key, desc in mine.items()}
    there = {desc.get("run", key): (key, desc) for key, desc in theirs.items()}
    changed: Counter[tuple[str, str, str]] = Counter()
    same_settings = 0
    for run in here.keys() & there.keys():
        (key_a, a), (key_b, b) = here[run], there[run]
        if key_a == key_b:
            continue
        diffs = [(s, a.get(s, "(unset)"), b.get(s, "(unset)")) for s in sorted(a.keys() | b.keys())
                 if s != "run" and a.get(s) != b.get(s)]
        changed.update(diffs)
        same_settings += not diffs
    parts = [f"{s}={a} here, {b} there ({n} run{'s' * (n > 1)})" for (s, a, b), n in
             changed.most_common(SHOWN_DIFFERENCES)]
    if len(changed) > SHOWN_DIFFERENCES:
        parts.append(f"{len(changed) - SHOWN_DIFFERENCES} more setting(s)")
    if same_settings:
        parts.append(f"{same_settings} run(s) with the same settings but another key (another code version)")
    for side, names in (("only here", here.keys() - there.keys()), ("only there", there.keys() - here.keys())):
        if names:
            shown = ", ".join(sorted(names)[:SHOWN_DIFFERENCES])
            parts.append(f"{len(names)} run(s) {side} ({shown}{', ...' if len(names) > SHOWN_DIFFERENCES else ''})")
    return "; ".join(parts) or "the same runs in another order"


def _other_runs(study: optuna.Study, identity: Identity) -> str | None:
    """What differs between the runs of round ``study`` and ``identity``; None when they are the same.

    A round queued before run keys were stored with it is checked by its trials: every run key queued
    there must be one of ours.
    """
    keys = study.user_attrs.get("run_keys")
    if keys is not None:
        if set(keys) == set(identity):
            return None
        return _difference(identity, study.user_attrs.get("runs") or {k: {} for k in keys})
    unknown = {t.user_attrs.get("run_key") for t in study.get_trials(deepcopy=False)} - set(identity) - {None}
    return f"{len(unknown)} queued run(s) unknown here" if unknown else None


def _abandoned(study: optuna.Study, storage: RDBStorage) -> bool:
    """Whether no worker works on a round with queued runs: none RUNNING, and none of its queued runs taken
    within one heartbeat interval (a live worker takes a queued run within one pass of its loop, a few
    queries). So a round whose machines were all stopped does not block a grid with new settings."""
    def state() -> tuple[bool, set[int]]:
        trials = study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
        return any(t.state == TrialState.RUNNING for t in trials), {t.number for t in trials}

    running, before = state()
    if running:
        return False
    time.sleep(storage.get_heartbeat_interval() or HEARTBEAT_SECONDS)
    return state() == (False, before)


def _joinable(study: optuna.Study, storage: RDBStorage, identity: Identity) -> bool:
    """Whether this machine joins round ``study`` (it has queued or running runs): True with the same runs;
    with other runs RoundMismatch (one line naming what differs), unless no worker works on the round any
    more (False: the caller starts the next round with this machine's runs)."""
    detail = _other_runs(study, identity)
    if detail is None:
        return True
    if _abandoned(study, storage):
        log.warning("%s: its queued runs have no worker and differ from this machine's (%s); a new round "
                    "starts with this machine's runs", study.study_name, detail)
        return False
    raise RoundMismatch(
        f"{study.study_name} on this storage, still in progress on other machines, holds other runs than "
        f"this machine's grid: {detail}. Every machine of a shared grid needs the same experiment file, --set, "
        "code version and data: change this machine's command, or wait until that round ends (this machine "
        "then starts the next round with its own runs)")


def _open_round(storage: RDBStorage, grid: str, identity: Identity, todo: Mapping[str, Any]
                ) -> optuna.Study | None:
    """Join the current round if it is still in progress (same runs only), else create the next one with
    what is pending. None: nothing pending and no round in progress."""
    rounds = _rounds(storage, grid)
    if rounds:
        study = optuna.load_study(study_name=f"{grid}:r{rounds[-1]}", storage=storage)
        _fail_stale(study, storage)  # dead workers' trials -> FAIL -> re-queued
        _wait_ready(study)
        active = study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
        if active and _joinable(study, storage, identity):
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
        return study if _joinable(study, storage, identity) else None
    study.set_user_attr("run_keys", sorted(identity))  # the round's identity, before any run is queued
    study.set_user_attr("runs", {key: dict(desc) for key, desc in identity.items()})
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


def live_runs(storage_url: str, name: str) -> set[str]:
    """Keys of the runs of grid ``name`` some worker is training right now, on any machine, in any round."""
    return live_keys(open_rdb_storage(storage_url), f"ablation:{name}")


def check_round(storage_url: str, name: str, identity: Identity) -> None:
    """Raise RoundMismatch (one line naming the settings that differ) when grid ``name``'s round in progress
    holds other runs than ``identity`` (every run key of this machine's grid: its run name and settings).
    Called before anything is recorded; ``open_round`` checks again when it joins."""
    storage = open_rdb_storage(storage_url)
    rounds = _rounds(storage, f"ablation:{name}")
    if rounds:
        study = optuna.load_study(study_name=f"ablation:{name}:r{rounds[-1]}", storage=storage)
        _wait_ready(study)
        _fail_stale(study, storage)  # a round whose workers died is not in progress
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)):
            _joinable(study, storage, identity)


def open_round(storage_url: str, name: str, identity: Identity, todo: Mapping[str, Any]) -> str | None:
    """The round of grid ``name`` this machine works on: the one in progress (joined, when it holds the
    same runs: ``identity`` maps every run key of the grid to its run name and settings), else a new one
    queuing the ``todo`` keys not finished or running elsewhere. Returns its study name, or None when there
    is nothing to do. Raises RoundMismatch (one line naming the differing settings) or StorageError."""
    study = _open_round(open_rdb_storage(storage_url), f"ablation:{name}", identity, todo)
    return study.study_name if study is not None else None


class RunFailed(Exception):
    """A run of the shared grid failed (recorded FAIL in the queue; its MLflow run is FAILED)."""


def work_round(storage_url: str, round_name: str, todo: Mapping[str, RunSpec],
               run_one: Callable[[str, RunSpec], ChildOutcome],
               on_round: Callable[[set[str]], None] = lambda live: None) -> tuple[int, int]:
    """Take runs from round ``round_name`` until none is queued or running; return (finished, failed) by
    this worker. Several workers (processes, machines) may work one round at once.

    ``todo`` maps the run keys this machine has not seen finished to their specs; a queued run outside it
    finished meanwhile and is closed without running. ``on_round`` receives the keys being run by live
    workers (stale trials failed) before each run this worker takes, so the caller can end MLflow runs
    orphaned by dead workers (re-queued runs included). Ctrl-C / SIGTERM during a run put it back in the
    queue (its trial ends FAIL, marked ``interrupted``) and propagate as KeyboardInterrupt.
    """
    from fer_ablate.runs.jobs import Progress

    storage = open_rdb_storage(storage_url)
    study = optuna.load_study(study_name=round_name, storage=storage)
    grid = round_name.rsplit(":r", 1)[0]
    progress = Progress(len(todo))
    counts = {"finished": 0, "failed": 0}

    def take(trial: optuna.Trial) -> float:
        key = trial.user_attrs.get("run_key")
        if not trial.user_attrs.get("queued"):
            # The queue emptied between our look and our ask: this trial has no run; close it.
            trial.set_user_attr("idle", True)
            raise optuna.TrialPruned("no queued run")
        if key not in todo:  # the round holds our runs only (_joinable): this one finished meanwhile
            trial.set_user_attr("skipped", "already finished")
            raise optuna.TrialPruned("already finished")
        try:
            # Beat once now (Optuna's thread beats too, concurrently): from here a death is seen by
            # Optuna's stale check on the database's clock (see _fail_stale).
            storage.record_heartbeat(trial._trial_id)
            trial.set_user_attr("taken", trial.number)
            on_round(live_keys(storage, grid) - {key})
            outcome = run_one(key, todo[key])
        except KeyboardInterrupt:
            _requeue(study, trial, key)
            raise
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


def _requeue(study: optuna.Study, trial: optuna.Trial, key: str) -> None:
    """Put an interrupted run back in its round (Optuna then ends its trial FAIL): a live worker of the
    round, or the next invocation joining it, trains it. An interrupted run is not a failed run."""
    trial.set_user_attr("interrupted", "Ctrl-C or SIGTERM; re-queued")
    study.enqueue_trial({}, user_attrs={"run_key": key, "queued": True, "requeued_from": trial.number})
    log.info("run %s: interrupted; put back in the queue of %s", key, study.study_name)


def run_shared_grid(storage_url: str, name: str, identity: Identity, todo: Mapping[str, RunSpec],
                    run_one: Callable[[str, RunSpec], ChildOutcome],
                    on_round: Callable[[set[str]], None] = lambda live: None) -> tuple[int, int]:
    """Open (or join) the grid's round and take runs (``{run key: spec}``) until it is done, in this
    process; return (finished, failed) by this machine. ``identity``: every run of the grid (see
    ``open_round``), ``on_round``: see ``work_round``."""
    round_name = open_round(storage_url, name, identity, todo)
    if round_name is None:
        return 0, 0
    return work_round(storage_url, round_name, todo, run_one, on_round)
