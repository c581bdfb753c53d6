"""Every MLflow call of the package, by concern:

- ``store``: the tracking URI (checked), the one rule for the MLflow experiment, git commit, Source tags;
- ``lifecycle``: how runs start and end (FINISHED, FAILED with an error, KILLED), parents and children;
- ``records``: what a run logs (config, data, epochs, result, per-image predictions, figures, model);
- ``queries``: reading runs back (parents by kind and name, artifacts, predictions, models);
- ``ui``: where to look: the MLflow UI's addresses of the runs table and of a run, the command that starts it;
- ``model_registry``: the MLflow model registry (``inference/registered.py`` makes photo models of it).

Callers import the room (``from fer_ablate import tracking``); the names below are its public API.
Nothing here imports Keras, the models, the training code or the plots.
"""

from fer_ablate.tracking.lifecycle import (  # noqa: F401  (one run lifecycle for every driver)
    RunContext,
    RunHandle,
    child_runs,
    child_tags,
    direct_children,
    end_run_by_id,
    end_stale_runs,
    ended_run,
    enter_context,
    metric_history,
    nested_run,
    open_context,
    open_parent,
    parent_run,
    resumable_status,
    summarize_children,
    tracked_run,
)
from fer_ablate.tracking.queries import (  # noqa: F401
    ABLATION,
    KFOLD,
    KFOLD_GROUP,
    STUDY,
    Predictions,
    active_run_id,
    find_parent,
    get_run,
    load_model,
    parent_run_name,
    project_experiment_ids,
    read_json,
    read_predictions,
    read_text,
    search_runs,
    tag_filter,
)
from fer_ablate.tracking.records import (  # noqa: F401
    MODEL_NAME,
    log_config,
    log_config_to,
    log_dataset,
    log_metrics,
    log_parent_summary,
    log_predictions,
    log_result,
    model_signature,
    set_run_tags,
)
from fer_ablate.tracking.store import (  # noqa: F401
    DEFAULT_EXPERIMENT,
    TrackingError,
    check_reachable,
    configure,
    experiment_name,
    git_commit,
    project_source_tags,
    source_tags,
    tracking_uri,
    use_store,
)
from fer_ablate.tracking.ui import log_runs_table, run_url, runs_table_url, ui_command  # noqa: F401
