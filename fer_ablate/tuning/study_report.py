"""The end of a study (or ``fer-ablate tune-report``): best trial, Optuna's plots, the best config as a variant.

Everything is logged to the study's parent run; the best configuration is also written as a variants YAML
that ``fer-ablate train --variant-file FILE --variant NAME`` runs again.
"""

from __future__ import annotations

import logging
import shlex
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from fer_ablate import tracking
from fer_ablate.config.names import path_under
from fer_ablate.config.settings import flatten, to_yaml
from fer_ablate.paths import reports_dir
from fer_ablate.reports.plots import plt  # the one place that selects the headless Agg backend

log = logging.getLogger(__name__)
PLOTS = {
    "optimization_history": optuna.visualization.matplotlib.plot_optimization_history,
    "param_importances": optuna.visualization.matplotlib.plot_param_importances,
    "parallel_coordinate": optuna.visualization.matplotlib.plot_parallel_coordinate,
    "intermediate_values": optuna.visualization.matplotlib.plot_intermediate_values,
}


# fANOVA importances from a handful of trials rank noise: 3 trials once ranked learning_rate at 0.72 (issue 20).
MIN_TRIALS_FOR_IMPORTANCES = 10


def _plots(study: optuna.Study, folder: Path, complete: int) -> list[Path]:
    """Optuna's plots as PNGs in ``folder``; ``complete`` (the study's COMPLETE trials) gates the importances."""
    paths = []
    for name, plot in PLOTS.items():
        if name == "param_importances" and complete < MIN_TRIALS_FOR_IMPORTANCES:
            log.info("plot %s skipped: %d complete trial(s); importances from fewer than %d rank noise", name,
                     complete, MIN_TRIALS_FOR_IMPORTANCES)
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = plot(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(9, 5)
            fig.tight_layout()
            fig.savefig(folder / f"{name}.png", dpi=100)
            plt.close(fig)
            paths.append(folder / f"{name}.png")
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. importances need 2+ complete trials
            log.info("plot %s skipped: %s", name, exc)
    return paths


def best_variant(study: optuna.Study, study_name: str) -> dict[str, Any]:
    """The best trial's configuration as a variants-file entry."""
    best = study.best_trial
    overrides = flatten(best.user_attrs.get("overrides", {}))
    return {f"{study_name}_best": {
        "description": f"Best trial {best.number} of study '{study_name}': {best.value:.4f}",
        "overrides": overrides}}


def report_study(study_name: str, storage: Any, parent_run_id: str | None = None) -> dict[str, Any]:
    """Log the study's outcome to its parent run; return a summary (states, best value and params).

    ``storage`` is an opened Optuna storage (``tuning.study.open_storage``) or an RDB URL.
    """
    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    counts = {state.name: sum(t.state == state for t in trials) for state in TrialState}
    summary: dict[str, Any] = {"study": study_name, "trials": len(trials), "states": counts}
    metrics = {f"trials_{k.lower()}": v for k, v in counts.items()}
    texts: dict[str, str] = {}
    folder = path_under(reports_dir(), "tuning", study_name)  # tune-report's --study-name is not checked before
    folder.mkdir(parents=True, exist_ok=True)
    if counts["COMPLETE"]:
        best = study.best_trial
        summary.update(best_value=best.value, best_trial=best.number, best_params=best.params)
        metrics["best_value"] = best.value
        variant = best_variant(study, study_name)
        (folder / "best_variant.yaml").write_text(
            f"# fer-ablate train --variant-file {shlex.quote(str(folder / 'best_variant.yaml'))} "
            f"--variant {shlex.quote(study_name + '_best')}\n"
            + to_yaml(variant))
        summary["best_variant_file"] = str(folder / "best_variant.yaml")
        texts["best_variant.yaml"] = (folder / "best_variant.yaml").read_text()
        texts["best_params.yaml"] = to_yaml(best.params)
        best_run = best.user_attrs.get("mlflow_run_id")
        tags = tracking.get_run(best_run).data.tags if best_run else {}
        if tags.get("degenerate") == "true":
            summary["best_trial_degenerate"] = tags.get("degenerate_reason", "")
            log.warning("the best trial (%d) is DEGENERATE: %s; no trial of this study learned to tell "
                        "expressions apart", best.number, summary["best_trial_degenerate"])
    if parent_run_id:
        # Tags, not params: MLflow params are immutable and the best trial changes when a study resumes.
        tracking.set_run_tags(parent_run_id, {f"best.{k}": v for k, v in summary.get("best_params", {}).items()})
        plots = _plots(study, folder, counts["COMPLETE"])
        tracking.log_parent_summary(parent_run_id, metrics, texts=texts, files=plots, artifact_dir="optuna_plots")
    return summary
