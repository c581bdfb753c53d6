"""Where things live: the project root, the parse cache and the default MLflow locations."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The project checkout (the folder with MLproject), else the current directory.

    Resolved from the package location first so that commands behave the same from any subfolder.
    """
    package_parent = Path(__file__).resolve().parent.parent
    if (package_parent / "MLproject").is_file():
        return package_parent
    return Path.cwd()


def cache_dir() -> Path:
    """Folder for parsed-array caches (git-ignored); ``$FER_ABLATE_CACHE`` wins."""
    return Path(os.environ.get("FER_ABLATE_CACHE", project_root() / ".cache" / "fer_ablate"))


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else a SQLite store in the project (``./mlruns`` errors since 3.13)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def default_artifact_root() -> str:
    """Artifact root for experiments this project creates: ``<project>/mlruns``."""
    return (project_root() / "mlruns").as_uri()
