"""Optuna studies over a search-space file: every trial a tracked MLflow child run of the study's parent.

Storage: SQLite (one process, the default ``<project>/optuna.db``), a journal file (``journal:PATH``, several
processes on one host, what ``--workers N`` uses by default) or PostgreSQL (several machines). Re-running
with the same study name resumes it; RDB storages record heartbeats, so a trial whose worker died is
marked FAIL and retried.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import warnings
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import optuna
from optuna.storages import JournalStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from fer_ablate import tracking
from fer_ablate.config.search_space import SearchSpace, active, load_space
from fer_ablate.config.settings import ConfigError, config_hash, resolve_config
from fer_ablate.data import Dataset, load_dataset
from fer_ablate.data.folds import fold_dataset, make_folds, training_pool
from fer_ablate.paths import project_root
from fer_ablate.runs.shared_queue import StorageError, open_rdb_storage
from fer_ablate.runs.single import train_and_track
from fer_ablate.training.loop import EPOCH_METRICS

log = logging.getLogger(__name__)
KIND = "study"
EXPERIMENT = "fer-ablate-tuning"
HEARTBEAT = int(os.environ.get("FER_ABLATE_HEARTBEAT", "20"))  # seconds; tests shorten it
# Heartbeats and some samplers are 'experimental' in Optuna 5; we rely on them knowingly.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def default_storage() -> str:
    """The single-process default: a SQLite file in the project (git-ignored)."""
    return f"sqlite:///{project_root() / 'optuna.db'}"


def _end_orphaned_run(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """A dead worker's trial: end its MLflow run KILLED, then let Optuna re-queue the trial."""
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        tracking.end_run_by_id(run_id, "KILLED", "worker died (heartbeat lost); the trial was retried")
        tracking.get_client().set_tag(run_id, "trial_state", "FAIL")
    fold_run = trial.user_attrs.get("mlflow_fold_run_id")  # a k-fold trial's nested run in progress
    if fold_run:
        tracking.end_run_by_id(fold_run, "KILLED", "worker died (heartbeat lost)")
    RetryHeartbeatStaleTrialCallback(max_retry=3)(study, trial)


def open_storage(url: str | None) -> Any:
    """Optuna storage for a URL (default SQLite, ``journal:PATH``, or a database URL with heartbeats);
    an invalid URL or unreachable database fails here, before training."""
    url = url or default_storage()
    if url.startswith("journal:"):
        try:
            return JournalStorage(JournalFileBackend(url[len("journal:"):]))
        except OSError as exc:
            raise StorageError(f"storage {url} cannot be used: {exc}") from exc
    if "://" not in url:
        raise StorageError(f"storage '{url}' is neither a database URL nor journal:PATH")
    return open_rdb_storage(url, HEARTBEAT, 3 * HEARTBEAT, on_stale=_end_orphaned_run)


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
        super().__init__(trial, "mlflow_run_id")
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
    """``objective(trial)``: a config from the base variant plus suggestions, trained as a child run."""

    space: SearchSpace
    study_name: str
    parent_run_id: str
    experiment_id: str
    extra: dict[str, Any]

    def __call__(self, trial: optuna.Trial) -> float:
        keras.utils.clear_session()  # each trial starts from a clean Keras session
        overrides = {**suggest(trial, self.space), "train.epochs": self.space.epochs, **self.extra}
        trial.set_user_attr("overrides", {k: v for k, v in overrides.items()})
        cfg = resolve_config(self.space.base, overrides)
        cfg["variant"] = f"{self.study_name}-trial{trial.number}"
        tags = tracking.child_tags(KIND, self.study_name, {"trial_number": trial.number})
        if self.space.folds:
            return self._cross_validate(trial, cfg, tags)
        reporter = TrialReporter(trial, self.space.metric, self.space.prune_on,
                                 self.space.direction == "maximize")
        try:
            run_id, _ = train_and_track(cfg, run_name=f"trial {trial.number}", tags=tags,
                                        parent_run_id=self.parent_run_id, experiment_id=self.experiment_id,
                                        extra_callbacks=[reporter])
        except BaseException:
            # The run may have failed before training began (a model that cannot be built): find it by tag.
            for run in tracking.child_runs(self.experiment_id, KIND, self.study_name):
                if run.data.tags.get("trial_number") == str(trial.number):
                    tracking.get_client().set_tag(run.info.run_id, "trial_state", "FAIL")
            raise  # Optuna records the trial FAIL; optimize(catch=...) lets the study go on
        client = tracking.get_client()
        if reporter.pruned:
            client.set_tag(run_id, "trial_state", "PRUNED")
            raise optuna.TrialPruned(f"pruned after {len(reporter.values)} epochs")
        client.set_tag(run_id, "trial_state", "COMPLETE")
        pick = max if self.space.direction == "maximize" else min
        return pick(reporter.values)

    def _cross_validate(self, trial: optuna.Trial, cfg: dict[str, Any], tags: dict[str, str]) -> float:
        """Mean of the metric over k folds: the trial's run is a parent, each fold a nested run; each fold's
        score is reported at step = fold index so Optuna's Wilcoxon pruner can compare trials fold by fold."""
        spec = self.space.folds
        dataset = _load_once(cfg["data"])
        pool = training_pool(dataset, spec["include_validation"])
        assignment = make_folds(pool.y, spec["k"], spec["seed"], dataset.digest, spec["include_validation"])
        client = tracking.get_client()
        trial_run = client.create_run(self.experiment_id, run_name=f"trial {trial.number}", tags={
            **tags, "mlflow.parentRunId": self.parent_run_id, "kfold_k": str(assignment.k),
            "kfold_folds": assignment.digest}).info.run_id
        trial.set_user_attr("mlflow_run_id", trial_run)
        tracking.log_config_to(trial_run, cfg)
        fold_tags = {**tags, "fer_ablate_kind": f"{KIND}-fold", "kfold_folds": assignment.digest}
        scores: list[float] = []
        # Optuna's advice for the Wilcoxon pruner: shuffle the order so early folds do not decide every trial.
        order = np.random.default_rng(trial.number).permutation(assignment.k).tolist()
        try:
            for fold in order:
                keras.utils.clear_session()
                _, metrics = train_and_track(cfg, run_name=f"trial {trial.number} · fold {fold + 1}/{assignment.k}",
                                             tags={**fold_tags, "fold": str(fold)}, parent_run_id=trial_run,
                                             experiment_id=self.experiment_id,
                                             dataset=fold_dataset(dataset, pool, assignment, fold),
                                             extra_callbacks=[RecordRunId(trial, "mlflow_fold_run_id")])
                scores.append(float(metrics[self.space.metric]))
                client.log_metric(trial_run, f"fold{fold}_{self.space.metric}", scores[-1])
                trial.report(scores[-1], step=fold)
                if trial.should_prune():
                    client.set_tag(trial_run, "trial_state", "PRUNED")
                    tracking.end_run_by_id(trial_run, "FINISHED")
                    raise optuna.TrialPruned(f"pruned after {len(scores)} of {assignment.k} folds")
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            client.set_tag(trial_run, "trial_state", "FAIL")
            tracking.end_run_by_id(trial_run, "KILLED", "interrupted")
            raise
        except BaseException as exc:
            client.set_tag(trial_run, "trial_state", "FAIL")
            tracking.end_run_by_id(trial_run, "FAILED", f"{type(exc).__name__}: {exc}")
            raise
        mean = float(np.mean(scores))
        client.log_metric(trial_run, self.space.metric, mean)
        client.log_metric(trial_run, f"{self.space.metric}_std", float(np.std(scores, ddof=1)))
        client.set_tag(trial_run, "trial_state", "COMPLETE")
        tracking.end_run_by_id(trial_run, "FINISHED")
        return mean


_LOADED: dict[str, Dataset] = {}


def _load_once(data_cfg: dict[str, Any]) -> Dataset:
    """Fold objectives load the dataset once per worker process, not once per trial."""
    key = config_hash({"data": data_cfg})
    if key not in _LOADED:
        _LOADED[key] = load_dataset(data_cfg)
    return _LOADED[key]


def _safe_url(url: str) -> str:
    """The storage URL without a password, for tags."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.split("@", 1)
        return f"{scheme}://{creds.split(':')[0]}@{host}"
    return url


def _optimize(space_name: str, study_name: str, storage_url: str, n_trials: int | None, timeout: float | None,
              parent: str, experiment_id: str, extra: dict[str, Any], tracking_uri: str | None) -> None:
    """One worker: optimise until the study has ``n_trials`` finished trials (all workers together)."""
    space = load_space(space_name)
    tracking.use_store(tracking_uri)
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage_url),
                              sampler=make_sampler(space.sampler, space), pruner=make_pruner(space.pruner))
    callbacks = [_progress]
    if n_trials:
        callbacks.append(optuna.study.MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    objective = Objective(space, study_name, parent, experiment_id, extra)
    # catch=Exception: a trial whose training raises is recorded FAIL and the study goes on.
    study.optimize(objective, n_trials=None, timeout=timeout, callbacks=callbacks,
                   catch=(Exception,), gc_after_trial=True)


def _progress(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    done = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
    try:
        best = f"{study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:
        best = "none yet"
    log.info("trial %d %s%s; %d finished trials; best %s", trial.number, trial.state.name,
             f" {trial.value:.4f}" if trial.value is not None else "", done, best)


def _worker_entry(*args: Any) -> None:
    from fer_ablate.logs import configure_logging

    configure_logging()
    os.environ.pop("MLFLOW_RUN_ID", None)
    _optimize(*args)


def run_study(space_name: str, n_trials: int | None = 20, timeout: float | None = None, storage: str | None = None,
              study_name: str | None = None, workers: int = 1, extra: dict[str, Any] | None = None,
              tracking_uri: str | None = None) -> dict[str, Any]:
    """Create or resume a study and optimise it in ``workers`` processes; then report it to the parent."""
    space = load_space(space_name)
    study_name = study_name or space.name
    if workers > 1 and storage is None:
        storage = f"journal:{project_root() / 'optuna-journal.log'}"  # SQLite is for one process only
    if workers > 1 and storage.startswith("sqlite"):
        raise StorageError("SQLite storage is for one process; use journal:PATH or postgresql:// with --workers")
    storage_url = storage or default_storage()
    store = open_storage(storage_url)  # fails here, before any training, when unusable
    optuna.create_study(study_name=study_name, storage=store, direction=space.direction, load_if_exists=True,
                        sampler=make_sampler(space.sampler, space), pruner=make_pruner(space.pruner))
    experiment_id = tracking.configure(EXPERIMENT, tracking_uri)
    parent = tracking.open_parent(experiment_id, KIND, study_name, {
        "study_name": study_name, "storage": _safe_url(storage_url), "sampler": space.sampler["type"],
        "pruner": space.pruner["type"], "search_space": space.name})
    tracking.log_parent_summary(parent, {}, texts={"search_space.yaml": space.path.read_text()})
    args = (space_name, study_name, storage_url, n_trials, timeout, parent, experiment_id, extra or {}, tracking_uri)
    try:
        if workers <= 1:
            _optimize(*args)
        else:
            context = multiprocessing.get_context("spawn")
            procs = [context.Process(target=_worker_entry, args=args) for _ in range(workers)]
            for proc in procs:
                proc.start()
            for proc in procs:
                proc.join()
    except KeyboardInterrupt:
        tracking.end_run_by_id(parent, "KILLED", "interrupted; run the same command again to resume the study")
        raise
    from fer_ablate.tuning.study_report import report_study

    summary = report_study(study_name, storage_url, parent)
    tracking.end_run_by_id(parent, "FINISHED")
    return summary
