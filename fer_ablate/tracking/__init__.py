"""Every MLflow call of the package: the store, the run lifecycle, logging, and the model registry."""

from fer_ablate.tracking.core import (  # noqa: F401  (the room's public API)
    DEFAULT_EXPERIMENT,
    MODEL_NAME,
    EpochLogger,
    TrackingError,
    active_run_id,
    check_reachable,
    configure,
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
    use_store,
)
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
    open_context,
    open_parent,
    parent_run,
    summarize_children,
    tracked_run,
)
