"""Ctrl-C and SIGTERM become ``KeyboardInterrupt``, but never in the middle of a write to a store.

Python raises a signal's exception at whatever bytecode the main thread is running. Landing inside
SQLAlchemy or the sqlite3 driver while MLflow writes a metric can leave that connection holding the
SQLite write lock (its frames live on in the traceback), so the clean-up that should end the run KILLED
then fails with "database is locked" 20 s later, and the run is left RUNNING or even marked FINISHED.
Measured before this module: 3 of 15 SIGTERMs to a process logging metrics in a loop.

So the handler looks at the interrupted stack: inside a tracking or study store (MLflow's store and
client, SQLAlchemy, sqlite3, psycopg2, Optuna's storages) the interrupt is held back and retried every
20 ms (``SIGALRM``) until the write has returned; anywhere else it is raised at once. A second Ctrl-C
while one is held back is raised at once: the way out of a store that hangs (an unreachable server).
"""

from __future__ import annotations

import signal
from types import FrameType

# Module prefixes whose frames mean "a store write may be half done". Not optuna.study: the objective,
# i.e. the whole training, runs below it.
STORE_MODULES = ("sqlalchemy.", "sqlite3", "psycopg2", "mlflow.store.", "mlflow.tracking.", "mlflow.utils.rest_utils",
                 "optuna.storages.")
RETRY_SECONDS = 0.02

_held: int | None = None  # a signal received inside a store write, not yet raised
_interrupted = False  # the one interrupt has been raised; repeated SIGTERMs are ignored from then on


def inside_store(frame: FrameType | None) -> bool:
    """Whether any frame of the stack ending at ``frame`` belongs to a store module (``STORE_MODULES``)."""
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(STORE_MODULES):
            return True
        frame = frame.f_back
    return False


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _held
    if _interrupted and signum == signal.SIGTERM:
        return  # a launcher's repeated SIGTERM must not interrupt the clean-up the first one started
    insisted = signum == signal.SIGINT and _held is not None
    if insisted or not inside_store(frame):
        _raise(signum)
    _held = signum
    signal.setitimer(signal.ITIMER_REAL, RETRY_SECONDS)


def _retry_held(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001
    """The timer: raise the held signal once the store write has returned, else look again shortly."""
    if _held is None:
        return
    if inside_store(frame):
        signal.setitimer(signal.ITIMER_REAL, RETRY_SECONDS)
        return
    _raise(_held)


def _raise(signum: int) -> None:
    global _held, _interrupted
    _held, _interrupted = None, True
    raise KeyboardInterrupt(f"signal {signum}")


def install(ctrl_c: bool = True) -> dict[int, object]:
    """Make SIGTERM (and, with ``ctrl_c``, SIGINT) raise ``KeyboardInterrupt`` outside store writes.

    Call from the main thread. Returns the previous handlers, for ``restore``. A job-runner worker passes
    ``ctrl_c=False`` and ignores SIGINT: its launcher alone decides, and stops it with SIGTERM.
    """
    global _held, _interrupted
    _held, _interrupted = None, False
    wanted = {signal.SIGTERM: _on_signal, signal.SIGALRM: _retry_held}
    wanted[signal.SIGINT] = _on_signal if ctrl_c else signal.SIG_IGN
    return {signum: signal.signal(signum, handler) for signum, handler in wanted.items()}


def restore(previous: dict[int, object]) -> None:
    """Put back the handlers ``install`` replaced and cancel a pending retry."""
    signal.setitimer(signal.ITIMER_REAL, 0)
    for signum, handler in previous.items():
        signal.signal(signum, handler)
