"""Logging set-up shared by the CLI and every worker process it spawns."""

from __future__ import annotations

import logging
import os

from fer_ablate.redact import install_logging_filter

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of logs


def configure_logging() -> None:
    """INFO lines with time for our modules; libraries' chatter at WARNING; secrets hidden in every line."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("mlflow", "alembic", "urllib3", "absl", "matplotlib", "PIL", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    install_logging_filter()  # no password of a storage or tracking URL in any log line (fer_ablate.redact)
