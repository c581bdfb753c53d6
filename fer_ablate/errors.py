"""The base of every error a user can fix, in a leaf module any room may import (it imports nothing).

Each room defines its own kinds (``config.errors.ConfigError``, ``data.DataError``, ``tracking.TrackingError``,
``runs.shared_queue.StorageError``, ``tuning.study.StudyFailing``) as subclasses that also keep their builtin
base (ValueError, RuntimeError), so ``except ValueError`` around them still works. ``fer-ablate`` catches this
class once, prints ``fer-ablate: error: <message>`` and exits with the kind's ``exit_code``:

- 1: the work ran and failed (a study whose trials keep failing);
- 2: the input is wrong (config, variant, override, data file): fix the command or the file;
- 3: a service cannot be used (MLflow tracking store, Optuna storage): start it or fix its URL.
"""

from __future__ import annotations

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3


class FerAblateError(Exception):
    """An error whose message is the whole story (no traceback needed); ``exit_code`` is the command's status."""

    exit_code: int = EXIT_FAILED
