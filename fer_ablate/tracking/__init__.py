"""Every MLflow call of the package: the store, the run lifecycle, logging, and the model registry."""

from fer_ablate.tracking.core import (  # noqa: F401  (the room's public API)
    DEFAULT_EXPERIMENT,
    MODEL_NAME,
    EpochLogger,
    TrackingError,
    active_run_id,
    check_reachable,
    child_runs,
    child_tags,
    configure,
    end_run_by_id,
    get_client,
    git_commit,
    load_model,
    log_config,
    log_config_to,
    log_dataset,
    log_parent_summary,
    log_result,
    mlflow,  # noqa: F401
    model_signature,
    open_parent,
    tracked_run,
    use_store,
)
