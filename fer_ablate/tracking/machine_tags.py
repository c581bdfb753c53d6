"""The machine a run trained on, as tags of the active MLflow run (filled by ``training.hardware``)."""

from __future__ import annotations

import mlflow


def log_machine_tags(tags: dict[str, str]) -> None:
    """Set ``tags`` (``machine.*``, ``precision_requested``, ``precision_resolved``, ...) on the active run.

    Logged before training starts, so a run that fails or is killed still says where it ran.
    Values longer than MLflow's 5,000-character tag limit are cut.
    """
    mlflow.set_tags({key: str(value)[:5000] for key, value in tags.items()})
