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


def artifact_root(tracking_uri: str) -> str | None:
    """Artifact root for MLflow experiments this project creates: ``mlruns/`` next to a SQLite store's file
    (``<project>/mlruns`` for the default store; a test's temporary store keeps its artifacts with it);
    None (the server decides) for any other store."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return (Path(tracking_uri[len("sqlite:///"):]).parent / "mlruns").as_uri()


def reports_dir() -> Path:
    """Folder for reports written without ``--out`` (git-ignored); ``$FER_ABLATE_REPORTS`` wins."""
    return Path(os.environ.get("FER_ABLATE_REPORTS", project_root() / "reports"))
