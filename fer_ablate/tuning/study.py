"""Optuna studies over a search-space file: every trial a tracked MLflow child run of the study's parent.

Storage: SQLite (one process, the default ``optuna.db`` beside the MLflow store's file), a journal file
(``journal:PATH``, several processes on one host, what ``--workers N`` uses by default) or PostgreSQL (several
machines). Re-running with the same study name resumes it; RDB storages record heartbeats, so a trial whose
worker died is marked FAIL and retried. ``--workers N`` runs N workers through the job runner (spawned
processes that Ctrl-C and SIGTERM stop, their trial runs ending KILLED). The config of every trial (base
variant, fixed settings, ``--set``) and its data source are checked before anything is recorded, and a study
whose trials keep failing stops (``MAX_CONSECUTIVE_FAILURES``) and fails instead of running forever.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import optuna
from optuna.storages import JournalStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from fer_ablate import tracking
from fer_ablate.config.names import safe_name
from fer_ablate.config.search_space import SearchSpace, active, load_space
from fer_ablate.config.settings import ConfigError, config_hash, resolve_config
from fer_ablate.data import Dataset, load_dataset
from fer_ablate.data.folds import make_folds, training_pool
from fer_ablate.data.loading import resolve_source
from fer_ablate.errors import EXIT_FAILED, FerAblateError
from fer_ablate.paths import default_tracking_uri, project_root
from fer_ablate.redact import from_env, redact_text, redact_url, remember, secrets_of, url_problem
from fer_ablate.runs.cross_validation import FoldSpec, cross_validate
from fer_ablate.runs.jobs import run_jobs
from fer_ablate.runs.shared_queue import StorageError, open_rdb_storage
from fer_ablate.runs.single import ChildOutcome, resumable, train_and_track
from fer_ablate.training.loop import EPOCH_METRICS
from fer_ablate.tuning.space_match import check_study_matches

log = logging.getLogger(__name__)
KIND = "study"
# A worker stops after this many failed trials in a row: different suggestions all failing means the setup
# (data, code, a config the space cannot fix) is broken, and a study would otherwise fail trials forever
# (``n_trials`` counts finished trials only). 5 still lets a space with a few impossible corners go on.
MAX_CONSECUTIVE_FAILURES = 5
RUN_ID_ATTR = "mlflow_run_id"  # the trial attribute holding its MLflow run id
# Heartbeats and some samplers are 'experimental' in Optuna 5; we rely on them knowingly.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def default_storage() -> str:
    """The single-process default: ``optuna.db`` beside the MLflow store's SQLite file (the project's
    ``mlflow.db`` by default, git-ignored), so a study and its tracked runs live together; in the project
    when the tracking store is a server or another database."""
    return f"sqlite:///{_stores_folder() / 'optuna.db'}"


def _stores_folder() -> Path:
    """The folder of the MLflow store's SQLite file, else the project: where default Optuna storages go."""
    uri = default_tracking_uri()
    return Path(uri[len("sqlite:///"):]).parent if uri.startswith("sqlite:///") else project_root()


def _end_orphaned_run(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """A dead worker's trial: end its MLflow run (and a k-fold trial's fold run in progress) KILLED, then let
    Optuna re-queue the trial."""
    run_id = trial.user_attrs.get(RUN_ID_ATTR)
    if run_id:
        tracking.end_stale_runs(tracking.direct_children(run_id), "worker died (heartbeat lost)")
        tracking.end_run_by_id(run_id, "KILLED", "worker died (heartbeat lost); the trial was retried")
        tracking.set_run_tags(run_id, {"trial_state": "FAIL"})
    RetryHeartbeatStaleTrialCallback(max_retry=3)(study, trial)


def open_storage(url: str | None) -> Any:
    """Optuna storage for a URL (default SQLite, ``journal:PATH``, a database URL with heartbeats, or
    ``env:NAME``: the URL in that environment variable); an invalid URL, a password with an unencoded '@', an
    unreachable database or a journal file that cannot be written fails here, before any trial, with a
    StorageError whose message shows no password (``fer_ablate.redact``)."""
    try:
        url = from_env(url) or default_storage()
    except LookupError as exc:
        raise StorageError(f"storage {exc}") from None
    remember(*secrets_of(url))  # hidden from every later message of this process (a worker's too)
    if url.startswith("journal:"):
        return _journal_storage(Path(url[len("journal:"):]))
    if "://" not in url:
        raise StorageError(f"storage '{redact_url(url)}' is neither a database URL nor journal:PATH")
    problem = url_problem(url)
    if problem:  # SQLAlchemy would blame DNS and print part of the password
        raise StorageError(f"storage: {problem}")
    # Heartbeat and grace: FER_ABLATE_HEARTBEAT_SECONDS and ..._GRACE_SECONDS, checked there (StorageError).
    try:
        return open_rdb_storage(url, on_stale=_end_orphaned_run)
    except StorageError as exc:  # its message quotes the URL and the driver's error: no password past here
        raise StorageError(redact_text(str(exc))) from None


def _journal_storage(path: Path) -> JournalStorage:
    """A journal-file storage, refused in one line (StorageError) unless both the file and its folder can be
    written: Optuna appends to the file and locks it with a link beside it, and an existing journal on a
    read-only mount or in a folder without write permission would otherwise open fine and fail at the first
    trial's lock with a traceback."""
    path = path.expanduser().absolute()
    if not path.parent.is_dir():
        raise StorageError(f"journal file {path}: folder {path.parent} does not exist")
    try:
        with open(path, "ab"):  # what Optuna does to a new file; on an existing one it checks the write right
            pass
        handle, probe = tempfile.mkstemp(prefix=".fer-ablate-write-probe-", dir=path.parent)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise StorageError(f"journal file {path} cannot be written ({exc.strerror}): Optuna appends to it and "
                           f"locks it with a file beside it, so {path.parent} must be writable; choose a "
                           "writable place with --storage journal:PATH") from None
    return JournalStorage(JournalFileBackend(str(path)))


def make_sampler(spec: dict[str, Any], space: SearchSpace) -> optuna.samplers.BaseSampler:
    """The sampler named in the space file (TPE, random, grid, CMA-ES, GP)."""
    kind, seed = spec["type"], spec.get("seed")
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.get("n_startup_trials", 10))
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "grid":
        if any(p.type != "categorical" for p in space.params):
            raise ConfigError(f"{space.path}: sampler grid needs categorical parameters only")
        return optuna.samplers.GridSampler({p.key: p.choices for p in space.params}, seed=seed)
    if kind == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    return optuna.samplers.GPSampler(seed=seed)


def make_pruner(spec: dict[str, Any]) -> optuna.pruners.BasePruner:
    """The pruner named in the space file (median, Hyperband, successive halving, threshold, none)."""
    kind = spec["type"]
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.get("n_startup_trials", 5),
                                           n_warmup_steps=spec.get("n_warmup_steps", 0))
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=spec.get("min_resource", 1),
                                              reduction_factor=spec.get("reduction_factor", 3))
    if kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=spec.get("min_resource", 1),
                                                      reduction_factor=spec.get("reduction_factor", 4),
                                                      bootstrap_count=spec.get("bootstrap_count", 0))
    if kind == "wilcoxon":  # k-fold objectives: stop a trial whose folds are clearly worse than the best's
        return optuna.pruners.WilcoxonPruner(p_threshold=spec.get("p_threshold", 0.1),
                                             n_startup_steps=spec.get("n_startup_steps", 2))
    if kind == "threshold":  # stop any trial outside [lower, upper]: a floor under hopeless trials
        return optuna.pruners.ThresholdPruner(lower=spec.get("lower"), upper=spec.get("upper"),
                                              n_warmup_steps=spec.get("n_warmup_steps", 0))
    return optuna.pruners.NopPruner()


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Config overrides for one trial; a conditional parameter is suggested only when its condition holds."""
    chosen: dict[str, Any] = dict(space.fixed)
    for p in space.params:
        if not active(p, chosen):
            continue
        if p.type == "categorical":
            # Optuna stores categorical choices as str/int/float/bool/None: lists go by index.
            if any(isinstance(c, list) for c in p.choices):
                chosen[p.key] = p.choices[trial.suggest_categorical(p.key, list(range(len(p.choices))))]
            else:
                chosen[p.key] = trial.suggest_categorical(p.key, p.choices)
        elif p.type == "int":
            chosen[p.key] = trial.suggest_int(p.key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            chosen[p.key] = trial.suggest_float(p.key, p.low, p.high, step=p.step, log=p.log)
    return chosen


class StudyFailing(FerAblateError, RuntimeError):
    """The study cannot make progress: its trials keep failing, or a worker process failed."""

    exit_code = EXIT_FAILED


class TrialFailed(Exception):
    """A trial's training failed (recorded FAIL in Optuna, its run FAILED)."""


def check_trial_config(space: SearchSpace, extra: dict[str, Any]) -> dict[str, Any]:
    """Resolve what every trial shares (base variant, fixed settings, epochs, ``--set``) and check its data
    source; raises ConfigError (a typo such as ``model.kernal``) or DataError (a missing path) before any
    trial or run is recorded. Returns the resolved config."""
    cfg = resolve_config(space.base, {**space.fixed, "train.epochs": space.epochs, **extra})
    resolve_source(cfg["data"]["source"])
    return cfg


class StopWhenFailing:
    """Optuna callback: stop this worker after ``limit`` FAIL trials in a row, keeping the last error."""

    def __init__(self, limit: int = MAX_CONSECUTIVE_FAILURES):
        self.limit, self.count, self.last_error = limit, 0, ""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state != TrialState.FAIL:
            self.count = 0
            return
        self.count += 1
        self.last_error = trial.user_attrs.get("error", "no error recorded")
        if self.count >= self.limit:
            study.stop()

    def check(self) -> None:
        """Raise StudyFailing when the worker stopped because of failures."""
        if self.count >= self.limit:
            raise StudyFailing(f"{self.count} trials in a row failed; the last: {self.last_error}")


class RecordRunId(keras.callbacks.Callback):
    """Stores the active MLflow run id in a trial attribute when training starts (for dead-worker cleanup)."""

    def __init__(self, trial: optuna.Trial, key: str):
        super().__init__()
        self.trial, self.key = trial, key

    def on_train_begin(self, logs=None):
        self.trial.set_user_attr(self.key, tracking.active_run_id())


class TrialReporter(RecordRunId):
    """Reports a per-epoch signal to Optuna, stops training when the pruner says so, keeps the objective
    metric's values, and records the trial's MLflow run id (so a dead worker's run can be ended by whoever
    notices).

    The signal may differ from the objective (``prune_on: val_loss`` for a ``val_accuracy`` study: on few
    validation images accuracy ties between trials, loss does not). It is reported in the study's direction:
    a loss in a maximising study is reported negated, so the pruner's "better" is the study's "better".
    """

    def __init__(self, trial: optuna.Trial, metric: str, signal: str | None = None, maximize: bool = True):
        super().__init__(trial, RUN_ID_ATTR)
        self.metric, self.pruned, self.values = metric, False, []
        self.signal = signal or metric
        self.sign = -1.0 if self.signal.endswith("loss") == maximize else 1.0

    def on_epoch_end(self, epoch, logs=None):
        logs = {EPOCH_METRICS.get(k, k): v for k, v in (logs or {}).items()}
        if logs.get(self.metric) is not None:
            self.values.append(float(logs[self.metric]))
        if logs.get(self.signal) is None:
            return
        self.trial.report(self.sign * float(logs[self.signal]), step=epoch + 1)
        if self.trial.should_prune():
            self.pruned = True
            self.model.stop_training = True


@dataclass
class Objective:
    """``objective(trial)``: a config from the base variant plus suggestions, trained as a child run of
    ``ctx.parent_run_id`` (the study's parent)."""

    space: SearchSpace
    study_name: str
    ctx: tracking.RunContext
    extra: dict[str, Any]

    def __call__(self, trial: optuna.Trial) -> float:
        keras.utils.clear_session()  # each trial starts from a clean Keras session
        overrides = {**suggest(trial, self.space), "train.epochs": self.space.epochs, **self.extra}
        trial.set_user_attr("overrides", {k: v for k, v in overrides.items()})
        tags = tracking.child_tags(KIND, self.study_name, {"trial_number": trial.number})
        try:
            cfg = resolve_config(self.space.base, overrides)
            cfg["variant"] = f"{self.study_name}-trial{trial.number}"
            if self.space.folds:
                return self._cross_validate(trial, cfg, tags)
            return self._train(trial, cfg, tags)
        except optuna.TrialPruned:
            raise
        except BaseException as exc:
            trial.set_user_attr("error", redact_text(f"{type(exc).__name__}: {exc}")[:1000])  # no password
            raise  # Optuna records the trial FAIL; optimize(catch=...) lets the study go on

    def _train(self, trial: optuna.Trial, cfg: dict[str, Any], tags: dict[str, str]) -> float:
        reporter = TrialReporter(trial, self.space.metric, self.space.prune_on, self.space.direction == "maximize")
        # Set when training starts, so present now only in a retry (``_requeue_interrupted``, heartbeats),
        # which inherits the user attributes of the trial it retries.
        earlier = trial.user_attrs.get(RUN_ID_ATTR)
        resume = resumable([tracking.get_run(earlier)]) if earlier else None
        if resume:  # the epochs before the checkpoint count towards the trial's value
            reporter.values = [value for _, value in sorted(tracking.metric_history(resume, self.space.metric).items())]
        try:
            run_id, _ = train_and_track(cfg, run_name=f"trial {trial.number}", tags=tags, ctx=self.ctx,
                                        extra_callbacks=[reporter], resume_run_id=resume)
        except BaseException:
            # The run may have failed before training began (a model that cannot be built): find it by tag.
            for run in tracking.child_runs(self.ctx.experiment_id, KIND, self.study_name):
                if run.data.tags.get("trial_number") == str(trial.number):
                    tracking.set_run_tags(run.info.run_id, {"trial_state": "FAIL"})
            raise
        if reporter.pruned:
            tracking.set_run_tags(run_id, {"trial_state": "PRUNED"})
            raise optuna.TrialPruned(f"pruned after {len(reporter.values)} epochs")
        tracking.set_run_tags(run_id, {"trial_state": "COMPLETE"})
        pick = max if self.space.direction == "maximize" else min
        return pick(reporter.values)

    def _cross_validate(self, trial: optuna.Trial, cfg: dict[str, Any], tags: dict[str, str]) -> float:
        """Mean of the metric over k folds through the cross-validation engine: the trial's run is a parent,
        each fold a nested run; each fold's score is reported at step = fold index so Optuna's Wilcoxon
        pruner can compare trials fold by fold."""
        spec = self.space.folds
        dataset = _load_once(cfg["data"])
        pool = training_pool(dataset, spec["include_validation"])
        assignment = make_folds(pool.y, spec["k"], spec["seed"], dataset.digest, spec["include_validation"])
        metric = self.space.metric
        scores: list[float] = []
        # Optuna's advice for the Wilcoxon pruner: shuffle the order so early folds do not decide every trial.
        order = np.random.default_rng(trial.number).permutation(assignment.k).tolist()
        with tracking.nested_run(self.ctx, f"trial {trial.number}", {
                **tags, "kfold_k": str(assignment.k), "kfold_folds": assignment.digest},
                finished_on=(optuna.TrialPruned,)) as run:
            trial.set_user_attr(RUN_ID_ATTR, run.run_id)
            tracking.log_config_to(run.run_id, cfg)

            def on_fold(fold: int, outcome: ChildOutcome) -> None:
                if not outcome.ok:
                    raise TrialFailed(f"fold {fold}: {outcome.detail}")
                scores.append(float(outcome.metrics[metric]))
                tracking.log_parent_summary(run.run_id, {f"fold{fold}_{metric}": scores[-1]})
                trial.report(scores[-1], step=fold)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after {len(scores)} of {assignment.k} folds")

            fold_spec = FoldSpec(cfg, f"trial {trial.number}", {**tags, "fer_ablate_kind": f"{KIND}-fold"},
                                 assignment)
            try:
                cross_validate(fold_spec, order, self.ctx.under(run.run_id), 1, dataset, on_fold)
            except optuna.TrialPruned:
                tracking.set_run_tags(run.run_id, {"trial_state": "PRUNED"})
                raise
            except BaseException:
                tracking.set_run_tags(run.run_id, {"trial_state": "FAIL"})
                raise
            mean = float(np.mean(scores))
            tracking.log_parent_summary(run.run_id, {metric: mean, f"{metric}_std": float(np.std(scores, ddof=1))})
            tracking.set_run_tags(run.run_id, {"trial_state": "COMPLETE"})
        return mean


_LOADED: dict[str, Dataset] = {}


def _load_once(data_cfg: dict[str, Any]) -> Dataset:
    """Fold objectives load the dataset once per worker process, not once per trial."""
    key = config_hash({"data": data_cfg})
    if key not in _LOADED:
        _LOADED[key] = load_dataset(data_cfg)
    return _LOADED[key]


@dataclass(frozen=True)
class StudyTask:
    """What one optimisation worker needs (picklable: it travels to spawned worker processes)."""

    space_name: str
    study_name: str
    storage_url: str
    n_trials: int | None
    timeout: float | None
    extra: dict[str, Any]


def _requeue_interrupted(study: optuna.Study) -> None:
    """Enqueue again, with the same parameters, every FAIL trial whose MLflow run was interrupted with a
    checkpoint (Ctrl-C, SIGTERM, a dead worker) and that no trial retries yet: the retry continues that run
    from its last epoch (``Objective._train``) instead of the study sampling past it."""
    trials = study.get_trials(deepcopy=False)
    retried = {RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in trials}
    for trial in trials:
        run_id = trial.user_attrs.get(RUN_ID_ATTR)
        if trial.state == TrialState.FAIL and trial.number not in retried and run_id \
                and resumable([tracking.get_run(run_id)]):
            RetryHeartbeatStaleTrialCallback(max_retry=3)(study, trial)  # the same re-enqueue, any FAIL
            log.info("trial %d was interrupted: enqueued again, to continue run %s", trial.number, run_id)


def _optimize(task: StudyTask, ctx: tracking.RunContext) -> None:
    """One worker: optimise until the study has ``n_trials`` finished trials (all workers together).

    Raises StudyFailing after MAX_CONSECUTIVE_FAILURES failed trials in a row.
    """
    space = load_space(task.space_name)
    study = optuna.load_study(study_name=task.study_name, storage=open_storage(task.storage_url),
                              sampler=make_sampler(space.sampler, space), pruner=make_pruner(space.pruner))
    if task.n_trials and _finished_trials(study) >= task.n_trials:
        # MaxTrialsCallback only stops after a trial: a resumed study that is already complete would run one
        # more trial per worker.
        log.info("study %s already has %d finished trials: nothing to run", task.study_name, task.n_trials)
        return
    failing = StopWhenFailing()
    callbacks = [_progress, failing]
    if task.n_trials:
        callbacks.append(optuna.study.MaxTrialsCallback(task.n_trials,
                                                        states=COUNTED_STATES))
    objective = Objective(space, task.study_name, ctx, task.extra)
    # catch=Exception: a trial whose training raises is recorded FAIL and the study goes on (up to a limit).
    study.optimize(objective, n_trials=None, timeout=task.timeout, callbacks=callbacks,
                   catch=(Exception,), gc_after_trial=True)
    failing.check()


COUNTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)  # the trials n_trials counts


def _finished_trials(study: optuna.Study) -> int:
    """COMPLETE and PRUNED trials: what ``n_trials`` counts (FAIL trials are retried, not counted)."""
    return len(study.get_trials(deepcopy=False, states=COUNTED_STATES))


def _progress(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    done = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
    try:
        best = f"{study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:
        best = "none yet"
    log.info("trial %d %s%s; %d finished trials; best %s", trial.number, trial.state.name,
             f" {trial.value:.4f}" if trial.value is not None else "", done, best)


@dataclass(frozen=True)
class StudyRequest:
    """What ``fer-ablate tune`` asks for: a search-space file's study, its budget, storage and processes.

    ``space`` is a name under search_spaces/ or a path to a YAML file. ``n_trials`` counts finished
    (COMPLETE or PRUNED) trials of all workers together, None for no limit; ``timeout`` is in seconds per
    worker. ``storage`` is an Optuna storage URL or ``journal:PATH`` (default: ``optuna.db`` beside the store, or
    a journal file with several workers); ``study_name`` defaults to the space's name. ``overrides`` are
    ``--set`` dotted keys applied to every trial; ``workers`` is the number of optimisation processes.
    """

    space: str
    n_trials: int | None = 20
    timeout: float | None = None
    storage: str | None = None
    study_name: str | None = None
    workers: int = 1
    overrides: Mapping[str, Any] = field(default_factory=dict)


def run_study(request: StudyRequest, tracking_uri: str | None = None) -> dict[str, Any]:
    """Create or resume a study and optimise it in ``request.workers`` processes; then report it to the parent.

    ``tracking_uri`` (default: the project's store) is opened once into the run context every trial uses.
    Checked before anything is recorded: the search space, every trial's shared config and data source
    (ConfigError, DataError) and the storage (StorageError). The parent run ends FINISHED, FAILED (raising
    StudyFailing) when trials kept failing or a worker process failed, KILLED on Ctrl-C or SIGTERM.
    Returns the summary the report logged (trial states, best value and params).
    """
    space_name, n_trials, timeout = request.space, request.n_trials, request.timeout
    storage, workers, extra = request.storage, request.workers, dict(request.overrides)
    try:
        storage = from_env(storage)  # `env:NAME`: the URL (and its password) stays out of the command line
    except LookupError as exc:
        raise StorageError(f"storage {exc}") from None
    space = load_space(space_name)
    check_trial_config(space, extra)
    study_name = safe_name(request.study_name or space.name, "study")  # an MLflow search value and a reports/ folder
    if workers > 1 and storage is None:
        storage = f"journal:{_stores_folder() / 'optuna-journal.log'}"  # SQLite is for one process only
    if workers > 1 and storage.startswith("sqlite"):
        raise StorageError("SQLite storage is for one process; use journal:PATH or postgresql:// with --workers")
    storage_url = storage or default_storage()
    store = open_storage(storage_url)  # fails here, before any training, when unusable
    study = optuna.create_study(study_name=study_name, storage=store, direction=space.direction,
                                load_if_exists=True, sampler=make_sampler(space.sampler, space),
                                pruner=make_pruner(space.pruner))
    check_study_matches(study, space, redact_url(storage_url))  # a reused name whose file changed: refused here
    ctx = tracking.open_context(tracking_uri=tracking_uri)  # the store's one rule picks the MLflow experiment
    task = StudyTask(space_name, study_name, storage_url, n_trials, timeout, extra)
    with tracking.parent_run(ctx, KIND, study_name, {
            "study_name": study_name, "storage": redact_url(storage_url), "sampler": space.sampler["type"],
            "pruner": space.pruner["type"], "search_space": space.name},
            own_children=not storage_url.startswith(("postgresql", "mysql"))) as parent:
        ctx = ctx.under(parent.run_id)
        tracking.log_parent_summary(parent.run_id, {}, texts={"search_space.yaml": space.path.read_text()})
        _requeue_interrupted(study)
        results = run_jobs(_optimize, [(task, ctx)] * workers, workers, ctx)
        failed = [r.error for r in results if not r.ok]
        if failed:
            raise StudyFailing(f"{len(failed)} of {workers} worker(s) failed: {'; '.join(failed)}")
        from fer_ablate.tuning.study_report import report_study

        summary = report_study(study_name, store, parent.run_id)
    tracking.log_runs_table(ctx.experiment_id, parent.run_id)
    return summary
