"""K-fold cross-validation as tracked runs: one parent per variant, one child run per fold, paired folds.

Every variant of one invocation trains on the same fold assignment (saved as ``folds.json`` on each
parent), so fold-by-fold differences between variants are paired. A parent is identified by its variant's
config hash and the fold digest: running the same command again reuses it, skips folds that FINISHED and
reruns failed or killed ones. The parent logs mean, std and a 95% t-interval of the fold scores, each fold
model's held-out test accuracy, and the fold ensemble's (softmax averaged over the fold models).
With ``--experiment``, a group run sits above the variant parents and receives the k-fold report.

``cross_validate`` is the one cross-validation engine: ``kfold`` and the fold-mean Optuna objective both
train their folds through it (the objective's per-fold callback reports each score to the pruner).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fer_ablate import tracking
from fer_ablate.config.experiment_file import expand, load_experiment_file
from fer_ablate.config.settings import config_hash, flatten, resolve_config
from fer_ablate.data import Dataset, load_dataset
from fer_ablate.data.folds import (
    FoldAssignment,
    FoldError,
    Pool,
    check_matches,
    fold_dataset,
    load_folds,
    make_folds,
    training_pool,
)
from fer_ablate.reports.plots import plot_confusion
from fer_ablate.reports.stats import mean_ci
from fer_ablate.runs.jobs import JobResult, Progress, run_jobs
from fer_ablate.runs.single import ChildOutcome, resumable, train_child
from fer_ablate.training.metrics import confusion, evaluate_probabilities

log = logging.getLogger(__name__)
KIND = "kfold"
GROUP_KIND = "kfold-group"
SCORES = ("val_accuracy", "val_macro_f1", "test_accuracy", "test_macro_f1")


@dataclass
class Candidate:
    """One variant to cross-validate: its label, resolved config and (for experiments) factor levels."""

    label: str
    config: dict[str, Any]
    levels: dict[str, str] = field(default_factory=dict)


@dataclass
class KFoldOutcome:
    """What one variant's k-fold run did, and its aggregate metrics (as logged on the parent)."""

    label: str
    parent_run_id: str
    skipped: int
    finished: int
    failed: int
    metrics: dict[str, float]


def candidates(variant: str | None, experiment: str | None, extra: dict[str, Any]) -> tuple[str, list[Candidate]]:
    """The group name and the variants to run: one variant, or every variant (label) of an experiment
    file at its first seed (the folds, not seeds, are the replicates here)."""
    if experiment:
        exp = load_experiment_file(experiment)
        chosen: dict[str, Candidate] = {}
        for spec in expand(exp, extra):
            if spec.seed == exp.seeds[0] and spec.label not in chosen:
                chosen[spec.label] = Candidate(spec.label, spec.config, spec.levels)
        return exp.name, list(chosen.values())
    name = variant or "paper"
    return name, [Candidate(name, resolve_config(name, extra))]


def _check_same_data(cands: list[Candidate]) -> None:
    """Paired folds need one dataset: a variant that changes a data setting is refused."""
    first = cands[0]
    reference = flatten(first.config["data"])
    for cand in cands[1:]:
        changed = sorted(k for k, v in flatten(cand.config["data"]).items() if reference.get(k) != v)
        if changed:
            raise FoldError(f"variant '{cand.label}' changes data settings ({', '.join(changed)}) against "
                            f"'{first.label}': k-fold comparisons need the same data for every variant")


def assignment_for(pool: Pool, dataset: Dataset, k: int, seed: int, include_validation: bool,
                   fold_file: str | None) -> FoldAssignment:
    """A saved fold file (checked against the data) or a fresh stratified assignment."""
    if fold_file:
        assignment = load_folds(fold_file)
        check_matches(assignment, pool, dataset.digest, f"fold file {fold_file}")
        if assignment.include_validation != include_validation:
            raise FoldError(f"fold file {fold_file} was made with include_validation={assignment.include_validation}")
        if k and k != assignment.k:
            log.warning("k-fold: using the fold file's %d folds (not %d)", assignment.k, k)
        return assignment
    return make_folds(pool.y, k, seed, dataset.digest, include_validation)


@dataclass(frozen=True)
class FoldSpec:
    """What every fold of one cross-validation shares (picklable: it travels to worker processes).

    ``name`` prefixes each fold run's name (``kernel5 · fold 2/5``); ``tags`` mark each fold run (its
    ``fold``, ``kfold_k`` and ``kfold_folds`` tags are added). ``resume_runs``: fold -> an earlier KILLED
    attempt of that fold with a checkpoint, continued in place (``single.resumable``).
    """

    cfg: dict[str, Any]
    name: str
    tags: dict[str, str]
    assignment: FoldAssignment
    resume_runs: dict[int, str] = field(default_factory=dict)


def train_fold(spec: FoldSpec, fold: int, ctx: tracking.RunContext, dataset: Dataset | None = None
               ) -> ChildOutcome:
    """Train one fold as a child run of ``ctx.parent_run_id`` (here or in a worker process, which loads the
    cached data itself); data and training errors are recorded and returned, not raised."""
    assignment = spec.assignment
    try:
        dataset = dataset or load_dataset(spec.cfg["data"])
        pool = training_pool(dataset, assignment.include_validation)
        check_matches(assignment, pool, dataset.digest, "the fold assignment")
        fold_data = fold_dataset(dataset, pool, assignment, fold)
    except Exception as exc:
        log.exception("fold %d of %s: data", fold, spec.name)
        return ChildOutcome("", False, f"{type(exc).__name__}: {exc}")
    tags = {**spec.tags, "fold": str(fold), "kfold_k": str(assignment.k), "kfold_folds": assignment.digest}
    return train_child(spec.cfg, f"{spec.name} · fold {fold + 1}/{assignment.k}", tags, ctx, fold_data,
                       resume_run_id=spec.resume_runs.get(fold))


def cross_validate(spec: FoldSpec, folds: list[int], ctx: tracking.RunContext, workers: int = 1,
                   dataset: Dataset | None = None,
                   on_fold: Callable[[int, ChildOutcome], None] = lambda fold, outcome: None
                   ) -> dict[int, ChildOutcome]:
    """Train ``folds`` (in this order) as child runs of ``ctx.parent_run_id`` through the job runner.

    ``on_fold(fold, outcome)`` runs as each fold ends; an exception from it (e.g. ``optuna.TrialPruned``)
    stops the remaining folds (running workers are terminated, their runs end KILLED) and propagates. A
    fold whose worker process died is a failed outcome, its run ended KILLED. ``dataset`` (loaded) is used
    in this process only; workers load the (cached) data themselves.
    """
    outcomes: dict[int, ChildOutcome] = {}

    def done(result: JobResult) -> None:
        fold = folds[result.index]
        outcome = result.value if result.ok else ChildOutcome("", False, result.error or "failed")
        if not result.ok and ctx.parent_run_id:  # its process died: its run may be left RUNNING
            tracking.end_stale_runs([r for r in tracking.direct_children(ctx.parent_run_id)
                                     if r.data.tags.get("fold") == str(fold)], f"its worker died: {result.error}")
        outcomes[fold] = outcome
        on_fold(fold, outcome)

    local = dataset if workers <= 1 else None
    run_jobs(train_fold, [(spec, fold, ctx, local) for fold in folds], workers, ctx, done)
    return outcomes


@dataclass(frozen=True)
class KFoldRequest:
    """What ``fer-ablate kfold`` asks for: which variants, how to split the data, how many processes.

    ``variant`` names a variant of variants.yaml; ``experiment_file`` (a name under experiments/ or a path),
    when given, cross-validates every variant of that grid instead. ``folds`` is k (>= 2), ``fold_seed``
    seeds the stratified assignment, ``include_validation`` pools the validation split into the folds,
    ``fold_file`` reuses a saved ``folds.json`` (checked against the data). ``overrides`` are ``--set``
    dotted keys applied to every variant; ``workers`` is the number of processes training folds.
    """

    variant: str | None = "paper"
    experiment_file: str | None = None
    folds: int = 5
    fold_seed: int = 0
    include_validation: bool = False
    fold_file: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    workers: int = 1


def run_kfold(request: KFoldRequest, tracking_uri: str | None = None) -> list[KFoldOutcome]:
    """Cross-validate a variant (or every variant of an experiment file) on one stratified fold assignment.

    ``tracking_uri`` (default: the project's store) is opened once into the run context every run uses.
    Configs, data and folds are resolved and checked before anything is recorded (ConfigError, DataError,
    FoldError). Each parent ends FINISHED when every fold finished, FAILED otherwise, KILLED on Ctrl-C or
    SIGTERM. Returns one outcome per variant, in the experiment file's order.
    """
    experiment, workers = request.experiment_file, request.workers
    name, cands = candidates(request.variant, experiment, dict(request.overrides))
    _check_same_data(cands)
    dataset = load_dataset(cands[0].config["data"])
    pool = training_pool(dataset, request.include_validation)
    assignment = assignment_for(pool, dataset, request.folds, request.fold_seed, request.include_validation,
                                request.fold_file)
    sizes = np.bincount(assignment.fold_of, minlength=assignment.k).tolist()
    log.info("k-fold %s: %d variant(s) x %d folds over a pool of %d images (fold sizes %s, folds %s); "
             "held-out test: %s", name, len(cands), assignment.k, len(pool.y), sizes, assignment.digest,
             f"{pool.test_split} ({len(pool.test[1])} images)" if pool.test else "none")
    ctx = tracking.open_context(tracking_uri=tracking_uri)  # the store's one rule picks the MLflow experiment
    data = _Data(dataset, pool, assignment)
    if not experiment:
        outcome = _run_variant(cands[0], name, data, ctx, workers)
        tracking.log_runs_table(ctx.experiment_id, outcome.parent_run_id)
        return [outcome]
    keys = "|".join(_variant_key(c, assignment) for c in cands)
    with tracking.parent_run(ctx, GROUP_KIND, name, {"kfold_k": str(assignment.k), "kfold_folds": assignment.digest},
                             key_tags={"kfold_group_key": hashlib.sha256(keys.encode()).hexdigest()[:12]},
                             headline="val_accuracy_mean") as group:
        tracking.log_parent_summary(group.run_id, {}, texts={"folds.json": assignment.to_json(),
                                                             "variants.json": json.dumps([c.label for c in cands])})
        outcomes = [_run_variant(cand, name, data, ctx.under(group.run_id), workers) for cand in cands]
        failed = [o.label for o in outcomes if o.failed or o.metrics.get("folds_finished", 0) < assignment.k]
        if failed:
            group.fail(f"incomplete variants: {', '.join(failed)}; rerun to retry")
    tracking.log_runs_table(ctx.experiment_id, group.run_id)
    return outcomes


@dataclass
class _Data:
    dataset: Dataset
    pool: Pool
    assignment: FoldAssignment


def _variant_key(cand: Candidate, assignment: FoldAssignment) -> str:
    """A variant's resume key: its config hash and the fold digest, which covers the data's content digest
    (``auto`` resolved), k, the fold seed and the pooling, so changed data reruns every fold."""
    return f"{config_hash(cand.config)}-{assignment.digest}"


def fold_runs(experiment_id: str, label: str, key: str) -> list[Any]:
    """Every child run of a variant's k-fold parents with this key (config hash + fold digest), newest first."""
    return [run for run in tracking.child_runs(experiment_id, KIND, label) if run.data.tags.get("kfold_key") == key]


def resume_folds(runs: list[Any], folds: list[int]) -> dict[int, str]:
    """Fold -> the run id a rerun of that fold continues (``single.resumable``), for the ``folds`` that have one."""
    found = {fold: resumable([r for r in runs if r.data.tags.get("fold") == str(fold)]) for fold in folds}
    return {fold: run_id for fold, run_id in found.items() if run_id}


def finished_folds(runs: list[Any]) -> dict[int, Any]:
    """Latest FINISHED run per fold among ``runs`` (newest first)."""
    found: dict[int, Any] = {}
    for run in runs:
        if run.info.status == "FINISHED":
            found.setdefault(int(run.data.tags["fold"]), run)
    return found


def _run_variant(cand: Candidate, group_name: str, data: _Data, ctx: tracking.RunContext, workers: int
                 ) -> KFoldOutcome:
    """One variant's k-fold parent (under the group, if any): resume, train the missing folds, aggregate."""
    assignment, pool, dataset = data.assignment, data.pool, data.dataset
    key, k, group = _variant_key(cand, assignment), assignment.k, ctx.parent_run_id
    tags = {"variant": cand.label, "config_hash": config_hash(cand.config), "kfold_k": str(k),
            "kfold_seed": str(assignment.seed), "kfold_folds": assignment.digest, "kfold_group": group_name,
            "kfold_group_run": group or "", "kfold_test_split": pool.test_split or "none",
            "kfold_include_validation": str(assignment.include_validation).lower(),
            "data_source": dataset.source, "data_digest": dataset.digest,
            **{f"level.{f}": lvl for f, lvl in cand.levels.items()}}
    with tracking.parent_run(ctx, KIND, cand.label, tags, key_tags={"kfold_key": key},
                             use_launcher_run=group is None) as parent:
        tracking.log_config_to(parent.run_id, cand.config)
        tracking.log_parent_summary(parent.run_id, {}, texts={"folds.json": assignment.to_json()})
        earlier = fold_runs(ctx.experiment_id, cand.label, key)  # one query for resume and stale-run cleanup
        done = finished_folds(earlier)
        tracking.end_stale_runs(earlier, "left RUNNING by a killed k-fold run; rerun on resume")
        todo = [fold for fold in range(k) if fold not in done]
        log.info("k-fold %s: %d folds, %d already finished, %d to run (parent run %s)",
                 cand.label, k, len(done), len(todo), parent.run_id)
        progress = Progress(len(todo))

        def report(fold: int, outcome: ChildOutcome) -> None:
            log.info(progress.line(f"{cand.label} fold {fold + 1}/{k}", outcome.ok, outcome.detail))

        spec = FoldSpec(cand.config, cand.label, tracking.child_tags(KIND, cand.label, {"kfold_key": key}),
                        assignment, resume_folds(fold_runs(ctx.experiment_id, cand.label, key), todo))  # stale ended
        outcomes = cross_validate(spec, todo, ctx.under(parent.run_id), workers, dataset, report)
        finished = sum(o.ok for o in outcomes.values())
        runs = finished_folds(fold_runs(ctx.experiment_id, cand.label, key))
        metrics = summarise(runs, k)
        metrics.update(_log_ensemble(parent.run_id, runs, pool, cand.label))
        tracking.log_parent_summary(parent.run_id, metrics, texts={"fold_runs.json": json.dumps(
            {str(f): runs[f].info.run_id for f in sorted(runs)})})
        if len(runs) < k:
            parent.fail(f"{k - len(runs)} fold(s) did not finish; rerun to retry them")
    log.info("k-fold %s: val_accuracy %s over %d folds; ensemble test accuracy %s", cand.label,
             _pct(metrics, "val_accuracy"), len(runs), f"{metrics['ensemble_test_accuracy']:.4f}"
             if "ensemble_test_accuracy" in metrics else "n/a")
    return KFoldOutcome(cand.label, parent.run_id, len(done), finished, len(todo) - finished, metrics)


def _pct(metrics: dict[str, float], key: str) -> str:
    if f"{key}_mean" not in metrics:
        return "n/a"
    return f"{100 * metrics[f'{key}_mean']:.2f} ± {100 * metrics[f'{key}_std']:.2f}%"


def summarise(runs: dict[int, Any], k: int) -> dict[str, float]:
    """Aggregate metrics of the finished folds: mean, std, 95% CI, and each fold's score."""
    metrics: dict[str, float] = {"folds": k, "folds_finished": len(runs)}
    for key in SCORES:
        per_fold = {f: runs[f].data.metrics[key] for f in sorted(runs) if key in runs[f].data.metrics}
        if not per_fold:
            continue
        ci = mean_ci(list(per_fold.values()))  # bounded: inside (0, 1), or NaN with a note below 3 folds
        metrics |= {f"{key}_mean": ci.mean, f"{key}_std": ci.std}
        if not math.isnan(ci.low):  # no interval (ci.note says why): no metric, rather than a NaN one
            metrics |= {f"{key}_ci95_low": ci.low, f"{key}_ci95_high": ci.high}
        metrics |= {f"fold{f}_{key}": v for f, v in per_fold.items()}
    return metrics


def ensemble_probabilities(run_ids: list[str], x: np.ndarray) -> np.ndarray:
    """Softmax averaged over the fold models (loaded from their runs) for raw 0-255 faces ``x``."""
    total = None
    for run_id in run_ids:
        model = tracking.load_model(f"runs:/{run_id}/{tracking.MODEL_NAME}")
        probs = model.predict(x.astype(np.float32)[..., None], batch_size=256, verbose=0)
        total = probs if total is None else total + probs
    return total / len(run_ids)


def _log_ensemble(parent: str, runs: dict[int, Any], pool: Pool, label: str) -> dict[str, float]:
    """Evaluate the fold ensemble on the held-out set; log its confusion matrix to the parent."""
    if pool.test is None or not runs:
        return {}
    x, y = pool.test
    probs = ensemble_probabilities([runs[f].info.run_id for f in sorted(runs)], x)
    scores = evaluate_probabilities(y, probs)
    matrix = confusion(y, probs)
    with tempfile.TemporaryDirectory() as tmp:
        png = plot_confusion(matrix, f"{label}: {len(runs)}-fold ensemble on {pool.test_split}",
                             Path(tmp) / "confusion_ensemble.png")
        tracking.log_parent_summary(parent, {}, texts={"metrics/confusion_ensemble.json": json.dumps(
            {"matrix": matrix.tolist(), "split": pool.test_split})}, files=[png], artifact_dir="plots")
    return {"ensemble_test_accuracy": scores["accuracy"], "ensemble_test_macro_f1": scores["macro_f1"],
            "ensemble_members": len(runs)}
